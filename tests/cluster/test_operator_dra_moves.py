"""A DRA replica on a node with unhealthy Neuron hardware is moved by the DRA path: to another DRA
node (its pod and claim go, and the new pod gets a new claim kube-scheduler allocates there), and
never to a device-plugin node it cannot use (there it stays, ``Healthy`` False ``NoRoomToMove``)."""

from __future__ import annotations

import pytest
from test_operator_dra import SCHEDULER, claims_in
from test_operator_health import HBM, local_node

from neuronplace.placement.names import CONDITION_HEALTHY
from neuronplace.placement.resource_claims import allocated_chips, allocated_node
from support.builders import inference
from support.cluster import apply, condition, get_inference, live, placed_and_ready, pods_of

pytestmark = pytest.mark.cluster


def test_a_dra_replica_moves_off_an_unhealthy_dra_node_with_a_new_claim(
    local_cluster, operator, namespace, fleet, wait_for
):
    nodes = fleet("trn2.48xlarge=2:dra")
    body = inference("llm", cores=16, replicas=1, pool=nodes.pool, deviceManagement="DRA", **SCHEDULER)
    apply(local_cluster, namespace, body)
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "llm", 1), 30, "the replica ready")
    (pod,) = live(pods_of(local_cluster, namespace, "llm"))
    sick = pod["spec"]["nodeName"]
    (other,) = set(nodes) - {sick}
    old = claims_in(local_cluster, namespace)["llm-0"]
    assert allocated_node(old) == sick
    local_node(local_cluster, sick, "--condition", f"NeuronHealth=True:{HBM}")
    try:

        def moved():
            pods = live(pods_of(local_cluster, namespace, "llm"))
            claim = claims_in(local_cluster, namespace).get("llm-0")
            if not pods or pods[0]["spec"].get("nodeName") != other or claim is None:
                return None
            if claim["metadata"]["uid"] == old["metadata"]["uid"] or not allocated_chips(claim):
                return None
            return claim if placed_and_ready(local_cluster, namespace, "llm", 1) else None

        claim = wait_for(moved, 30, f"the replica on {other} with a new allocated claim")
        assert allocated_node(claim) == other and len(allocated_chips(claim)) == 4

        def healthy():
            # True once no replica is on an unhealthy node, or absent where no status write said
            # False before the replica had moved (a wait for True once timed out here).
            found = condition(get_inference(local_cluster, namespace, "llm"), CONDITION_HEALTHY)
            return found.get("status") != "False"

        wait_for(healthy, 10, "Healthy not False")
    finally:
        local_node(local_cluster, sick, "--clear-condition", "NeuronHealth")


def test_a_dra_replica_stays_when_only_a_device_plugin_node_has_room(
    local_cluster, operator, namespace, fleet, wait_for
):
    plugin_node, dra_node = fleet("inf2.48xlarge=1,trn2.48xlarge=1:dra")
    body = inference("llm", cores=16, replicas=1, pool=fleet.pool, deviceManagement="DRA", **SCHEDULER)
    apply(local_cluster, namespace, body)
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "llm", 1), 30, "the replica ready")
    (pod,) = live(pods_of(local_cluster, namespace, "llm"))
    assert pod["spec"]["nodeName"] == dra_node
    local_node(local_cluster, dra_node, "--condition", f"NeuronHealth=True:{HBM}")
    try:

        def says_why():
            healthy = condition(get_inference(local_cluster, namespace, "llm"), CONDITION_HEALTHY)
            return healthy.get("reason") == "NoRoomToMove" and healthy

        healthy = wait_for(says_why, 15, "Healthy=False NoRoomToMove")
        assert healthy["status"] == "False" and "replica 0 on" in healthy["message"], healthy
        (still,) = pods_of(local_cluster, namespace, "llm")
        assert still["metadata"]["uid"] == pod["metadata"]["uid"] and not still["metadata"].get("deletionTimestamp")
        assert still["spec"]["nodeName"] != plugin_node
    finally:
        local_node(local_cluster, dra_node, "--clear-condition", "NeuronHealth")
