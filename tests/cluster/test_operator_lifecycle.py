"""Keeping resources true on the real control plane: scale, pod and node loss, template rollouts,
deletion, and other controllers' annotations left alone."""

from __future__ import annotations

import json
import threading

import pytest

from support.builders import inference
from support.cluster import (
    TEST_NODE_GRACE_SECONDS,
    apply,
    assert_no_shared_cores,
    assert_pod_consistent,
    get_inference,
    live,
    placed_and_ready,
    pods_of,
    running_ready,
)
from support.waits import hold

pytestmark = [pytest.mark.cluster, pytest.mark.both_bindings]


def cores_by_pod(cluster, namespace, name) -> dict[str, tuple[str, str, str]]:
    return {
        p["metadata"]["name"]: (
            p["spec"]["nodeName"],
            p["metadata"]["annotations"]["neuronplace.io/cores"],
            p["metadata"]["uid"],
        )
        for p in live(pods_of(cluster, namespace, name))
    }


def test_kubectl_scale_up_and_down(local_cluster, operator, namespace, fleet, wait_for):
    nodes = fleet({"inf2.48xlarge": 1})
    apply(local_cluster, namespace, inference("svc", cores=2, replicas=1, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "svc", 1), 60, "1 replica")

    local_cluster.kubectl("scale", "ninf", "svc", "-n", namespace, "--replicas=5")
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "svc", 5), 60, "5 replicas")
    before = cores_by_pod(local_cluster, namespace, "svc")
    assert sorted(before) == [f"svc-{i}" for i in range(5)]
    assert_no_shared_cores(local_cluster)
    scale = json.loads(
        local_cluster.kubectl("get", "ninf", "svc", "-n", namespace, "--subresource=scale", "-o", "json").stdout
    )
    assert scale["spec"]["replicas"] == 5 and scale["status"]["replicas"] == 5
    assert scale["status"]["selector"] == "neuronplace.io/inference=svc"

    local_cluster.kubectl("scale", "ninf", "svc", "-n", namespace, "--replicas=2")
    wait_for(
        lambda: (
            placed_and_ready(local_cluster, namespace, "svc", 2) and len(pods_of(local_cluster, namespace, "svc")) == 2
        ),
        60,
        "2 replicas",
    )
    after = cores_by_pod(local_cluster, namespace, "svc")
    assert after == {name: before[name] for name in ("svc-0", "svc-1")}, "scale-down touched the kept replicas"

    local_cluster.kubectl("scale", "ninf", "svc", "-n", namespace, "--replicas=0")
    wait_for(lambda: not pods_of(local_cluster, namespace, "svc"), 60, "no pods at replicas=0")
    resource = wait_for(lambda: placed_and_ready(local_cluster, namespace, "svc", 0), 30, "status at 0")
    assert resource["status"]["placements"] == []
    # Every core is free again: one replica can take the whole node.
    apply(local_cluster, namespace, inference("whole", cores=24, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "whole", 1), 60, "the whole node")


def test_deleted_pod_comes_back_on_the_same_cores(local_cluster, operator, namespace, fleet, wait_for):
    nodes = fleet({"inf2.48xlarge": 1})
    apply(local_cluster, namespace, inference("svc", cores=4, replicas=3, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "svc", 3), 60, "3 replicas")
    before = cores_by_pod(local_cluster, namespace, "svc")
    local_cluster.kubectl("delete", "pod", "svc-1", "-n", namespace, "--wait=false")

    def recreated():
        now = cores_by_pod(local_cluster, namespace, "svc")
        return (
            "svc-1" in now
            and now["svc-1"][2] != before["svc-1"][2]
            and placed_and_ready(local_cluster, namespace, "svc", 3)
            and now
        )

    now = wait_for(recreated, 60, "svc-1 recreated")
    assert now["svc-1"][:2] == before["svc-1"][:2], "the recreated replica did not get its cores back"
    assert {k: v for k, v in now.items() if k != "svc-1"} == {k: v for k, v in before.items() if k != "svc-1"}


