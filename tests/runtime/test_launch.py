"""The launcher with real processes: core split, environment, exit codes, signal forwarding."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from neuronplace.runtime.launch import plan_processes

LAUNCH = [sys.executable, "-m", "neuronplace.runtime.launch"]


def launch(args, env_update, timeout=60, **kwargs):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEURON_RT_")}
    env.update(env_update)
    return subprocess.run(LAUNCH + args, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def child(code):
    return [sys.executable, "-c", textwrap.dedent(code)]


REPORT = """
    import os, pathlib, sys
    index = os.environ["NEURONPLACE_PROCESS_INDEX"]
    from neuronplace.runtime import visible_cores
    line = " ".join([index, os.environ["NEURONPLACE_PROCESS_COUNT"], os.environ["NEURON_RT_VISIBLE_CORES"],
                     str(visible_cores()), str("NEURON_RT_NUM_CORES" in os.environ)])
    pathlib.Path(sys.argv[1], index).write_text(line)
"""


def reports(folder):
    return sorted(path.read_text() for path in folder.iterdir())


def test_cores_are_split_into_contiguous_parts(tmp_path):
    result = launch(["--processes", "4", "--", *child(REPORT), str(tmp_path)], {"NEURON_RT_VISIBLE_CORES": "8-15"})
    assert result.returncode == 0, result.stderr
    assert reports(tmp_path) == [
        "0 4 8-9 [8, 9] False",
        "1 4 10-11 [10, 11] False",
        "2 4 12-13 [12, 13] False",
        "3 4 14-15 [14, 15] False",
    ]


def test_num_cores_is_turned_into_explicit_ranges(tmp_path):
    result = launch(["-p", "2", "--", *child(REPORT), str(tmp_path)], {"NEURON_RT_NUM_CORES": "4"})
    assert result.returncode == 0, result.stderr
    assert reports(tmp_path) == ["0 2 0-1 [0, 1] False", "1 2 2-3 [2, 3] False"]


def test_cores_that_do_not_divide_fail_before_anything_starts(tmp_path):
    marker = tmp_path / "started"
    result = launch(["-p", "2", "--", *child(f"open({str(marker)!r}, 'w')")], {"NEURON_RT_VISIBLE_CORES": "0-2"})
    assert result.returncode == 2
    assert "cannot split 3 cores (0-2) into 2 processes" in result.stderr
    assert not marker.exists()


def test_malformed_cores_and_missing_command_are_refused():
    result = launch(["-p", "2", "--", "true"], {"NEURON_RT_VISIBLE_CORES": "3,5"})
    assert result.returncode == 2 and "'3,5'" in result.stderr
    result = launch(["-p", "2"], {"NEURON_RT_VISIBLE_CORES": "0-1"})
    assert result.returncode == 2 and "no command" in result.stderr
    with pytest.raises(ValueError, match="at least 1"):
        plan_processes([0, 1], 0)


def test_first_failure_is_the_exit_code_and_stops_the_others():
    code = """
        import os, sys, time
        if os.environ["NEURONPLACE_PROCESS_INDEX"] == "1":
            sys.exit(3)
        time.sleep(60)
    """
    started = time.monotonic()
    result = launch(["-p", "2", "--", *child(code)], {"NEURON_RT_VISIBLE_CORES": "0-1"})
    assert result.returncode == 3
    assert time.monotonic() - started < 30  # the sleeper was stopped, not waited for
    assert "process 1 exited with 3" in result.stderr


def test_death_by_signal_is_reported_like_a_shell():
    result = launch(
        ["-p", "1", "--", *child("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")],
        {"NEURON_RT_VISIBLE_CORES": "0"},
    )
    assert result.returncode == 128 + signal.SIGKILL


def test_sigterm_is_forwarded_to_every_process(tmp_path):
    code = """
        import os, pathlib, signal, sys, time
        folder = pathlib.Path(sys.argv[1])
        index = os.environ["NEURONPLACE_PROCESS_INDEX"]
        def stop(signum, frame):
            (folder / f"stopped-{index}").write_text(str(signum))
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        (folder / f"ready-{index}").write_text("")
        time.sleep(60)
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEURON_RT_")}
    env["NEURON_RT_VISIBLE_CORES"] = "0-3"
    with subprocess.Popen(
        [*LAUNCH, "-p", "2", "--", *child(code), str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True
    ) as process:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("ready-*"))) < 2:
            assert time.monotonic() < deadline, "children did not start"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr  # both children handled it and exited cleanly
    assert sorted(p.name for p in tmp_path.glob("stopped-*")) == ["stopped-0", "stopped-1"]
    assert (tmp_path / "stopped-0").read_text() == str(int(signal.SIGTERM))
