"""Every benchmark in ``benchmarks/`` runs in its quick mode and prints its tables.

A benchmark that nobody runs breaks unnoticed; this suite runs each one as a user would
(``python benchmarks/<name>.py --quick``, its own process) and fails when it crashes, exits non-zero
or prints no table. Timing targets are not asserted: on a shared 2-core machine they say more about
the neighbours than about the code. What is asserted is what must hold at any speed: the placement
benchmark's own "no rule broken" exit code, and the chaos and scale benchmarks' invariant monitor
(they exit 1 when it saw a violation).

The chaos, scale and failover benchmarks start their own local control plane (``cluster``); together the
five take about four minutes on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = pytest.mark.slow


def run_benchmark(name: str, *args: str, timeout: float) -> str:
    """Run one benchmark script; its output, or a failure that shows it."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{name} {' '.join(args)} exited {result.returncode}:\n{output[-6000:]}"
    print(f"{name} {' '.join(args)}: {time.monotonic() - started:.1f} s")
    return result.stdout


def assert_table(output: str, *needles: str) -> None:
    missing = [needle for needle in needles if needle not in output]
    assert not missing, f"no {missing} in the output:\n{output[-6000:]}"


def test_placement_benchmark():
    output = run_benchmark("placement.py", "--quick", timeout=300)
    assert_table(output, "Decisions per second", "median /s", "Fleet kept between calls", "Churn trace", "ours, Strict")


@pytest.mark.torch
def test_runtime_benchmark():
    pytest.importorskip("torch")
    output = run_benchmark("runtime.py", "--quick", timeout=300)
    assert_table(
        output,
        "1. Per-call overhead",
        "DataParallel, as it chooses",
        "DataParallel, parallel forced",
        "2. Throughput scaling",
        "3. Cores in flight",
    )


@pytest.mark.cluster
def test_chaos_benchmark():
    output = run_benchmark("chaos.py", "--quick", timeout=600)
    assert_table(output, "scenarios run", "violations at any moment: 0", "time to converge: median")


@pytest.mark.cluster
def test_scale_benchmark(tmp_path):
    output = run_benchmark(
        "scale.py", "--quick", "--plot", str(tmp_path / "scale.png"), "--name", f"np-smoke-{os.getpid()}", timeout=600
    )
    assert_table(
        output,
        "ours: Scheduler mode (operator pins, kube-scheduler binds)",
        "ours: Direct mode (operator binds)",
        "kube: ReplicaSets (controller-manager + scheduler)",
        "kube: scheduler alone (pods created directly)",
        "ratio pods/s ours: Scheduler mode",
        "ratio pods/s ours: Direct mode",
        "invariant monitor over the whole run",
        "violations at any moment: 0",
    )
    assert (tmp_path / "scale.png").stat().st_size > 0


@pytest.mark.cluster
def test_failover_benchmark():
    output = run_benchmark("failover.py", "--quick", "--name", f"np-failover-smoke-{os.getpid()}", timeout=600)
    assert_table(
        output,
        "SIGKILL",
        "SIGTERM",
        "first write median",
        "SIGKILL / SIGTERM first write medians",
        "violations at any moment: 0",
    )
