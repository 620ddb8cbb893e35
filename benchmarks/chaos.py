"""Chaos run: every reliability scenario against a fresh local control plane, with one seed.

Run: ``python benchmarks/chaos.py --seed 7`` (``--scenario NAME`` repeatable, to run only some).
The scenarios are the pytest suite's own (``tests/reliability/scenarios.py``): operator SIGKILLs
during scale-ups, kube-apiserver and etcd restarts, node deletion, NotReady and cordon, 50
resources at once, delete/recreate loops, pod-delete storms, foreign pods, nodes with odd data and
the bad-spec corpus. Each fault ends with the shared invariant checker
(``tests/reliability/invariants.py``).

Prints a table: scenarios run, faults injected, invariant checks, violations (must be 0), and the
time from each fault to the first clean check (median and max, overall and per kind of fault).
Exits 1 when any scenario failed or any violation was seen. The cluster (named
``np-chaos-<pid>``) is removed at the end in every case.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the shared scenarios live in tests/reliability

from neuronplace.local.cluster import LocalCluster  # noqa: E402
from neuronplace.local.operator_process import install_crd  # noqa: E402
from reliability import harness as hs  # noqa: E402
from reliability.scenarios import SCENARIOS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        metavar="NAME",
        help=f"run only this scenario (repeatable); one of: {', '.join(SCENARIOS)}",
    )
    args = parser.parse_args(argv)
    chosen = args.scenario or list(SCENARIOS)

    record = hs.ChaosRecord()
    failed: list[str] = []
    cluster = LocalCluster(f"np-chaos-{os.getpid()}")
    started = time.monotonic()
    try:
        cluster.up(progress=lambda line: print(f"[local control plane] {line}", flush=True))
        install_crd(cluster)
        for name in chosen:
            print(f"--- {name}", flush=True)
            begin = time.monotonic()
            try:
                with hs.harness(cluster, name, args.seed, record) as world:
                    try:
                        SCENARIOS[name](world)
                    except BaseException:
                        print(world.operator.log_tail(40), file=sys.stderr)
                        raise
            except Exception as error:  # one broken scenario must not hide the others' results
                failed.append(name)
                record.violations.append(f"{name}: {type(error).__name__}: {error}")
                traceback.print_exc()
            print(f"    {time.monotonic() - begin:.1f} s", flush=True)
    finally:
        cluster.down()

    print()
    print(f"chaos run: {len(chosen)} scenarios in {time.monotonic() - started:.0f} s")
    print(hs.format_table(record, args.seed))
    if failed or record.violations:
        print("\nFAILED scenarios: " + ", ".join(failed) if failed else "")
        for violation in record.violations:
            print(f"  {violation}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
