"""Unhealthy Neuron hardware on the real control plane: a node condition written the way the Neuron
node problem detector / EKS node monitoring agent write it (``neuronplace local node``), with the
shared operator and its test timings (``TEST_TIMINGS``: ``health_settle_seconds`` short).

Replicas move off an unhealthy node one at a time (``maxUnavailable`` 1 by default: a watch of the
replica pods checks at every event that never more than one replica is down), never land on it,
and a node healthy again takes replicas only after the settle window; a flapping node moves each
replica at most once; with no room elsewhere replicas stay and ``Healthy`` says why; a lowered
allocatable is shown degraded, and kwok's own rewrite of the node's status keeps both."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from neuronplace.local.operator_process import TEST_TIMINGS
from neuronplace.placement.names import CONDITION_HEALTHY, CONDITION_PLACED, INFERENCE_LABEL
from support.builders import inference
from support.cluster import apply, condition, get_inference, live, placed_and_ready, pods_of

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SETTLE = TEST_TIMINGS["health_settle_seconds"]
HBM = "NeuronHasError_HBM_UNCORRECTABLE_ERROR"
REPLICAS, CORES = 4, 12  # two replicas fill an inf2.48xlarge (24 cores)


def local_node(cluster, node: str, *args: str) -> str:
    """``neuronplace local node NODE ARGS`` on the test's cluster; its output."""
    result = subprocess.run(
        [sys.executable, "-m", "neuronplace.cli", "local", "node", node, "--name", cluster.name, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


class Replicas(threading.Thread):
    """A watch of one resource's replica pods: at every event, how many replicas are ready (a live,
    Ready pod), the fewest seen once all were ready; and every pod ever ADDED (uid → name)."""

    def __init__(self, cluster, namespace: str, name: str) -> None:
        super().__init__(daemon=True, name=f"replicas-{namespace}")
        from kubernetes import client, config

        self.core = client.CoreV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
        self.namespace, self.name = namespace, name
        self.ready: dict[str, bool] = {}  # uid → live and Ready
        self.added: dict[str, str] = {}  # uid → pod name
        self.going: set[str] = set()  # uids seen being deleted or gone
        self.fewest: int | None = None
        self.error: BaseException | None = None
        self._stopping = threading.Event()

    def run(self) -> None:
        from kubernetes import watch

        try:
            stream = watch.Watch()
            while not self._stopping.is_set():
                for event in stream.stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=f"{INFERENCE_LABEL}={self.name}",
                    timeout_seconds=5,
                ):
                    pod = event["object"]
                    uid = pod.metadata.uid
                    self.added.setdefault(uid, pod.metadata.name)
                    conditions = (pod.status.conditions if pod.status else None) or []
                    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
                    if event["type"] == "DELETED" or pod.metadata.deletion_timestamp:
                        self.going.add(uid)
                    self.ready[uid] = uid not in self.going and ready
                    count = sum(self.ready.values())
                    if self.fewest is not None or count == REPLICAS:
                        self.fewest = count if self.fewest is None else min(self.fewest, count)
        except BaseException as error:  # reported by stop()
            self.error = error

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=15)
        assert self.error is None, f"watching the replica pods failed: {self.error}"

    def pods_per_replica(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name in self.added.values():
            counts[name] = counts.get(name, 0) + 1
        return counts


def nodes_of(cluster, namespace: str, name: str) -> dict[str, str]:
    """Live replica pod → its node."""
    return {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in live(pods_of(cluster, namespace, name))}


def events(cluster, namespace: str, name: str) -> list[tuple[str, str]]:
    found = cluster.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")
    return [(e.get("reason", ""), e.get("message", "")) for e in found["items"]]


def test_replicas_move_off_an_unhealthy_node_one_at_a_time_and_come_back_after_the_settle(
    local_cluster, operator, namespace, fleet, wait_for
):
    nodes = fleet({"inf2.48xlarge": 3})
    apply(local_cluster, namespace, inference("svc", cores=CORES, replicas=REPLICAS, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "svc", REPLICAS), 60, "4 replicas")
    before = nodes_of(local_cluster, namespace, "svc")
    sick = before["svc-0"]
    assert sorted(before.values()).count(sick) == 2, before  # BinPack: two replicas a node
    watch = Replicas(local_cluster, namespace, "svc")
    watch.start()
    wait_for(lambda: watch.fewest is not None, 30, "the watch to see every replica ready")
    local_node(local_cluster, sick, "--condition", f"NeuronHealth=True:{HBM}")
    started = time.monotonic()
    try:

        def moved():
            now = nodes_of(local_cluster, namespace, "svc")
            return sick not in now.values() and placed_and_ready(local_cluster, namespace, "svc", REPLICAS) and now

        after = wait_for(moved, 30, "both replicas moved off the unhealthy node")
        assert time.monotonic() - started < 30
        assert {pod: node for pod, node in after.items() if before[pod] != sick} == {
            pod: node for pod, node in before.items() if node != sick
        }, "only the replicas of the unhealthy node moved"
        moves = [message for reason, message in events(local_cluster, namespace, "svc") if reason == "UnhealthyNode"]
        assert len(moves) == 2 and all(f"on node {sick}: NeuronHealth: {HBM}" in m for m in moves), moves
        healthy = wait_for(
            lambda: (
                condition(get_inference(local_cluster, namespace, "svc"), CONDITION_HEALTHY).get("status") == "True"
            ),
            15,
            "Healthy True again",
        )
        assert healthy
    finally:
        watch.stop()
    assert watch.fewest == REPLICAS - 1, f"at most maxUnavailable=1 replica down at once, saw {watch.fewest} ready"

    # Healthy again: two more replicas need the sick node's cores; they wait out the settle window.
    local_node(local_cluster, sick, "--condition", "NeuronHealth=False:NeuronHasNoError")
    healed = time.monotonic()
    apply(local_cluster, namespace, inference("svc", cores=CORES, replicas=REPLICAS + 2, pool=nodes.pool))

    def refused():
        placed = condition(get_inference(local_cluster, namespace, "svc"), CONDITION_PLACED)
        return "with unhealthy Neuron hardware" in placed.get("message", "") and placed["message"]

    if time.monotonic() - healed < SETTLE / 2:  # still early enough to see the refusal on a loaded machine
        assert "healthy again, settling" in wait_for(refused, SETTLE, "the settling node counted in Placed")
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "svc", REPLICAS + 2), 30, "6 replicas")
    assert time.monotonic() - healed >= SETTLE, "a node healthy again took replicas before the settle window"
    assert sorted(nodes_of(local_cluster, namespace, "svc").values()).count(sick) == 2


