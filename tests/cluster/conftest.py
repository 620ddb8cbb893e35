"""Fixtures of the operator's cluster tests, on top of ``neuronplace.local.pytest_operator`` (the
``operator``, ``operator_factory``, ``operator_settings`` and ``crd`` fixtures):
``wait_for``, and the invariant monitor every test that runs an operator is watched by.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from neuronplace.local.fleet import POOL_LABEL
from neuronplace.local.reliability.monitor import monitor_for

# The fixtures that run an operator: a test using one is watched by the invariant monitor.
_OPERATOR_FIXTURES = ("operator", "operator_factory")


@pytest.fixture
def wait_for() -> Callable:
    """``wait_for(fn, timeout, what)``: poll ``fn`` until it returns something truthy; return it."""

    def wait(fn: Callable, timeout: float = 60, what: str = "condition", interval: float = 0.25):
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = fn()
                if value:
                    return value
            except Exception as error:  # e.g. a transient kubectl failure; reported if it persists
                last_error = error
            time.sleep(interval)  # the poll interval: what is awaited is fn()'s answer
        raise TimeoutError(
            f"timed out after {timeout:.0f}s waiting for {what}"
            + (f" (last error: {last_error})" if last_error else "")
        )

    return wait


@pytest.fixture(autouse=True)
def invariant_monitor(request: pytest.FixtureRequest):
    """The safety invariants (no core held twice, node resources not overfilled, pod annotation =
    env = requests, pods in their resource's namespace) checked at every watch event while a test
    that runs an operator on the session's cluster runs, on its namespace and node pool; a violation
    at any moment fails the test, even one gone by the time the test looks. Tests that break these
    on purpose run no operator, or none of this cluster's."""
    names = request.fixturenames
    if not any(name in names for name in _OPERATOR_FIXTURES) or "namespace" not in names or "fleet" not in names:
        yield None
        return
    cluster = request.getfixturevalue("local_cluster")
    namespace, pool = request.getfixturevalue("namespace"), request.getfixturevalue("fleet").pool
    monitor = monitor_for(cluster.kubeconfig, namespaces=[namespace], node_selector=f"{POOL_LABEL}={pool}").start()
    try:
        yield monitor
    finally:
        report = monitor.stop()
    if report.violations:
        pytest.fail(
            f"the invariant monitor saw {report.violations} violation(s) ({report.summary()}):"
            + "".join(f"\n  {seen}" for seen in report.first),
            pytrace=False,
        )
