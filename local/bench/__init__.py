"""The reusable parts of the benchmarks in ``benchmarks/``: what a benchmark builds on, not what it
measures. One concept per module:

- :mod:`~neuronplace.local.bench.workload`: the fleet, the workload's groups and their manifests
  (a NeuronInference, or its plain-pod / ReplicaSet twin for kube-scheduler);
- :mod:`~neuronplace.local.bench.podwatch`: when each pod of a namespace was first seen bound and Running;
- :mod:`~neuronplace.local.bench.apicounts`: the API server's request counters, for all clients and
  for one service account (the operator's);
- :mod:`~neuronplace.local.bench.prometheus`: sums of samples in a Prometheus text exposition;
- :mod:`~neuronplace.local.bench.procstats`: a process's CPU seconds and resident memory;
- :mod:`~neuronplace.local.bench.results`: the figures of a phase, percentiles, the report table
  and the plot.
"""
