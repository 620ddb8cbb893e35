"""Volumes on the real control plane: a replica goes where its claim's volume can be used, a claim
that waits for its first consumer is bound by kube-scheduler with the pod (Scheduler binding), and
Direct binding refuses such a claim instead of making a pod that could never start.

kwok mounts nothing, so a pod Runs whatever its volumes; what is real here is the binding: the
PersistentVolume controller of kube-controller-manager binds Immediate claims, and kube-scheduler's
volume binding binds WaitForFirstConsumer claims when it binds the pinned pod. Each resource names
its binding mode itself, so these run the same under either session ``--binding``. PersistentVolumes
and StorageClasses are cluster-wide: each test names its own after its namespace and deletes them.
"""

from __future__ import annotations

import json
import re

import pytest

from neuronplace.placement.names import (
    BINDING_DIRECT,
    BINDING_SCHEDULER,
    CONDITION_PLACED,
    REASON_UNSCHEDULABLE,
    REASON_VOLUME_NEEDS_SCHEDULER,
)
from support.builders import inference, pvc
from support.cluster import apply, assert_no_shared_cores, condition, get_inference, placed_and_ready, pods_of

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster_objects(local_cluster):
    """``cluster_objects(*bodies)``: apply cluster-scoped objects (volumes, classes), deleted after the test."""
    created: list[str] = []

    def make(*bodies: dict) -> None:
        local_cluster.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(bodies)})
        )
        created.extend(f"{body['kind'].lower()}/{body['metadata']['name']}" for body in bodies)

    yield make
    for name in reversed(created):
        local_cluster.kubectl("delete", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def operator_admitting_ephemeral(operator_factory):
    """An operator whose pod-template policy admits generic ephemeral volumes (refused by default),
    in place of the session's operator for one test."""
    return operator_factory(
        log_name="neuronplace-operator-ephemeral.log", env={"NEURONPLACE_ALLOW_VOLUME_TYPES": "ephemeral"}
    )


def local_class(name: str) -> dict:
    """Pre-made local disks: no provisioner, bound when the first pod using the claim is scheduled."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer",
    }


def local_volume(name: str, node: str, storage_class: str = "", size: str = "10Gi") -> dict:
    """A local disk on ``node`` (node affinity on the hostname label, as local volumes are made)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": storage_class,
            "local": {"path": f"/mnt/disks/{name}"},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}
                    ]
                }
            },
        },
    }


def using(resource: dict, claim_name: str) -> dict:
    pod_spec = resource["spec"]["template"]["spec"]
    pod_spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim_name}}]
    pod_spec["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    return resource


def claim_state(cluster, namespace: str, name: str) -> tuple[str | None, str | None]:
    body = json.loads(cluster.kubectl("get", "pvc", name, "-n", namespace, "-o", "json").stdout)
    return body.get("status", {}).get("phase"), body["spec"].get("volumeName")


def placed_on(cluster, namespace: str, name: str) -> set[str]:
    """The nodes named by the resource's Placed events: every node a replica pod was ever made for."""
    listed = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name},reason=Placed", "-o", "json"
    ).stdout
    return {node for event in json.loads(listed)["items"] for node in re.findall(r" on (\S+) cores ", event["message"])}


def placed_condition(cluster, namespace: str, name: str, reason: str) -> dict | None:
    placed = condition(get_inference(cluster, namespace, name), CONDITION_PLACED)
    return placed if placed.get("reason") == reason else None


def test_a_claim_waiting_for_its_first_consumer_is_bound_with_the_pod_on_the_volumes_node(
    local_cluster, operator, namespace, fleet, wait_for, cluster_objects
):
    nodes = fleet({"inf2.48xlarge": 2})
    # BinPack on two empty nodes picks the first by name: the volume sits on the other one.
    disk_node = sorted(nodes)[1]
    cluster_objects(local_class(namespace), local_volume(f"{namespace}-disk", disk_node, storage_class=namespace))
    apply(local_cluster, namespace, pvc("data", namespace=None, storage_class=namespace))
    resource = using(inference("wffc", cores=2, pool=nodes.pool, binding=BINDING_SCHEDULER), "data")
    apply(local_cluster, namespace, resource)

    wait_for(lambda: placed_and_ready(local_cluster, namespace, "wffc", 1), 60, "the replica placed and ready")
    (pod,) = pods_of(local_cluster, namespace, "wffc")
    assert pod["spec"]["nodeName"] == disk_node
    # Straight there: no pod was ever pinned to a node kube-scheduler would have found unusable.
    assert placed_on(local_cluster, namespace, "wffc") == {disk_node}
    assert claim_state(local_cluster, namespace, "data") == ("Bound", f"{namespace}-disk")
    assert_no_shared_cores(local_cluster)


