"""neuronplace.local.operator_process without a cluster: a stand-in operator (a Python one-liner
that logs the started line, or not) shows how processes are started, waited for and stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from neuronplace.local.operator_process import STARTED_LINE, OperatorProcess, recorded_pid, stop_recorded

SERVES = f"import time; print({STARTED_LINE!r} + ': settings', flush=True); time.sleep(120)"
IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    f"print({STARTED_LINE!r}, flush=True); time.sleep(120)"
)
NEVER_STARTS = "import time; print('connecting ...', flush=True); time.sleep(120)"
CRASHES = "import sys; print('cannot log in', flush=True); sys.exit(3)"


class FakeCluster:
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": "/nonexistent/admin.kubeconfig"}


class StandIn(OperatorProcess):
    """The real class with the command replaced; the marker argument makes it look like an operator."""

    def __init__(self, code: str, *args, **kwargs) -> None:
        super().__init__(FakeCluster(), *args, liveness=False, **kwargs)
        self.code = code

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.code, "neuronplace.cli", "run", *self.extra_args]


def test_start_waits_for_the_started_line_and_stop_ends_it(tmp_path):
    operator = StandIn(
        SERVES,
        tmp_path / "logs" / "operator.log",
        ("--namespace", "a"),
        env={"EXTRA": "1"},
        kubeconfig=tmp_path / "sa.kubeconfig",
        pid_file=tmp_path / "operator.pid",
    )
    operator.start(timeout=30)
    try:
        assert operator.alive()
        assert operator.pid_file.read_text().strip() == str(operator.pid)
        env = operator.environment()
        assert env["EXTRA"] == "1" and env["KUBECONFIG"] == str(tmp_path / "sa.kubeconfig")
        assert env["PYTHONUNBUFFERED"] == "1"
    finally:
        operator.stop()
    assert not operator.alive() and operator.process.returncode == -signal.SIGTERM
    assert not operator.pid_file.exists()
    log = operator.log_path.read_text()
    assert "===== start 0:" in log and "--namespace a" in log and STARTED_LINE in log


def test_a_restart_waits_for_its_own_started_line(tmp_path):
    operator = StandIn(SERVES, tmp_path / "operator.log")
    operator.start(timeout=30)
    operator.code = NEVER_STARTS  # the earlier start's line is in the log already: it must not count
    with pytest.raises(TimeoutError, match="not serving within"):
        operator.restart(timeout=2)
    assert not operator.alive(), "a start that fails leaves no process behind"
    assert operator.starts == 2


def test_stop_falls_back_to_sigkill(tmp_path):
    operator = StandIn(IGNORES_SIGTERM, tmp_path / "operator.log")
    operator.start(timeout=30)
    began = time.monotonic()
    operator.stop(timeout=1)
    assert operator.process.returncode == -signal.SIGKILL
    assert time.monotonic() - began < 15


def test_an_exit_during_start_reports_the_log(tmp_path):
    operator = StandIn(CRASHES, tmp_path / "operator.log", pid_file=tmp_path / "operator.pid")
    with pytest.raises(RuntimeError, match=r"exited with 3(.|\n)*cannot log in"):
        operator.start(timeout=30)
    assert not (tmp_path / "operator.pid").exists()


def test_a_recorded_operator_is_found_and_stopped_from_another_command(tmp_path):
    pid_file = tmp_path / "operator.pid"
    assert recorded_pid(pid_file) is None
    pid_file.write_text("not a pid")
    assert recorded_pid(pid_file) is None
    pid_file.write_text(str(os.getpid()))  # alive, but not an operator
    assert recorded_pid(pid_file) is None

    # Started by someone else (a new session, not waited for here): like `neuronplace demo` earlier.
    process = subprocess.Popen(
        [sys.executable, "-c", IGNORES_SIGTERM, "neuronplace.cli", "run"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        pid_file.write_text(f"{process.pid}\n")
        assert STARTED_LINE in process.stdout.readline()  # its SIGTERM handler is in place
        assert recorded_pid(pid_file) == process.pid
        began = time.monotonic()
        assert stop_recorded(pid_file, timeout=1)
        assert 1 <= time.monotonic() - began < 15  # SIGTERM ignored for a second, then SIGKILL
        with pytest.raises(ProcessLookupError):
            os.kill(process.pid, 0)
        assert not pid_file.exists()
        assert not stop_recorded(pid_file)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
