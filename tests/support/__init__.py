"""What the tests share, one module per concept, imported as ``support.*`` (pytest's ``pythonpath``
has ``tests``): the builders of the objects tests feed the operator, a fake API client, the readers
and checks of the cluster tests, the Helm chart helpers, and the Prometheus scraper.

The reliability suite's harness, scenarios and invariant checker are shared with the benchmarks,
which import no test code; they live in :mod:`neuronplace.local.reliability`. So does the one
free-port helper, :func:`neuronplace.local.operator_process.free_port`, which the product uses.
"""
