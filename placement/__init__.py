"""The placement core: every decision the operator makes, with no I/O.

The rule of this package: no I/O (no network, no files, no clock unless it is passed in), and it
never imports kopf, kubernetes, prometheus_client or torch (import-linter enforces it; see
``pyproject.toml``). It takes API objects as plain dicts and returns plain dicts and frozen values,
so the operator, the CLI's dry run (``neuronplace plan``), the benchmarks and the tests all share it.

One concept per module:

- ``names``: every label, annotation, env variable, resource name and enum value used in more than
  one place.
- ``conditions``: reading ``status.conditions`` (the one Ready reader).
- ``selectors``: the ``key=value,!key`` label-selector strings of the operator's settings.
- ``topology``: instance types → chips and cores per chip.
- ``inventory``: Node objects → eligible nodes with their topology and usable cores.
- ``ledger``: who holds which cores, rebuilt from pods.
- ``trust``: which pods count as ours (trusted NeuronInference UIDs), and the claims that do not add up.
- ``request``: what a NeuronInference asks of every replica; a placement or a reason per replica.
- ``fleet``: the nodes, which of them a request may use (cached), and what room each has.
- ``search``: request + nodes + ledger → placements (``place``, ``place_one``).
- ``reasons``: why no node can take a replica now, in one sentence.
- ``replica_pods``: spec + live pods → a frozen ``Decision`` (what to create, delete, requeue).
- ``status`` / ``events`` / ``pods`` / ``crd``: ``build_*`` functions returning manifests.
- ``podsecurity``: the pod-template safety policy.
- ``coremap``: the core map that ``neuronplace cores`` prints and draws.
"""
