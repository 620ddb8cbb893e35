"""What the tests share, one module per concept, imported as ``support.*`` (pytest's ``pythonpath``
has ``tests``): :mod:`.builders` (the objects tests feed the operator), :mod:`.fake_api` (a fake API
client), :mod:`.cluster` (reading and checking a cluster), :mod:`.chart` (the Helm chart) and
:mod:`.metrics` (the Prometheus scraper).

What the benchmarks share with the tests lives in the package, since the benchmarks import no test
code: the NeuronInference builder (:mod:`neuronplace.local.manifests`, re-exported by
:mod:`.builders`), the reliability harness, scenarios and invariant checker
(:mod:`neuronplace.local.reliability`) and the one free-port helper
(:func:`neuronplace.local.operator_process.free_port`).
"""