def test_replicas_of_a_deleted_node_are_placed_elsewhere(local_cluster, operator, namespace, fleet, wait_for):
    nodes = fleet({"inf2.48xlarge": 2})
    apply(local_cluster, namespace, inference("svc", cores=4, replicas=2, strategy="Spread", pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "svc", 2), 60, "2 replicas")
    before = cores_by_pod(local_cluster, namespace, "svc")
    assert len({node for node, _, _ in before.values()}) == 2
    lost = before["svc-0"][0]
    local_cluster.delete_node(lost)

    def moved():
        now = cores_by_pod(local_cluster, namespace, "svc")
        return (
            len(now) == 2
            and all(node != lost for node, _, _ in now.values())
            and placed_and_ready(local_cluster, namespace, "svc", 2)
            and now
        )

    now = wait_for(moved, 90, "svc-0 re-placed off the deleted node")
    assert now["svc-1"] == before["svc-1"]
    assert_no_shared_cores(local_cluster)
    reasons = local_cluster.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=svc",
        "-o",
        "jsonpath={.items[*].reason}",
    ).stdout.split()
    assert "Placed" in reasons


def test_replicas_of_a_not_ready_node_move_after_the_grace_period(local_cluster, operator, namespace, fleet, wait_for):
    nodes = fleet({"inf2.48xlarge": 2})
    apply(local_cluster, namespace, inference("svc", cores=2, replicas=2, strategy="Spread", pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "svc", 2), 60, "2 replicas")
    before = cores_by_pod(local_cluster, namespace, "svc")
    sick = before["svc-1"][0]
    local_cluster.set_node_ready(sick, False)
    try:
        # Within the grace period a NotReady node keeps its replicas (a blip must not reshuffle
        # cores): for half the grace, at every look, nothing moved.
        hold(
            lambda: cores_by_pod(local_cluster, namespace, "svc") == before or pytest.fail("moved within the grace"),
            TEST_NODE_GRACE_SECONDS / 2,
        )

        def moved():
            now = cores_by_pod(local_cluster, namespace, "svc")
            return (
                len(now) == 2
                and all(node != sick for node, _, _ in now.values())
                and placed_and_ready(local_cluster, namespace, "svc", 2)
                and now
            )

        now = wait_for(moved, 90, "svc-1 re-placed off the NotReady node")
        assert now["svc-0"] == before["svc-0"]
        reasons = local_cluster.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            "involvedObject.name=svc",
            "-o",
            "jsonpath={.items[*].reason}",
        ).stdout.split()
        assert "NodeNotReady" in reasons
    finally:
        local_cluster.set_node_ready(sick, True)


def test_template_change_rolls_out_one_replica_at_a_time(local_cluster, operator, namespace, fleet, wait_for):
    nodes = fleet({"inf2.48xlarge": 1})
    resource = inference("svc", cores=2, replicas=3, pool=nodes.pool, image="model:1")
    apply(local_cluster, namespace, resource)
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "svc", 3), 60, "3 replicas")
    before = cores_by_pod(local_cluster, namespace, "svc")

    observations: list[int] = []
    stop = threading.Event()

    def watch_availability():
        while not stop.is_set():
            pods = pods_of(local_cluster, namespace, "svc")
            observations.append(sum(running_ready(p) for p in pods))
            stop.wait(0.05)  # sampling availability until the rollout is over

    watcher = threading.Thread(target=watch_availability, daemon=True)
    watcher.start()
    try:
        resource["spec"]["template"]["spec"]["containers"][0]["image"] = "model:2"
        apply(local_cluster, namespace, resource)

        def rolled():
            pods = live(pods_of(local_cluster, namespace, "svc"))
            return (
                len(pods) == 3
                and all(p["spec"]["containers"][0]["image"] == "model:2" for p in pods)
                and placed_and_ready(local_cluster, namespace, "svc", 3)
            )

        wait_for(rolled, 120, "all replicas on model:2")
    finally:
        stop.set()
        watcher.join()
    assert min(observations) >= 2, f"more than one replica was down at once: {observations}"
    after = cores_by_pod(local_cluster, namespace, "svc")
    assert {k: v[:2] for k, v in after.items()} == {k: v[:2] for k, v in before.items()}, "cores moved in a rollout"
    assert all(after[k][2] != before[k][2] for k in after), "a replica was not replaced"
    reasons = local_cluster.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=svc,reason=RollingUpdate",
        "-o",
        "name",
    ).stdout.split()
    assert len(reasons) == 3


