"""Fixtures of the operator's cluster tests, on top of ``neuronplace.local.pytest_operator`` (the
``operator``, ``operator_factory`` and ``crd`` fixtures): the settings their operators run with,
and ``wait_for``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from operator_support import TEST_NODE_GRACE_SECONDS


@pytest.fixture(scope="session")
def operator_settings() -> dict[str, object]:
    """The operator tests' settings: a short node grace and resync period, so that what they wait
    for happens in seconds."""
    return {"node_grace_seconds": TEST_NODE_GRACE_SECONDS, "resync_seconds": 10}


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
            time.sleep(interval)
        raise TimeoutError(
            f"timed out after {timeout:.0f}s waiting for {what}"
            + (f" (last error: {last_error})" if last_error else "")
        )

    return wait
