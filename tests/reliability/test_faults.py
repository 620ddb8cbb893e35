"""Faults and races against the real local control plane, one test per scenario.

Each scenario (``scenarios.py``, shared with ``benchmarks/chaos.py``) runs in its own namespace,
node pool and operator process and ends every fault with the shared invariant checker; for the
whole scenario the invariant monitor (``monitor.py``) checks the safety invariants at every watch
event, and a violation it saw at any moment fails the test even when the end state is clean. Seed:
``NEURONPLACE_CHAOS_SEED`` (default 1); the chaos table is printed at the end of the session.
"""

from __future__ import annotations

import pytest

from neuronplace.local.reliability.scenarios import SCENARIOS

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.both_bindings]

# The bad-spec scenarios run case by case in test_bad_specs.py.
FAULT_SCENARIOS = [name for name in SCENARIOS if "bad_specs" not in name]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scenario", FAULT_SCENARIOS)
def test_fault_scenario_keeps_every_invariant(run_scenario, scenario):
    run_scenario(scenario)