def test_other_controllers_annotations_survive(local_cluster, operator, namespace, fleet, wait_for):
    """Pain point 5: the stock extender's bind dropped other controllers' annotations (OVN)."""
    nodes = fleet({"inf2.48xlarge": 1})
    resource = inference("svc", cores=2, replicas=1, pool=nodes.pool)
    apply(local_cluster, namespace, resource)
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "svc", 1), 60, "1 replica")
    local_cluster.kubectl("annotate", "pod", "svc-0", "-n", namespace, 'k8s.ovn.org/pod-networks={"default":{}}')
    local_cluster.kubectl("scale", "ninf", "svc", "-n", namespace, "--replicas=2")
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "svc", 2), 60, "2 replicas")
    pod = pods_of(local_cluster, namespace, "svc")[0]
    assert pod["metadata"]["annotations"]["k8s.ovn.org/pod-networks"] == '{"default":{}}'
    assert_pod_consistent(pod, cores_per_chip=2, processes=1)


def test_deleting_the_resource_removes_its_pods_and_frees_the_cores(
    local_cluster, operator, namespace, fleet, wait_for
):
    nodes = fleet({"inf2.48xlarge": 1})
    apply(local_cluster, namespace, inference("first", cores=8, replicas=3, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "first", 3), 60, "first placed")
    # second needs every core first holds. Its replicas are first's shape: one placed while first's
    # pods are still terminating must not fragment the node (12-core replicas could: the first at
    # 8-19 while 0-7 terminate leaves 0-7 + 20-23, and the second never fits; see placement notes).
    apply(local_cluster, namespace, inference("second", cores=8, replicas=3, pool=nodes.pool))
    waiting = wait_for(
        lambda: get_inference(local_cluster, namespace, "second").get("status", {}).get("conditions"),
        30,
        "second's status",
    )
    assert any(c["type"] == "Placed" and c["reason"] == "Unschedulable" for c in waiting)
    local_cluster.kubectl("delete", "ninf", "first", "-n", namespace, "--wait=false")
    wait_for(lambda: not pods_of(local_cluster, namespace, "first"), 60, "first's pods garbage-collected")
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "second", 3), 60, "second placed in the freed room")
    assert_no_shared_cores(local_cluster)


def test_cores_held_by_pods_we_did_not_place_are_left_alone(local_cluster, operator, namespace, fleet, wait_for):
    """A pod someone else bound with Neuron cores (here with the AWS extender's
    annotation) keeps them; the operator places around it."""
    nodes = fleet({"inf2.48xlarge": 1})
    foreign = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "legacy", "annotations": {"AWS_NEURON_IDS": "0,1,2,3"}},
        "spec": {
            "nodeName": nodes[0],
            "containers": [
                {"name": "c", "image": "legacy:1", "resources": {"limits": {"aws.amazon.com/neuroncore": "4"}}}
            ],
        },
    }
    apply(local_cluster, namespace, foreign)
    wait_for(
        lambda: (
            local_cluster.kubectl("get", "pod", "legacy", "-n", namespace, "-o", "jsonpath={.status.phase}").stdout
            == "Running"
        ),
        60,
        "legacy running",
    )
    apply(local_cluster, namespace, inference("svc", cores=4, replicas=5, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "svc", 5), 60, "svc placed around legacy")
    held = assert_no_shared_cores(local_cluster)[nodes[0]]
    assert not {0, 1, 2, 3} & set(held), f"the operator handed out the legacy pod's cores: {held}"
    # The node is now full (4 + 5 × 4 = 24): a sixth replica waits.
    local_cluster.kubectl("scale", "ninf", "svc", "-n", namespace, "--replicas=6")
    reason = wait_for(
        lambda: (
            get_inference(local_cluster, namespace, "svc").get("status", {}).get("conditions")
            and [
                c
                for c in get_inference(local_cluster, namespace, "svc")["status"]["conditions"]
                if c["type"] == "Placed" and c["reason"] == "Unschedulable"
            ]
        ),
        30,
        "replica 5 unschedulable",
    )
    assert "replica 5" in reason[0]["message"]