def test_a_flapping_node_moves_each_replica_at_most_once(local_cluster, operator, namespace, fleet, wait_for):
    nodes = fleet({"inf2.48xlarge": 3})
    apply(local_cluster, namespace, inference("svc", cores=CORES, replicas=REPLICAS, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "svc", REPLICAS), 60, "4 replicas")
    sick = nodes_of(local_cluster, namespace, "svc")["svc-0"]
    watch = Replicas(local_cluster, namespace, "svc")
    watch.start()
    try:
        # Unhealthy and healthy again, each for half the settle window, three times. (That a node
        # healthy again takes no replica before the window ends is the test above's; here, that the
        # flapping moves each replica of the node once, and the others never.)
        for _ in range(3):
            local_node(local_cluster, sick, "--condition", f"NeuronHealth=True:{HBM}")
            time.sleep(SETTLE / 2)  # the unhealthy half of the flap
            local_node(local_cluster, sick, "--condition", "NeuronHealth=False:NeuronHasNoError")
            time.sleep(SETTLE / 2)  # the healthy half of the flap
        wait_for(lambda: placed_and_ready(local_cluster, namespace, "svc", REPLICAS), 30, "4 replicas again")
    finally:
        watch.stop()
        local_node(local_cluster, sick, "--clear-condition", "NeuronHealth")
    per_replica = watch.pods_per_replica()
    assert all(count <= 2 for count in per_replica.values()), per_replica
    assert sum(count == 2 for count in per_replica.values()) == 2, f"both replicas of the node moved: {per_replica}"
    assert sick not in nodes_of(local_cluster, namespace, "svc").values()


def test_no_room_to_move_keeps_the_replicas_and_healthy_says_why(local_cluster, operator, namespace, fleet, wait_for):
    nodes = fleet({"inf2.48xlarge": 2})
    bad = inference("bad", cores=1, replicas=1, pool=nodes.pool)
    bad["spec"]["placement"]["unhealthyNodes"] = {"maxUnavailable": 0}
    refused = apply(local_cluster, namespace, bad, check=False)
    assert refused.returncode != 0 and "maxUnavailable must be an integer >= 1 or a percent" in refused.stderr
    apply(local_cluster, namespace, inference("svc", cores=CORES, replicas=REPLICAS, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "svc", REPLICAS), 60, "4 replicas")
    before = nodes_of(local_cluster, namespace, "svc")
    sick = before["svc-0"]
    local_node(local_cluster, sick, "--condition", "AcceleratedHardwareReady=False:NeuronHBMUncorrectableError")
    try:

        def says_why():
            healthy = condition(get_inference(local_cluster, namespace, "svc"), CONDITION_HEALTHY)
            return healthy.get("reason") == "NoRoomToMove" and healthy

        healthy = wait_for(says_why, 15, "Healthy=False NoRoomToMove")
        assert healthy["status"] == "False"
        assert "AcceleratedHardwareReady: NeuronHBMUncorrectableError" in healthy["message"]
        assert "stays" in healthy["message"] and "with unhealthy Neuron hardware" in healthy["message"]
        assert nodes_of(local_cluster, namespace, "svc") == before
    finally:
        local_node(local_cluster, sick, "--clear-condition", "AcceleratedHardwareReady")


def test_a_lowered_allocatable_is_shown_degraded_and_kwok_keeps_what_was_written(local_cluster, namespace, fleet):
    (node,) = fleet({"inf2.48xlarge": 1})
    local_node(
        local_cluster,
        node,
        "--allocatable",
        "aws.amazon.com/neuron=11",
        "--allocatable",
        "aws.amazon.com/neuroncore=22",
    )
    local_node(local_cluster, node, "--condition", f"NeuronHealth=True:{HBM}")
    # kwok rewrites a node's status when it turns Ready (node-initialize, the same template as its
    # heartbeats): the detector's condition and the device plugin's allocatable must survive it.
    local_cluster.set_node_ready(node, False)
    local_cluster.set_node_ready(node, True)
    status = local_cluster.get_json("node", node)["status"]
    assert status["allocatable"]["aws.amazon.com/neuron"] == "11"
    health = [c for c in status["conditions"] if c["type"] == "NeuronHealth"]
    assert [(c["status"], c["reason"]) for c in health] == [("True", HBM)], json.dumps(status["conditions"])
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "neuronplace.cli",
            "cores",
            "--kubeconfig",
            str(local_cluster.kubeconfig),
            "--selector",
            f"kubernetes.io/hostname={node}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "(degraded: aws.amazon.com/neuroncore allocatable 22 of 24)" in shown.stdout, shown.stdout
    assert f"(unhealthy: NeuronHealth: {HBM})" in shown.stdout, shown.stdout
    local_node(local_cluster, node, "--clear-condition", "NeuronHealth")
    assert not [c for c in local_cluster.get_json("node", node)["status"]["conditions"] if c["type"] == "NeuronHealth"]
