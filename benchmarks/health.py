"""Health flapping run: a node's Neuron hardware flaps unhealthy/healthy for a minute; each replica
must move at most once, never more than maxUnavailable (1) down at once, none back on the node
before it settles.

Run: ``python benchmarks/health.py`` (``--flap-seconds 5 --minutes 1 --settle-seconds 10``). Starts a
local control plane (``np-health-<pid>``, removed at the end) with three inf2.48xlarge and an
operator, places 4 replicas of 12 cores (BinPack: two on each of two nodes), then flips
``NeuronHealth`` on the node of replica 0 every ``--flap-seconds`` (the settle window is longer, so
the node never settles while it flaps). Polls the replica pods all along and prints: moves per
replica, the fewest ready replicas seen, and whether any pod ran on the flapping node after the
first flip. Exits 1 when a replica moved more than once, more than one replica was down at once,
or a replica went back to the flapping node. The cluster tests keep a 15 s version of this
(``tests/cluster/test_operator_health.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from neuronplace.local import node_health
from neuronplace.local.cluster import LocalCluster
from neuronplace.local.manifests import inference
from neuronplace.local.operator_process import OperatorProcess, install_crd, timing_flags

REPLICAS, CORES = 4, 12
HBM = "NeuronHasError_HBM_UNCORRECTABLE_ERROR"


def _pods(cluster: LocalCluster) -> list[dict]:
    return cluster.get_json("pods", "-n", "default", "-l", "neuronplace.io/inference=svc")["items"]


def _ready(pod: dict) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    alive = not pod["metadata"].get("deletionTimestamp")
    return alive and any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flap-seconds", type=float, default=5.0, help="time between flips (default 5)")
    parser.add_argument("--minutes", type=float, default=1.0, help="how long the node flaps (default 1)")
    parser.add_argument("--settle-seconds", type=float, default=10.0, help="the operator's health settle window")
    args = parser.parse_args(argv)
    if args.settle_seconds <= args.flap_seconds:
        parser.error("--settle-seconds must exceed --flap-seconds (else the node settles between flips)")

    cluster = LocalCluster(f"np-health-{os.getpid()}")
    operator = None
    try:
        cluster.up(fleet={"inf2.48xlarge": 3}, progress=lambda line: print(f"[local control plane] {line}", flush=True))
        install_crd(cluster)
        flags = [*timing_flags(), "--health-settle-seconds", str(args.settle_seconds)]
        operator = OperatorProcess(cluster, cluster.logs_dir / "operator-health.log", flags)
        operator.start(timeout=120)
        body = inference("svc", namespace="default", replicas=REPLICAS, cores=CORES)
        cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        deadline = time.monotonic() + 120
        while sum(map(_ready, _pods(cluster))) < REPLICAS:
            if time.monotonic() > deadline:
                raise TimeoutError("4 replicas not ready within 120 s")
            time.sleep(0.5)  # waiting for the replicas to be placed and run
        placed = _pods(cluster)
        sick = next(p["spec"]["nodeName"] for p in placed if p["metadata"]["name"] == "svc-0")
        original = {p["metadata"]["uid"] for p in placed}  # the pods that may be on the flapping node

        seen = {p["metadata"]["uid"]: p["metadata"]["name"] for p in placed}  # pod uid → pod name
        fewest, back_on_sick = REPLICAS, []
        flips, next_flip, unhealthy = 0, time.monotonic(), False
        end = time.monotonic() + args.minutes * 60
        while time.monotonic() < end:
            if time.monotonic() >= next_flip:
                unhealthy = not unhealthy
                status, reason = ("True", HBM) if unhealthy else ("False", "NeuronHasNoError")
                node_health.set_condition(cluster, sick, node_health.ConditionChange("NeuronHealth", status, reason))
                flips += 1
                next_flip += args.flap_seconds
            pods = _pods(cluster)
            for pod in pods:
                seen.setdefault(pod["metadata"]["uid"], pod["metadata"]["name"])
                if pod["metadata"]["uid"] not in original and pod["spec"].get("nodeName") == sick:
                    back_on_sick.append(pod["metadata"]["name"])
            fewest = min(fewest, sum(map(_ready, pods)))
            time.sleep(0.2)  # the poll interval
        stayed = sorted(p["metadata"]["name"] for p in _pods(cluster) if p["spec"].get("nodeName") == sick)
        node_health.clear_condition(cluster, sick, "NeuronHealth")
    finally:
        if operator is not None:
            operator.stop()
            if os.environ.get("NEURONPLACE_BENCH_LOG"):
                import shutil

                shutil.copy(operator.log_path, os.environ["NEURONPLACE_BENCH_LOG"])
        cluster.down()

    per_replica: dict[str, int] = {}
    for name in seen.values():
        per_replica[name] = per_replica.get(name, 0) + 1
    moves = {name: count - 1 for name, count in sorted(per_replica.items())}
    print(f"flips: {flips} every {args.flap_seconds:g} s (settle {args.settle_seconds:g} s)")
    print(f"moves per replica: {moves}")
    print(f"fewest ready replicas: {fewest} of {REPLICAS}")
    print(f"pods placed on the flapping node after the first flip: {sorted(set(back_on_sick)) or 'none'}")
    print(f"replicas still on the flapping node at the end: {stayed or 'none'}")
    failed = any(m > 1 for m in moves.values()) or fewest < REPLICAS - 1 or back_on_sick or stayed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
