"""The placement core: every decision the operator makes, with no I/O.

The rule of this package: no I/O (no network, no files, no clock: the time is passed in), and it
never imports kopf, kubernetes, prometheus_client, torch or matplotlib, nor any runtime module but
the core-set grammar (import-linter and ``neuronplace.local.purity`` enforce it; see
``pyproject.toml`` and the Makefile). It takes API objects as plain dicts and returns plain dicts
and frozen values, so the operator, the CLI's dry run (``neuronplace plan``), the benchmarks and
the tests all share it.

The entry point is ``ruling.rule``: an inference and the cluster view → every action and the
status. One concept per module:

- ``ruling``: the whole decision for one inference (refusal, replica pods, placement, capacity
  requests, status).
- ``creation``: what the API server's answers to the ruling's pod creates mean.
- ``validation``: whether an inference may be acted on at all (its spec, its namespace).
- ``reserved``: the pod labels, annotations and env that are the operator's, which no template may carry.
- ``priority``: which PriorityClasses a template may name, and the order waiting inferences are served
  (priority, then round-robin across namespaces, then age).
- ``replica_pods``: spec + live pods → a frozen ``Decision`` (which pods go, which replicas need one).
- ``failures``: what a replica's failed attempts mean for its next one (backoff, nodes to avoid).
- ``request``: what an inference asks of every replica; a placement or a reason per replica.
- ``fleet``: the nodes, which of them a request may use (cached), and what room each has.
- ``search``: request + nodes + ledger → placements (``place``, ``place_one``).
- ``reasons``: why no node can take a replica now, in one sentence.
- ``constraints`` / ``fitting`` / ``resources``: taints, affinity and selectors; free-core
  bitmasks; cpu, memory and the rest as kube-scheduler counts them.
- ``volumes``: where a replica's volumes let its pod run.
- ``capacity_requests``: the placeholder pods that ask an autoscaler for a node;
  ``capacity_upkeep``: which of them to delete and create around a ruling; ``request_limits``:
  where and how often they may be made (managed nodes, exclusions, a rate bound), so they never churn.
- ``names``: every label, annotation, env variable, resource name and enum value used in more than
  one place.
- ``conditions``: reading ``status.conditions`` (the one Ready reader).
- ``selectors``: the ``key=value,!key`` label-selector strings of the operator's settings.
- ``topology``: instance types → chips and cores per chip.
- ``inventory``: Node objects → eligible nodes with their topology and usable cores.
- ``claims``: what one pod claims of its node's cores, read from the pod alone.
- ``ledger``: who holds which cores, rebuilt from pods; ``usage``: what the pods on a node request.
- ``trust``: which pods count as ours (trusted NeuronInference UIDs), and the claims that do not add up.
- ``status`` / ``events`` / ``pods`` / ``crd``: ``build_*`` functions returning manifests.
- ``podsecurity``: the pod-template safety policy.
- ``coremap``: the core map that ``neuronplace cores`` prints.
"""
