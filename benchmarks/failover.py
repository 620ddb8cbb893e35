"""Failover benchmark: two operators with leader election, the leader killed again and again.

Run (the local control plane's binaries are built on first use):

    python benchmarks/failover.py                 # 10 kills, SIGKILL and SIGTERM in turn, product timings
    python benchmarks/failover.py --kills 20      # more rounds
    python benchmarks/failover.py --quick         # 2 kills with short Lease timings (the CI smoke test)

One cluster, two kwok inf2.48xlarge nodes, one NeuronInference and two operator processes
(``neuronplace run``, identities ``a`` and ``b``, leader election on with the product's Lease timings
unless ``--lease-duration``/``--renew-deadline``/``--retry-period`` say otherwise). Each round sends
the leader SIGKILL (a crash: its Lease must expire) or SIGTERM (a rollout: it releases the Lease),
alternately, and at the same moment scales the inference, so that the new leader has work to do.
Measured from the signal, on the follower's own ``/metrics`` (polled every 50 ms):

- **lease s**: until the follower says it leads (``neuronplace_leader``);
- **first write s**: until it has sent its first write (``neuronplace_api_writes_total``, the
  Lease's own excluded): what "failover time" means to a user.

The killed operator is then started again (it comes back as the follower) and the round waits
until every replica runs. An invariant monitor follows the whole run (no core held twice at any
moment); the exit status is 1 when it saw a violation.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from neuronplace.local.fleet import POOL_LABEL
from neuronplace.local.manifests import inference
from neuronplace.local.operator_process import OperatorProcess, free_port, install_crd
from neuronplace.operator.election import Timings
from neuronplace.placement.names import INFERENCE_LABEL

NAMESPACE = "failover"
POOL = "failover"
SCALES = (8, 16)  # the replica counts the rounds alternate between
POLL = 0.05  # seconds between scrapes of the follower's metrics
QUICK_TIMINGS = Timings(6.0, 4.0, 1.0)


def say(message: str) -> None:
    print(f"[failover] {message}", file=sys.stderr, flush=True)


def metric(process: OperatorProcess, name: str) -> float:
    """The sum of ``name``'s samples on the process's /metrics (the Lease's writes excluded)."""
    with urllib.request.urlopen(process.metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels.get("resource") != "leases"
    )


def holder(cluster) -> str:
    return (cluster.get_json("lease", "neuronplace", "-n", "default")["spec"].get("holderIdentity")) or ""


def running(cluster, replicas: int) -> bool:
    pods = cluster.get_json("pods", "-n", NAMESPACE, "-l", f"{INFERENCE_LABEL}=svc")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"]
    return len(live) == replicas == len(pods)


def wait(what: str, check, timeout: float, interval: float = 0.2) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if check():
            return time.monotonic() - began
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def one_round(cluster, operators: dict[str, OperatorProcess], sig: int, replicas: int) -> tuple[float, float]:
    """Signal the leader and scale to ``replicas``; (lease s, first write s) of the follower."""
    leader = operators[holder(cluster)]
    follower = next(p for p in operators.values() if p is not leader)
    writes_before = metric(follower, "neuronplace_api_writes_total")
    assert writes_before == 0, f"the follower {follower.identity} wrote {writes_before} times while following"
    began = time.monotonic()
    leader.process.send_signal(sig)
    cluster.kubectl("scale", "ninf", "svc", "-n", NAMESPACE, f"--replicas={replicas}")
    lease = first_write = None
    while first_write is None:
        if time.monotonic() - began > 120:
            raise TimeoutError(f"no write by the follower within 120 s:\n{follower.log_tail(30)}")
        now = time.monotonic() - began
        if lease is None and metric(follower, "neuronplace_leader"):
            lease = now
        if metric(follower, "neuronplace_api_writes_total"):
            first_write = now
            lease = now if lease is None else lease
        time.sleep(POLL)
    leader.process.wait(timeout=60)
    wait(f"{replicas} replicas running", lambda: running(cluster, replicas), 120)
    leader.start()  # back as the follower
    return lease, first_write


def table(rows: list[tuple[int, str, float, float]], lease_duration: float) -> str:
    lines = ["kill  signal    lease s  first write s", "----  -------  -------  -------------"]
    lines += [f"{n:4}  {s:7}  {lease:7.2f}  {write:13.2f}" for n, s, lease, write in rows]
    lines.append("")
    lines.append("signal   kills  lease median  lease max  first write median  first write max")
    for name in ("SIGKILL", "SIGTERM"):
        picked = [r for r in rows if r[1] == name]
        if picked:
            leases, writes = [r[2] for r in picked], [r[3] for r in picked]
            lines.append(
                f"{name:7}  {len(picked):5}  {statistics.median(leases):12.2f}  {max(leases):9.2f}  "
                f"{statistics.median(writes):18.2f}  {max(writes):15.2f}"
            )
    medians = {
        name: statistics.median(r[3] for r in rows if r[1] == name)
        for name in ("SIGKILL", "SIGTERM")
        if any(r[1] == name for r in rows)
    }
    lines.append("")
    # Ratios of medians measured in the same run, kills alternating: a crash waits out the Lease,
    # a clean stop hands it over.
    for name, median in medians.items():
        lines.append(f"{name} first write median / lease duration: {median / lease_duration:.2f}")
    if len(medians) == 2 and medians["SIGTERM"] > 0:
        lines.append(f"SIGKILL / SIGTERM first write medians: {medians['SIGKILL'] / medians['SIGTERM']:.1f}x")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="rounds, SIGKILL and SIGTERM in turn (default 10)")
    parser.add_argument("--quick", action="store_true", help=f"2 kills, Lease timings {QUICK_TIMINGS}")
    parser.add_argument("--lease-duration", type=float, help="seconds (default: the product's 15)")
    parser.add_argument("--renew-deadline", type=float, help="seconds (default: the product's 10)")
    parser.add_argument("--retry-period", type=float, help="seconds (default: the product's 2)")
    parser.add_argument("--name", default="np-failover", help="name of the local cluster (created and removed)")
    args = parser.parse_args(argv)
    base = QUICK_TIMINGS if args.quick else Timings()
    kills = 2 if args.quick else args.kills
    try:
        timings = Timings(
            args.lease_duration or base.lease_duration,
            args.renew_deadline or base.renew_deadline,
            args.retry_period or base.retry_period,
        )
        if kills < 1:
            raise ValueError(f"--kills must be >= 1, got {kills}")
    except ValueError as error:
        parser.error(str(error))

    from neuronplace.local.cluster import LocalCluster
    from neuronplace.local.reliability.monitor import monitor_for

    cluster = LocalCluster(args.name)
    if cluster.exists() and not cluster.running_components():
        cluster.down()  # state left by a killed run
    rows: list[tuple[int, str, float, float]] = []
    report = None
    with tempfile.TemporaryDirectory(prefix="np-failover-") as scratch:
        operators: dict[str, OperatorProcess] = {}
        monitor = None
        try:
            say(f"starting the local control plane {args.name!r} ...")
            cluster.up(progress=say)
            install_crd(cluster)
            cluster.create_nodes({"inf2.48xlarge": 2}, labels={POOL_LABEL: POOL})
            cluster.kubectl("create", "namespace", NAMESPACE)
            monitor = monitor_for(cluster.kubeconfig, namespaces=[NAMESPACE]).start()
            for identity in ("a", "b"):
                port = free_port()
                flags = [
                    "--pod-name", identity,
                    "--metrics-port", str(port),
                    "--lease-duration-seconds", str(timings.lease_duration),
                    "--renew-deadline-seconds", str(timings.renew_deadline),
                    "--retry-period-seconds", str(timings.retry_period),
                ]  # fmt: skip
                process = OperatorProcess(cluster, Path(scratch) / f"operator-{identity}.log", flags)
                process.identity, process.metrics_url = identity, f"http://127.0.0.1:{port}/metrics"
                process.start()
                operators[identity] = process
            manifest = inference("svc", cores=2, replicas=SCALES[0], pool=POOL)
            cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(manifest))
            wait("the first replicas running", lambda: running(cluster, SCALES[0]), 120)
            say(f"two operators, leader {holder(cluster)}; timings {timings}")
            for number in range(1, kills + 1):
                sig = signal.SIGKILL if number % 2 else signal.SIGTERM
                lease, write = one_round(cluster, operators, sig, SCALES[number % 2])
                rows.append((number, sig.name, lease, write))
                say(f"kill {number} ({sig.name}): lease {lease:.2f} s, first write {write:.2f} s")
            report = monitor.stop()
        finally:
            if monitor is not None and report is None:
                monitor.stop()
            for process in operators.values():
                process.stop()
            say("tearing the cluster down ...")
            cluster.down()
    print(f"Failover: two operators, timings lease {timings.lease_duration} s / renew {timings.renew_deadline} s / "
          f"retry {timings.retry_period} s, {kills} kills\n")  # fmt: skip
    print(table(rows, timings.lease_duration))
    print(f"\ninvariant monitor over the whole run: {report.summary()}")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
