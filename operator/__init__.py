"""The NeuronInference operator (``kopf run -m neuronplace.operator``): everything that talks to
the API server. Every decision is made by the pure :mod:`neuronplace.placement`.

- ``handlers``: the kopf wiring (start-up, clean-up, probes, watch events); importing this package
  registers them, which is what ``kopf run -m neuronplace.operator`` relies on. The controller
  lives in kopf's ``memo``.
- ``controller``: puts the parts below together and runs the periodic resync.
- ``cache``: the watch-fed caches (slimmed pods and nodes) and the core ledger, behind one lock.
- ``sync``: full lists a page at a time: the start-up rebuild and the full resync.
- ``workqueue``: keys of resources to reconcile, coalesced, retried with backoff (no Kubernetes types).
- ``writes``: API writes (pods, status, events) and the mapping of API errors to temporary or
  permanent outcomes; the API clients are injected.
- ``reconciler``: one reconcile: ``decide`` → place under the lock → create → delete → status.
- ``settings``: the operator's settings dataclass and its environment variables.
- ``metrics``: the Prometheus metrics; ``heap``: the process's C heap (arenas, free pages).
"""

if __name__ == "operator":
    # This folder is the package ``neuronplace.operator``, but a Python started with the repository
    # root on sys.path (``python -m ...`` or ``python -c`` from a checkout) finds it first under the
    # standard library's name too: torch, for one, re-imports ``operator`` afresh when it compiles a
    # model. Whoever asked for ``operator`` gets the standard library's module.
    import importlib.util as _util
    import sys as _sys
    import sysconfig as _sysconfig
    from pathlib import Path as _Path

    _spec = _util.spec_from_file_location("operator", _Path(_sysconfig.get_path("stdlib")) / "operator.py")
    assert _spec is not None and _spec.loader is not None
    _stdlib = _util.module_from_spec(_spec)
    _spec.loader.exec_module(_stdlib)
    _sys.modules["operator"] = _stdlib
    globals().update({key: value for key, value in vars(_stdlib).items() if not key.startswith("__")})
else:
    from neuronplace.operator import handlers  # noqa: F401  (registers the kopf handlers)
