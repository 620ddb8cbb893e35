"""The NeuronInference operator (``kopf run -m neuronplace.operator``).

What belongs here, one concept per module:

- ``topology``: instance types → chips and cores per chip (pure data).
- ``inventory``: Node objects → eligible nodes with their topology (pure).
- ``ledger``: who holds which cores, rebuilt from pods (pure).
- ``placement``: the allocator: request + nodes + ledger → placements or reasons (pure).
- ``crd`` / ``pods`` / ``events``: ``build_*`` functions that return manifests (pure).
- ``reconcile`` / ``status``: spec + live pods → actions, and the status to write (pure).
- ``podsecurity``: the pod-template safety policy (pure).
- ``coremap``: the core map that ``neuronplace cores`` prints and draws (pure).
- ``settings``: the operator's settings dataclass and its environment variables.
- ``metrics``: the Prometheus metrics; ``heap``: the process's C heap (arenas, free pages).
- ``handlers``: thin kopf handlers that read the API, call the pure parts and write back.

Importing this package registers the kopf handlers; the pure modules never import kopf.
"""

import importlib.util as _importlib_util

# `kopf run -m neuronplace.operator` imports this package: register the handlers. Without kopf
# (a planning tool, a runtime image) the pure modules stay importable on their own.
if _importlib_util.find_spec("kopf") is not None:
    from neuronplace.operator import handlers  # noqa: F401  (registers the kopf handlers)
