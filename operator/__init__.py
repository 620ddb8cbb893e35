"""The NeuronInference operator (``kopf run -m neuronplace.operator``): everything that talks to
the API server. Every decision is made by the pure :mod:`neuronplace.placement`.

- ``handlers``: the kopf wiring (start-up, clean-up, probes, watch events); importing this package
  registers them, which is what ``kopf run -m neuronplace.operator`` relies on. The controller
  lives in kopf's ``memo``.
- ``controller``: puts the parts below together and runs the periodic resync.
- ``cache``: the watch-fed caches and the core ledger, behind one lock; it calls the ruling
  (``neuronplace.placement.ruling``) under that lock. ``slim``: what it keeps of each object.
  Its parts: ``pod_cache`` (pods, capacity requests), ``dra_cache`` (ResourceSlices and
  ResourceClaims; ``dra_state`` what it keeps of them), ``waiting_room`` (PriorityClasses, the
  waiting order), ``full_lists`` (start-up and resync lists), ``node_cache`` (the nodes;
  ``node_health`` their health window); ``keys``: the names they and their callers share.
- ``storage``: the cached claims, volumes and storage classes.
- ``sync``: full lists a page at a time: the start-up rebuild and the full resync.
- ``workqueue``: keys of inferences to reconcile, coalesced, retried with backoff (no Kubernetes types).
- ``writes``: API writes (pods, status, events) and the mapping of API errors to temporary or
  permanent outcomes; the API clients are injected.
- ``reconciler``: one reconcile: the ruling, carried out in its order, then the status.
- ``leader``: leader election on a Lease and the fence every write passes; ``election``: its pure
  rules (who may take, renew or must wait; whether a leader may still write).
- ``settings``: the operator's settings dataclass and its environment variables.
- ``metrics``: the Prometheus metrics; ``heap``: the process's C heap (arenas, free pages).
"""

if __name__ == "operator":
    # This folder is the package ``neuronplace.operator``, but a Python started with the repository
    # root on sys.path (``python -m ...`` or ``python -c`` from a checkout) finds it first under the
    # standard library's name: at start-up (collections imports ``operator`` before anything else
    # has), and whenever something re-imports ``operator`` afresh (torch does when it compiles a
    # model). Whoever asked for ``operator`` gets the standard library's module: its source runs
    # here, in this module. Only ``os`` (always loaded by then) is used, since importing almost
    # anything else would import ``operator`` again, half-made.
    import os as _os

    __file__ = _os.path.join(_os.path.dirname(_os.__file__), "operator.py")
    with open(__file__, encoding="utf-8") as _source:
        exec(compile(_source.read(), __file__, "exec"))
    del _os, _source
else:
    from neuronplace.operator import handlers  # noqa: F401  (registers the kopf handlers)
