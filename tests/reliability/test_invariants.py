"""The invariant checker catches each kind of broken state (pure; no cluster).

A healthy snapshot is built with the operator's own pure parts (placement engine + build_pod +
build_status); each test then breaks one thing and asserts the checker names it. Without these, a
checker that never reports anything would make every fault test pass.
"""

from __future__ import annotations

import copy
import functools

from neuronplace.local import manifests
from neuronplace.local.fleet import build_node
from neuronplace.local.reliability.invariants import Snapshot, Violation, check, operator_health
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.pods import build_pod
from neuronplace.placement.request import ReplicaPlacement, placement_request
from neuronplace.placement.resources import node_allocatable
from neuronplace.placement.search import place_one
from neuronplace.placement.status import Problem, build_status

# The caller's clock: placement reads none, it is given the time.
NOW = "2026-11-28T10:00:00Z"
NOW_NS = 1_795_860_000_000_000_000

TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


# ml/bert: a model and a sidecar, tolerating the kwok nodes.
SIDECAR = {"name": "sidecar", "image": "s:1"}
inference = functools.partial(
    manifests.inference,
    "bert",
    namespace="ml",
    uid="uid-bert",
    generation=1,
    replicas=2,
    cores=4,
    processes=2,
    tolerations=(TOLERATION,),
    containers=({"name": "model", "image": "m:1"}, SIDECAR),
)


def ready(pod):
    pod = copy.deepcopy(pod)
    pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    return pod


def healthy(numbering="device-local", nodes=("n-0",), instance="inf2.48xlarge", inferences=None):
    node_objs = [build_node(n, instance) for n in nodes]
    for node in node_objs:
        node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    fleet = [inventory_from_node(n) for n in node_objs]
    ledger = Ledger()
    infs = inferences or [inference()]
    pods = []
    for inf in infs:
        request = placement_request(inf, numbering)
        for ordinal in range(inf["spec"]["replicas"]):
            result = place_one(request, ordinal, fleet, ledger, f"ml/{inf['metadata']['name']}-{ordinal}")
            if isinstance(result, ReplicaPlacement):
                pods.append(ready(build_pod(inf, result, numbering=numbering, now_ns=NOW_NS)))
    for inf in infs:
        own = [p for p in pods if p["metadata"]["ownerReferences"][0]["uid"] == inf["metadata"]["uid"]]
        missing = len(own) < inf["spec"]["replicas"]
        problem = Problem("Unschedulable", "needs more cores") if missing else None
        inf["status"] = build_status(inf, own, problem=problem, now=NOW)
    return Snapshot(pods, node_objs, infs, ("ml",))


def kinds(violations: list[Violation]) -> set[str]:
    return {v.invariant for v in violations}


def test_a_healthy_snapshot_has_no_violations_in_either_numbering():
    assert check(healthy("device-local")) == []
    assert check(healthy("global")) == []


def test_two_pods_on_the_same_core_are_caught():
    snap = healthy()
    stolen = snap.pods[0]["metadata"]["annotations"]["neuronplace.io/cores"]
    second = snap.pods[1]
    second["metadata"]["annotations"]["neuronplace.io/cores"] = stolen
    found = check(snap)
    assert any(v.invariant == "exclusive-cores" and "held by both" in v.detail for v in found), found


def test_a_foreign_pod_overlapping_or_overfilling_a_node_is_caught():
    snap = healthy(instance="inf2.xlarge", inferences=[inference(replicas=1, cores=2, processes=1)])
    foreign = {
        "metadata": {"name": "other", "namespace": "x", "annotations": {"AWS_NEURON_IDS": "1"}},
        "spec": {
            "nodeName": "n-0",
            "containers": [{"name": "c", "resources": {"requests": {"aws.amazon.com/neuroncore": "1"}}}],
        },
        "status": {"phase": "Running"},
    }
    found = check(Snapshot([*snap.pods, foreign], snap.nodes, snap.inferences, ("ml",)))
    assert any("core 1" in v.subject and "x/other" in v.detail for v in found), found
    del foreign["metadata"]["annotations"]
    found = check(Snapshot([*snap.pods, foreign], snap.nodes, snap.inferences, ("ml",)))
    assert any(v.invariant == "exclusive-cores" and "hold 3 cores but the node has 2" in v.detail for v in found), found


def test_cores_are_counted_as_the_ledger_holds_them():
    """A hand-made pod with our label and a whole node's range, asking nothing, holds nothing; a
    foreign pod listing fewer ids than it asks holds what it asks."""
    snap = healthy(inferences=[inference(replicas=1, cores=4, processes=1)])  # 24 cores, 4 held
    fake = {
        "metadata": {
            "name": "fake",
            "namespace": "x",
            "labels": {"neuronplace.io/inference": "bert"},
            "annotations": {"neuronplace.io/cores": "0-23"},
        },
        "spec": {"nodeName": "n-0", "containers": [{"name": "c"}]},
        "status": {"phase": "Running"},
    }
    found = check(Snapshot([*snap.pods, fake], snap.nodes, snap.inferences, ("ml",)))
    assert not [v for v in found if v.invariant == "exclusive-cores"], found
    short = {
        "metadata": {"name": "short", "namespace": "x", "annotations": {"AWS_NEURON_IDS": "23"}},
        "spec": {
            "nodeName": "n-0",
            "containers": [{"name": "c", "resources": {"requests": {"aws.amazon.com/neuroncore": "21"}}}],
        },
        "status": {"phase": "Running"},
    }
    found = check(Snapshot([*snap.pods, short], snap.nodes, snap.inferences, ("ml",)))
    assert any(v.invariant == "exclusive-cores" and "hold 25 cores but the node has 24" in v.detail for v in found)