def test_replicas_sharing_a_claim_that_waits_for_its_first_consumer_all_go_where_it_is_bound(
    local_cluster, operator, namespace, fleet, wait_for, cluster_objects
):
    nodes = fleet({"inf2.48xlarge": 2})
    # A free volume on each node, and Spread: without following the first replica, the second
    # would go to the other node, where the claim (bound by then to the first node's volume) can
    # never be used.
    cluster_objects(
        local_class(namespace),
        *(local_volume(f"{namespace}-disk-{i}", node, storage_class=namespace) for i, node in enumerate(sorted(nodes))),
    )
    apply(local_cluster, namespace, pvc("data", namespace=None, storage_class=namespace))
    resource = inference("shared", cores=2, replicas=2, pool=nodes.pool, strategy="Spread", binding=BINDING_SCHEDULER)
    apply(local_cluster, namespace, using(resource, "data"))

    wait_for(lambda: placed_and_ready(local_cluster, namespace, "shared", 2), 60, "both replicas placed and ready")
    (where,) = {pod["spec"]["nodeName"] for pod in pods_of(local_cluster, namespace, "shared")}
    phase, volume = claim_state(local_cluster, namespace, "data")
    assert phase == "Bound" and volume == f"{namespace}-disk-{sorted(nodes).index(where)}"
    assert placed_on(local_cluster, namespace, "shared") == {where}


@pytest.mark.parametrize("binding", [BINDING_SCHEDULER, BINDING_DIRECT])
def test_a_claim_bound_to_a_local_volume_keeps_every_replica_on_that_volumes_node(
    local_cluster, operator, namespace, fleet, wait_for, cluster_objects, binding
):
    nodes = fleet({"inf2.48xlarge": 2})
    disk_node = sorted(nodes)[1]
    resource = using(inference("bound", cores=2, replicas=2, pool=nodes.pool, binding=binding), "data")
    apply(local_cluster, namespace, resource)
    # No claim yet: the replica waits as kube-scheduler would, and no pod is made.
    waiting = wait_for(
        lambda: placed_condition(local_cluster, namespace, "bound", REASON_UNSCHEDULABLE), 60, "waiting for the claim"
    )
    assert 'persistentvolumeclaim "data" not found' in waiting["message"], waiting
    assert not pods_of(local_cluster, namespace, "bound")

    # A class-less claim and volume: the volume controller binds them at once, no pod needed.
    cluster_objects(local_volume(f"{namespace}-disk", disk_node))
    apply(local_cluster, namespace, pvc("data", namespace=None, storage_class=""))
    wait_for(lambda: claim_state(local_cluster, namespace, "data")[0] == "Bound", 60, "the claim bound")

    # The claim's events wake the resource: both replicas go to the volume's node, not the emptier one.
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "bound", 2), 60, "both replicas placed and ready")
    assert {pod["spec"]["nodeName"] for pod in pods_of(local_cluster, namespace, "bound")} == {disk_node}
    assert placed_on(local_cluster, namespace, "bound") == {disk_node}
    assert_no_shared_cores(local_cluster)


def test_direct_binding_refuses_a_claim_only_the_scheduler_can_bind_until_the_binding_changes(
    local_cluster, operator, namespace, fleet, wait_for, cluster_objects
):
    nodes = fleet({"inf2.48xlarge": 2})
    disk_node = sorted(nodes)[1]
    cluster_objects(local_class(namespace), local_volume(f"{namespace}-disk", disk_node, storage_class=namespace))
    apply(local_cluster, namespace, pvc("data", namespace=None, storage_class=namespace))
    resource = using(inference("direct", cores=2, pool=nodes.pool, binding=BINDING_DIRECT), "data")
    apply(local_cluster, namespace, resource)

    refused = wait_for(
        lambda: placed_condition(local_cluster, namespace, "direct", REASON_VOLUME_NEEDS_SCHEDULER),
        60,
        "refused for Direct binding",
    )
    assert refused["status"] == "False"
    assert "WaitForFirstConsumer" in refused["message"] and "binding Scheduler" in refused["message"], refused
    assert not pods_of(local_cluster, namespace, "direct")
    assert claim_state(local_cluster, namespace, "data") == ("Pending", None)

    resource["spec"]["placement"]["binding"] = BINDING_SCHEDULER
    apply(local_cluster, namespace, resource)
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "direct", 1), 60, "placed once Scheduler binds")
    (pod,) = pods_of(local_cluster, namespace, "direct")
    assert pod["spec"]["nodeName"] == disk_node
    assert placed_on(local_cluster, namespace, "direct") == {disk_node}
    assert claim_state(local_cluster, namespace, "data") == ("Bound", f"{namespace}-disk")


def test_a_generic_ephemeral_volume_goes_where_a_local_volume_can_take_its_claim(
    local_cluster, operator_admitting_ephemeral, namespace, fleet, wait_for, cluster_objects
):
    nodes = fleet({"inf2.48xlarge": 2})
    disk_node = sorted(nodes)[1]
    cluster_objects(local_class(namespace), local_volume(f"{namespace}-disk", disk_node, storage_class=namespace))
    resource = inference("scratch", cores=2, pool=nodes.pool, binding=BINDING_SCHEDULER)
    template = {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": namespace,
        "resources": {"requests": {"storage": "1Gi"}},
    }
    resource["spec"]["template"]["spec"]["volumes"] = [
        {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": template}}}
    ]
    apply(local_cluster, namespace, resource)

    wait_for(lambda: placed_and_ready(local_cluster, namespace, "scratch", 1), 60, "the replica placed and ready")
    (pod,) = pods_of(local_cluster, namespace, "scratch")
    assert pod["spec"]["nodeName"] == disk_node
    # kube-controller-manager made the pod's claim; kube-scheduler bound it to the volume on that node.
    assert claim_state(local_cluster, namespace, "scratch-0-scratch") == ("Bound", f"{namespace}-disk")
    assert placed_on(local_cluster, namespace, "scratch") == {disk_node}
