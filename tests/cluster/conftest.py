"""Fixtures for the operator's cluster tests: the CRD (once per session) and the operator itself,
run as a real subprocess (``python -m neuronplace.cli run``) against the session's local cluster.

``operator`` (function) hands a running :class:`OperatorProcess`; a test may ``kill()`` it (SIGKILL,
as the reliability suite does), ``stop()`` or ``restart()`` it, and the next test gets a running
one again. Its log is attached to the report of every failed test that used it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "neuronplace.io_neuroninferences.yaml"
_OPERATOR_KEY = pytest.StashKey["OperatorProcess"]()

# Short on purpose: the tests make nodes NotReady and wait for the re-placement.
TEST_NODE_GRACE_SECONDS = 5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OperatorProcess:
    """The operator as a child process with its own log file."""

    def __init__(self, cluster, log_path: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.cluster = cluster
        self.log_path = log_path
        self.extra_args = extra_args
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def liveness_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    def start(self, timeout: float = 60) -> None:
        env = self.cluster.env()
        env["PYTHONUNBUFFERED"] = "1"
        command = [sys.executable, "-m", "neuronplace.cli", "run",
                   "--node-grace-seconds", str(TEST_NODE_GRACE_SECONDS), "--resync-seconds", "10",
                   "--liveness", self.liveness_url, *self.extra_args]
        log = open(self.log_path, "a")
        log.write(f"\n===== start {self.starts}: {' '.join(command)}\n")
        log.flush()
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                        start_new_session=True)
        log.close()
        self.starts += 1
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"operator exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.liveness_url, timeout=2) as response:
                    body = json.loads(response.read() or b"{}")
                    if response.status == 200 and body.get("ledger", {}).get("ready"):
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"operator not healthy within {timeout:.0f}s:\n{self.log_tail()}")

    def health(self) -> dict:
        with urllib.request.urlopen(self.liveness_url, timeout=5) as response:
            return json.loads(response.read())

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            self.process.send_signal(sig)
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 150) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no operator log)"


@pytest.fixture(scope="session")
def crd(local_cluster) -> str:
    """The NeuronInference CRD, applied once and Established."""
    local_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    local_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          "crd/neuroninferences.neuronplace.io")
    return "neuroninferences.neuronplace.io"


@pytest.fixture(scope="session")
def operator_process(local_cluster, crd, request) -> Iterator[OperatorProcess]:
    process = OperatorProcess(local_cluster, Path(local_cluster.logs_dir) / "neuronplace-operator.log")
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
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}"
                           + (f" (last error: {last_error})" if last_error else ""))

    return wait


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed and "operator" in getattr(item, "fixturenames", ()):
        process = item.config.stash.get(_OPERATOR_KEY, None)
        if process is not None:
            report.sections.append(("operator log", process.log_tail()))