def test_pods_requesting_more_cpu_or_memory_than_a_node_has_are_caught():
    snap = healthy()
    for pod in snap.pods:  # two replicas of 150 CPU and 400Gi each on one 192-CPU, 768Gi node
        pod["spec"]["nodeName"] = "n-0"
        pod["spec"]["containers"][0]["resources"]["requests"].update({"cpu": "150", "memory": "400Gi"})
    found = [v for v in check(snap) if v.invariant == "node-resources"]
    allocatable = node_allocatable(snap.nodes[0])
    assert [v.detail for v in found] == [
        f"live pods request 300000 cpu but {allocatable['cpu']} is allocatable",
        f"live pods request {800 * 2**30} memory but {allocatable['memory']} is allocatable",
    ], found
    snap.pods[1]["status"]["phase"] = "Failed"  # a rejected pod runs nothing
    assert [v for v in check(snap) if v.invariant == "node-resources"] == []


def test_env_annotation_and_device_plugin_ids_must_agree():
    snap = healthy()
    pod = snap.pods[0]
    pod["metadata"]["annotations"]["AWS_NEURON_IDS"] = "9,10,11,12"
    assert any("AWS_NEURON_IDS" in v.detail for v in check(snap))

    snap = healthy()
    container = snap.pods[1]["spec"]["containers"][1]
    for entry in container["env"]:
        if entry["name"] == "NEURON_RT_VISIBLE_CORES":
            entry["value"] = "0-1" if entry["value"] != "0-1" else "2-3"
    assert any(v.invariant == "pod-consistency" and "NEURON_RT_VISIBLE_CORES" in v.detail for v in check(snap))

    snap = healthy()
    first = snap.pods[0]["spec"]["containers"][0]
    first["env"] = [
        e if e["name"] != "NEURONPLACE_NODE_CORES" else {"name": e["name"], "value": "20-21"} for e in first["env"]
    ]
    assert "pod-consistency" in kinds(check(snap))

    snap = healthy()
    snap.pods[0]["spec"]["containers"][0]["resources"]["limits"]["aws.amazon.com/neuroncore"] = "3"
    assert any("requests/limits" in v.detail for v in check(snap))


def test_sidecar_with_neuron_cores_is_caught():
    snap = healthy()
    sidecar = snap.pods[0]["spec"]["containers"][-1]
    sidecar["resources"] = {"requests": {"aws.amazon.com/neuroncore": "1"}}
    assert any("without NEURON_RT_VISIBLE_CORES" in v.detail for v in check(snap))


def test_orphaned_pods_are_caught():
    snap = healthy()
    found = check(Snapshot(snap.pods, snap.nodes, [], ("ml",)))
    assert "no-orphans" in kinds(found)
    recreated = copy.deepcopy(snap.inferences[0])
    recreated["metadata"]["uid"] = "a-new-uid"
    found = check(Snapshot(snap.pods, snap.nodes, [recreated], ("ml",)))
    assert any(v.invariant == "no-orphans" and "is gone" in v.detail for v in found), found


def test_status_that_disagrees_with_pods_is_caught():
    snap = healthy()
    snap.inferences[0]["status"]["readyReplicas"] = 1
    assert any("readyReplicas" in v.detail for v in check(snap))
    snap = healthy()
    snap.inferences[0]["status"]["placements"][0]["cores"] = "20-23"
    assert any("placements" in v.detail for v in check(snap))
    snap = healthy()
    snap.inferences[0]["metadata"]["generation"] = 2
    assert any("observedGeneration" in v.detail for v in check(snap))


def test_surplus_pods_are_caught():
    snap = healthy()
    snap.inferences[0]["spec"]["replicas"] = 1
    assert any("exceed replicas=1" in v.detail for v in check(snap))


def test_unschedulable_with_room_is_caught_and_without_room_is_accepted():
    # 3 replicas of 16 cores on one 24-core node: one fits, two cannot -> Unschedulable is honest.
    snap = healthy(inferences=[inference(replicas=3, cores=16, processes=1)])
    assert len(snap.pods) == 1
    assert check(snap) == []
    # Remove the placed pod: now a replica fits, yet the status still says Unschedulable.
    status_kept = snap.inferences[0]
    stale = Snapshot([], snap.nodes, [status_kept], ("ml",))
    found = [v for v in check(stale) if v.invariant == "fits-are-placed"]
    assert found and "fits on n-0" in found[0].detail, found


def test_missing_replicas_without_a_reason_are_caught():
    snap = healthy()
    pods = snap.pods[:1]
    inf = snap.inferences[0]
    inf["status"] = build_status(inf, pods, now=NOW)  # Pending: no reason that explains it
    found = check(Snapshot(pods, snap.nodes, [inf], ("ml",)))
    assert any(v.invariant == "fits-are-placed" and "Pending" in v.detail for v in found), found


def test_a_dead_operator_is_unhealthy():
    assert kinds(operator_health("http://127.0.0.1:9/healthz", alive=False)) == {"operator-healthy"}
    assert kinds(operator_health("http://127.0.0.1:9/healthz", alive=True, timeout=1)) == {"operator-healthy"}
