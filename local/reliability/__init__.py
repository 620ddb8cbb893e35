"""The reliability harness, shared by the reliability suite (``tests/reliability``), the cluster tests
and the benchmarks (``benchmarks/chaos.py``, ``benchmarks/scale.py``), which import no test code:
fault scenarios (:mod:`.scenarios`, with the bad-spec corpus :mod:`.bad_specs`) run on a
:class:`~.harness.Harness`, the invariant checker (:mod:`.invariants`, with its independent placement
oracle :mod:`.oracle`) and the invariant monitor that checks them at every watch event
(:mod:`.monitor`)."""
