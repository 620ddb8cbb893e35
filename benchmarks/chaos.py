"""Chaos run: every reliability scenario against a fresh local control plane, with one seed.

Run: ``python benchmarks/chaos.py --seed 7`` (``--scenario NAME`` repeatable, to run only some).
The scenarios are the pytest suite's own (``neuronplace.local.reliability.scenarios``): operator SIGKILLs
during scale-ups, kube-apiserver and etcd restarts, node deletion, NotReady and cordon, 50
resources at once, delete/recreate loops, pod-delete storms, foreign pods, nodes with odd data and
the bad-spec corpus. Each fault ends with the shared invariant checker
(``neuronplace.local.reliability.invariants``), and for the whole of every scenario an invariant monitor
(``neuronplace.local.reliability.monitor``) checks the safety invariants at every watch event.

Prints a table: scenarios run, faults injected, convergence checks and the violations they found,
the monitor's events and the violations it saw at any moment (both must be 0), and the time from
each fault to the first clean check (median and max, overall and per kind of fault), then the
line "violations at any moment: N". Exits 1 when any scenario failed or any violation was seen.
``--quick`` runs three short scenarios (for the smoke test). The cluster (named
``np-chaos-<pid>``) is removed at the end in every case.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from neuronplace.local.cluster import LocalCluster
from neuronplace.local.operator_process import install_crd
from neuronplace.local.reliability import harness as hs
from neuronplace.local.reliability.scenarios import SCENARIOS

# Short scenarios that still inject a fault of each layer: a pod, a node, the operator process.
QUICK = ("pod_delete_storm", "node_deleted", "faults_while_operator_down")


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
    parser.add_argument("--quick", action="store_true", help=f"run only {', '.join(QUICK)} (a smoke test)")
    args = parser.parse_args(argv)
    chosen = args.scenario or (list(QUICK) if args.quick else list(SCENARIOS))

    record = hs.ChaosRecord()
    failed: list[str] = []
    errors: list[str] = []  # why each failed scenario failed (convergence timeouts are also in the record)
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
                errors.append(f"{name}: {type(error).__name__}: {error}")
                traceback.print_exc()
            print(f"    {time.monotonic() - begin:.1f} s", flush=True)
    finally:
        cluster.down()

    print()
    print(f"chaos run: {len(chosen)} scenarios in {time.monotonic() - started:.0f} s")
    print(hs.format_table(record, args.seed))
    s = record.summary()
    print()
    print(f"violations at any moment: {record.transient} (in {record.monitor_events} events checked)")
    print(
        "time to converge: "
        + (
            f"median {s['converge_median_s']:.2f} s, max {s['converge_max_s']:.2f} s"
            if s["converge_median_s"] is not None
            else "no fault converged"
        )
    )
    if failed or record.violations or record.transient:
        print("\nFAILED scenarios: " + ", ".join(failed) if failed else "")
        for line in [*errors, *record.violations]:
            print(f"  {line}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
