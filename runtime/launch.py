"""Start P processes that share this container's cores: ``python -m neuronplace.runtime.launch``.

    python -m neuronplace.runtime.launch --processes 2 -- python serve.py --port 8080

The launcher reads the cores it may use (``NEURON_RT_VISIBLE_CORES``, else
``NEURON_RT_NUM_CORES``, else all), splits them into P equal contiguous parts and starts the
command P times, each with its own ``NEURON_RT_VISIBLE_CORES`` (plus ``NEURONPLACE_PROCESS_INDEX``
and ``NEURONPLACE_PROCESS_COUNT``), so processes never share a core (with the AWS tooling, several
processes of one pod were handed the same cores). Inside each process ``DataParallel`` then sees its part as cores 0..C/P-1.

SIGTERM, SIGINT and SIGHUP are forwarded to every process. When one process exits with an error
the others get SIGTERM (SIGKILL after ``--grace-seconds``) so the pod restarts as a whole. The
launcher exits with the first failing process's code (128+N for death by signal N), else 0.
Cores that do not divide by P are refused before anything starts (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from neuronplace.runtime.cores import visible_cores
from neuronplace.runtime.coreset import (
    NUM_CORES_VAR,
    PROCESS_COUNT_VAR,
    PROCESS_INDEX_VAR,
    VISIBLE_CORES_VAR,
    CoreRange,
)

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_POLL_SECONDS = 0.05


def plan_processes(cores: Sequence[int], processes: int) -> list[CoreRange]:
    """The contiguous core range of each process; ``ValueError`` when the cores do not divide."""
    if processes < 1:
        raise ValueError(f"--processes must be at least 1, got {processes}")
    whole = CoreRange(cores[0], len(cores))
    if len(cores) % processes:
        raise ValueError(
            f"cannot split {len(cores)} cores ({whole}) into {processes} processes: {len(cores)} is not a multiple "
            f"of {processes}; use a process count that divides the core count"
        )
    return whole.split(processes)


def child_environment(base: Mapping[str, str], part: CoreRange, index: int, count: int) -> dict[str, str]:
    env = dict(base)
    env[VISIBLE_CORES_VAR] = str(part)
    env.pop(NUM_CORES_VAR, None)  # the explicit range now says it all
    env[PROCESS_INDEX_VAR] = str(index)
    env[PROCESS_COUNT_VAR] = str(count)
    return env


def exit_code(returncode: int) -> int:
    """A child's status as a shell would report it (death by signal N → 128+N)."""
    return 128 - returncode if returncode < 0 else returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neuronplace.runtime.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", "-p", type=int, required=True, help="how many processes share the cores")
    parser.add_argument(
        "--grace-seconds", type=float, default=10.0, help="SIGTERM → SIGKILL delay for siblings of a failed process"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- followed by the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given; usage: --processes P -- CMD [ARGS...]")
    try:
        parts = plan_processes(visible_cores(), args.processes)
    except ValueError as error:
        print(f"neuronplace.launch: {error}", file=sys.stderr)
        return 2
    return _run(command, parts, args.grace_seconds)


def _run(command: list[str], parts: list[CoreRange], grace_seconds: float) -> int:
    children: list[subprocess.Popen] = []
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        for child in children:
            _signal(child, signum)

    previous = {signum: signal.signal(signum, forward) for signum in _FORWARDED}
    try:
        for index, part in enumerate(parts):
            if received:
                break  # told to stop while starting: start no more
            print(f"neuronplace.launch: process {index}: {VISIBLE_CORES_VAR}={part}", file=sys.stderr, flush=True)
            try:
                # Own process group: a terminal's Ctrl-C reaches the children once, through us.
                children.append(
                    subprocess.Popen(
                        command, env=child_environment(os.environ, part, index, len(parts)), process_group=0
                    )
                )
            except OSError as error:
                print(f"neuronplace.launch: cannot start {command[0]!r}: {error}", file=sys.stderr)
                _stop(children, grace_seconds)
                return 127
        if not children:
            return 128 + received[0]  # stopped by a signal before anything started
        return _wait(children, grace_seconds)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait(children: list[subprocess.Popen], grace_seconds: float) -> int:
    first_failure: int | None = None
    while True:
        running = [child for child in children if child.poll() is None]
        if first_failure is None:
            for child in children:
                if child.returncode not in (None, 0):
                    first_failure = exit_code(child.returncode)
                    print(
                        f"neuronplace.launch: process {children.index(child)} exited with {first_failure}; stopping the others",
                        file=sys.stderr,
                    )
                    _stop(running, grace_seconds)
                    running = []
                    break
        if not running:
            return first_failure if first_failure is not None else 0
        time.sleep(_POLL_SECONDS)


def _stop(children: list[subprocess.Popen], grace_seconds: float) -> None:
    for child in children:
        _signal(child, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(child, signal.SIGKILL)
            child.wait()


def _signal(child: subprocess.Popen, signum: int) -> None:
    if child.poll() is None:
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    sys.exit(main())
