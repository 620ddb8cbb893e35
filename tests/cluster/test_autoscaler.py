"""Karpenter (kwok provider) in the local control plane: a Pending Neuron pod gets a node of a
Neuron instance type, and the node goes away once it is empty.

The cluster starts with no node at all (the ``autoscaler`` fixture), so every node here is one
Karpenter made. While waiting, every poll checks that Karpenter never asked for more nodes than the
pods need.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from neuronplace.local import procs
from neuronplace.local.autoscaler import (
    BATCH_MAX_SECONDS,
    COMPONENT,
    DEFAULT_NODE_POOL,
    NODE_POOL_LABEL,
    AutoscalerError,
)
from neuronplace.local.cluster import CONTROL_PLANE_COMPONENTS, LocalCluster, port_lock
from neuronplace.local.fleet import KWOK_TAINT, KWOK_TOLERATION, build_node
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.names import INSTANCE_TYPE_LABEL, NEURONCORE_RESOURCE
from neuronplace.placement.resources import parse_quantity
from support.cluster import quick_node_pool
from support.waits import hold


@pytest.fixture(scope="module")
def namespace(autoscaler, autoscaled_cluster: LocalCluster) -> str:
    autoscaler.apply(quick_node_pool())
    name = f"autoscale-{uuid.uuid4().hex[:6]}"
    autoscaled_cluster.kubectl("create", "namespace", name)
    autoscaled_cluster.kubectl("-n", name, "wait", "--for=create", "serviceaccount/default", "--timeout=60s")
    return name


def _pod(name: str, cores: int, node_selector: dict[str, str] | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {
                        "requests": {NEURONCORE_RESOURCE: str(cores)},
                        "limits": {NEURONCORE_RESOURCE: str(cores)},
                    },
                }
            ],
            "tolerations": [dict(KWOK_TOLERATION)],
            "nodeSelector": dict(node_selector or {}),
        },
    }


def _names(cluster: LocalCluster, kind: str) -> list[str]:
    return [item["metadata"]["name"] for item in cluster.get_json(kind)["items"]]


def _wait(what: str, check, timeout: float, invariant=lambda: None):
    deadline = time.monotonic() + timeout
    while True:
        invariant()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:.0f} s")
        time.sleep(0.2)  # the poll interval: nothing here can be waited on but the next look


def test_a_pending_neuron_pod_gets_a_node_and_the_empty_node_is_removed(autoscaled_cluster, namespace, record_property):
    cluster = autoscaled_cluster
    assert _names(cluster, "nodes") == [], "the autoscaled cluster starts with no node"

    def at_most_one_claim() -> None:
        claims = _names(cluster, "nodeclaims")
        assert len(claims) <= 1, f"one pod of 8 cores needs one node; Karpenter claimed {claims}"

    started = time.monotonic()
    cluster.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(_pod("wants-8-cores", 8)))

    def running() -> dict | None:
        pod = cluster.get_json("-n", namespace, "pod", "wants-8-cores")
        return pod if pod["status"].get("phase") == "Running" else None

    pod = _wait("the pod Running on a new node", running, timeout=180, invariant=at_most_one_claim)
    to_running = time.monotonic() - started
    record_property("seconds_pending_to_running", round(to_running, 1))

    node = cluster.get_json("node", pod["spec"]["nodeName"])
    labels = node["metadata"]["labels"]
    assert labels[NODE_POOL_LABEL] == DEFAULT_NODE_POOL
    assert KWOK_TAINT in node["spec"]["taints"], "Karpenter's nodes carry the fleet's taint"
    inventory = inventory_from_node(node)
    assert inventory.problem is None, inventory.problem
    assert inventory.topology is not None and inventory.instance_type == labels[INSTANCE_TYPE_LABEL]
    assert inventory.cores >= 8
    # What kube-scheduler and the operator fit pods against is what a fleet node of the type has.
    fleet_node = build_node("n", labels[INSTANCE_TYPE_LABEL])
    assert {k: parse_quantity(v) for k, v in node["status"]["allocatable"].items()} == {
        k: parse_quantity(v) for k, v in fleet_node["status"]["allocatable"].items()
    }
    assert labels["topology.kubernetes.io/zone"].startswith("us-east-1")

    cluster.kubectl("-n", namespace, "delete", "pod", "wants-8-cores", "--wait=true", "--timeout=60s")
    emptied = time.monotonic()
    _wait(
        "the empty node removed",
        lambda: not _names(cluster, "nodes") and not _names(cluster, "nodeclaims"),
        timeout=180,
        invariant=at_most_one_claim,
    )
    to_removed = time.monotonic() - emptied
    record_property("seconds_empty_to_removed", round(to_removed, 1))
    print(
        f"Pending -> Running on a new {labels[INSTANCE_TYPE_LABEL]}: {to_running:.1f} s; empty -> removed: {to_removed:.1f} s"
    )


def test_a_pod_no_node_pool_can_satisfy_creates_no_node(autoscaler, autoscaled_cluster, namespace):
    cluster = autoscaled_cluster
    autoscaler.apply(quick_node_pool(instance_types=["inf2.24xlarge", "inf2.48xlarge"]))
    try:
        cluster.kubectl(
            "-n",
            namespace,
            "create",
            "-f",
            "-",
            input=json.dumps(_pod("wants-trn1", 8, {INSTANCE_TYPE_LABEL: "trn1.32xlarge"})),
        )

        def refused() -> bool:
            events = cluster.get_json("-n", namespace, "events", "--field-selector", "involvedObject.name=wants-trn1")
            return any(
                e.get("source", {}).get("component") == "karpenter" or e.get("reportingComponent") == "karpenter"
                for e in events["items"]
            )

        def no_claim() -> None:
            assert _names(cluster, "nodeclaims") == []

        _wait("Karpenter's event on the pod", refused, timeout=60, invariant=no_claim)
        # Karpenter looks at Pending pods once per batch window: three more windows, still nothing.
        hold(no_claim, 3 * BATCH_MAX_SECONDS + 1)
        assert _names(cluster, "nodes") == []
    finally:
        cluster.kubectl("-n", namespace, "delete", "pod", "wants-trn1", "--wait=true", check=False)
        autoscaler.apply(quick_node_pool())


def test_karpenter_stops_and_starts_again(autoscaler):
    pid = autoscaler.pid()
    assert pid is not None
    autoscaler.stop()
    assert autoscaler.pid() is None and not procs.is_alive(pid)
    again = autoscaler.start()
    assert again != pid and autoscaler.pid() == again
    with pytest.raises(AutoscalerError, match="already runs"):
        autoscaler.start()


def test_cli_up_with_the_autoscaler_and_no_fleet_then_down_leaves_nothing():
    name = f"np-cli-{uuid.uuid4().hex[:6]}"
    cluster = LocalCluster(name)
    cli = [sys.executable, "-m", "neuronplace.cli", "local"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        up = subprocess.run(
            [*cli, "up", "--name", name, "--fleet", "", "--autoscaler"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert up.returncode == 0, up.stderr
        assert "up with 0 Ready node(s)" in up.stdout and "autoscaler: Karpenter" in up.stdout
        pids = cluster.running_components()
        assert set(pids) == {*CONTROL_PLANE_COMPONENTS, COMPONENT}
        assert (cluster.logs_dir / f"{COMPONENT}.log").stat().st_size > 0
        assert cluster.get_json("nodes")["items"] == []
        assert [p["metadata"]["name"] for p in cluster.get_json("nodepools")["items"]] == [DEFAULT_NODE_POOL]
        ports = cluster.listening_ports()

        status = subprocess.run([*cli, "status"], capture_output=True, text=True, timeout=60, env=env)
        assert f"{name}: 5/5 components running" in status.stdout
        assert f"autoscaler: Karpenter (pid {pids[COMPONENT]}" in status.stdout

        with port_lock():  # no other cluster may take the freed ports before we look
            down = subprocess.run([*cli, "down", "--name", name], capture_output=True, text=True, timeout=120, env=env)
            assert down.returncode == 0, down.stderr
            assert not any(procs.is_alive(pid) for pid in pids.values()), "Karpenter outlived local down"
            # A freed port may be taken at once by another worker's cluster: only one still held by
            # this cluster's processes is a leak.
            assert not procs.ports_held_by(ports, name), f"ports of {name} still listening"
        assert not cluster.cluster_dir.exists()
    finally:
        cluster.down()
