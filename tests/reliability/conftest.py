"""Fixtures of the reliability suite (on top of ``local_cluster`` from ``neuronplace.local.pytest_plugin``).

- ``reliability_crd`` (session): the NeuronInference CRD, installed once.
- ``chaos_record`` (session): ``reliability.chaos_table``, which prints the chaos table.
- ``chaos_seed``: ``NEURONPLACE_CHAOS_SEED`` (default 1); every random choice derives from it.
- ``run_scenario``: runs one scenario of ``scenarios.py`` in its own namespace, node pool and
  operator process, in the test's binding mode (``binding``). The operator tests' shared operator
  watches every namespace; two operators allocating on the same nodes would be the very bug this
  suite looks for, so it is stopped first (the ``operator`` fixture starts it again when a later
  test needs it).
"""

from __future__ import annotations

import os

import pytest

from neuronplace.local.operator_process import install_crd
from neuronplace.local.reliability import harness as hs
from neuronplace.local.reliability import scenarios


@pytest.fixture(scope="session")
def reliability_crd(local_cluster) -> None:
    install_crd(local_cluster)


@pytest.fixture(scope="session")
def chaos_seed() -> int:
    return int(os.environ.get("NEURONPLACE_CHAOS_SEED", "1"))


@pytest.fixture
def run_scenario(local_cluster, reliability_crd, operator_process, binding, chaos_record, chaos_seed, request):
    """``run_scenario(name)``: run one scenario with fresh namespace, pool and operator (in the test's
    binding mode)."""
    operator_process.stop()

    def run(name: str) -> None:
        with hs.harness(local_cluster, name, chaos_seed, chaos_record, binding) as world:
            request.node.stash[_WORLD_KEY] = world
            scenarios.SCENARIOS[name](world)

    return run


_WORLD_KEY = pytest.StashKey[hs.Harness]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    world = item.stash.get(_WORLD_KEY, None)
    if report.failed and world is not None:
        report.sections.append(("reliability operator log", world.operator.log_tail(200)))
