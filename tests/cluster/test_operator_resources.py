"""Resource fit on the real control plane: replicas whose pods ask for most of a node's cpu (or
memory) never share a node beyond its allocatable, watched at every event while it happens; the
replica with no room left says which resource is short, and goes to a node added later.

kwok has no kubelet admission, so an overfilled node would look fine here: the invariant monitor
(``neuronplace.local.reliability.monitor``), which sums every live pod's requests per node at each pod and node
event, is what sees it. Both binding modes run: in Scheduler mode kube-scheduler would refuse an
overfilled node too, so a replica placed there would bounce; none may be created there at all.
"""

from __future__ import annotations

import pytest

from neuronplace.local.fleet import POOL_LABEL
from neuronplace.local.reliability.monitor import monitor_for
from neuronplace.placement.names import CONDITION_PLACED, REASON_UNSCHEDULABLE
from neuronplace.placement.resources import node_allocatable, pod_requests
from support.builders import inference
from support.cluster import apply, condition, get_inference, live, pods_of

pytestmark = pytest.mark.cluster


def hungry(name: str, pool: str, binding: str, requests: dict) -> dict:
    """Three replicas of 2 cores whose pods each request ``requests``."""
    resource = inference(name, cores=2, replicas=3, pool=pool, binding=binding)
    resource["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": requests}
    return resource


def waiting_for_room(cluster, namespace: str, name: str, resource: str):
    """The resource once two replicas run and the third is Unschedulable for want of ``resource``."""
    current = get_inference(cluster, namespace, name)
    placed = condition(current, CONDITION_PLACED)
    running = [p for p in live(pods_of(cluster, namespace, name)) if p["spec"].get("nodeName")]
    if len(running) == 2 and placed.get("reason") == REASON_UNSCHEDULABLE and resource in placed.get("message", ""):
        return current
    return None


def requested_per_node(cluster, pool: str) -> dict[str, tuple[dict, dict]]:
    """Node → (what its live pods request together, its allocatable), read back from the API."""
    nodes = cluster.get_json("nodes", "-l", f"{POOL_LABEL}={pool}")["items"]
    pods = cluster.get_json("pods", "-A")["items"]
    out = {}
    for node in nodes:
        name = node["metadata"]["name"]
        total: dict[str, int] = {}
        for pod in pods:
            if pod["spec"].get("nodeName") == name and pod["status"].get("phase") not in ("Succeeded", "Failed"):
                for key, value in pod_requests(pod["spec"]).items():
                    total[key] = total.get(key, 0) + value
        out[name] = (total, node_allocatable(node))
    return out


@pytest.mark.parametrize(
    ("resource", "requests", "binding"),
    [
        ("cpu", {"cpu": "150"}, "Scheduler"),
        ("cpu", {"cpu": "150"}, "Direct"),
        ("memory", {"memory": "500Gi"}, "Scheduler"),
    ],
)
def test_replicas_never_overfill_a_node_and_the_short_resource_is_named(
    local_cluster, operator, namespace, fleet, wait_for, resource, requests, binding
):
    nodes = fleet({"inf2.48xlarge": 2})  # 192 CPUs (191450m allocatable), 768Gi each: room for one
    monitor = monitor_for(local_cluster.kubeconfig, node_selector=f"{POOL_LABEL}={nodes.pool}", keep=1000)
    monitor.start()
    try:
        apply(local_cluster, namespace, hungry("hungry", nodes.pool, binding, requests))
        waiting = wait_for(
            lambda: waiting_for_room(local_cluster, namespace, "hungry", resource),
            90,
            f"two replicas running and the third Unschedulable for {resource}",
        )
        message = condition(waiting, CONDITION_PLACED)["message"]
        assert f"2 nodes with insufficient {resource}" in message, message
        assert "requested 150," in message or "requested 500Gi," in message, message
        pods = pods_of(local_cluster, namespace, "hungry")
        assert len(pods) == 2, "no pod may be created for the replica that fits nowhere"
        assert len({p["spec"]["nodeName"] for p in pods}) == 2, "the two replicas share a node"

        (added,) = fleet({"inf2.48xlarge": 1})  # room appears: the waiting replica goes there
        wait_for(
            lambda: (
                len([p for p in live(pods_of(local_cluster, namespace, "hungry")) if p["spec"].get("nodeName")]) == 3
            ),
            90,
            "the third replica on the added node",
        )
        on = {p["spec"]["nodeName"] for p in live(pods_of(local_cluster, namespace, "hungry"))}
        assert on == {*nodes, added}, on
    finally:
        report = monitor.stop()
    overfilled = [str(seen.violation) for seen in report.first if seen.violation.invariant == "node-resources"]
    assert overfilled == [], overfilled
    assert report.events > 0, "the monitor saw no events: it watched nothing"
    for node, (total, allocatable) in requested_per_node(local_cluster, nodes.pool).items():
        for name, value in total.items():
            assert value <= allocatable.get(name, 0), f"{node}: {name} {value} > {allocatable.get(name, 0)}"
