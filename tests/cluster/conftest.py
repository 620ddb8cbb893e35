"""Fixtures for the operator's cluster tests: the CRD (once per session) and the operator itself,
run as a real subprocess (``python -m neuronplace.cli run``) against the session's local cluster.

``operator`` (function) hands a running :class:`OperatorProcess`; a test may ``kill()`` it (SIGKILL,
as the reliability suite does), ``stop()`` or ``restart()`` it, and the next test gets a running
one again. Its log is attached to the report of every failed test that used it. Its binding mode is
the session's ``--binding`` (``NEURONPLACE_BINDING``, exported by neuronplace.local.pytest_plugin).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from neuronplace.local.operator_process import OperatorProcess, install_crd, timing_flags
from neuronplace.placement.names import CRD_NAME

_OPERATOR_KEY = pytest.StashKey["OperatorProcess"]()


@pytest.fixture(scope="session")
def crd(local_cluster) -> str:
    """The NeuronInference CRD, applied once and Established."""
    install_crd(local_cluster)
    return CRD_NAME


@pytest.fixture(scope="session")
def operator_process(local_cluster, crd, request) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        local_cluster,
        Path(local_cluster.logs_dir) / "neuronplace-operator.log",
        extra_args=timing_flags(),
    )
    request.config.stash[_OPERATOR_KEY] = process
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def operator(operator_process: OperatorProcess) -> OperatorProcess:
    """A running operator (restarted if an earlier test killed or stopped it)."""
    if not operator_process.alive():
        operator_process.start()
    return operator_process


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed and "operator" in getattr(item, "fixturenames", ()):
        process = item.config.stash.get(_OPERATOR_KEY, None)
        if process is not None:
            report.sections.append(("operator log", process.log_tail()))
