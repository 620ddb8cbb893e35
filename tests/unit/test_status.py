"""Status and conditions built from live pods (Kubernetes API conventions)."""

from __future__ import annotations

from neuronplace.placement import names, status
from support.builders import inference

# The caller's clock: placement reads none, it is given the time.
NOW = "2026-11-28T10:00:00Z"


def resource(replicas=2, processes=2, previous=None):
    body = inference("bert", namespace="ml", generation=3, replicas=replicas, cores=4, processes=processes)
    return {**body, "status": previous or {}}


def pod(ordinal, cores, node="inf2-a", ready=True, deleting=False):
    meta = {
        "name": f"bert-{ordinal}",
        "labels": {"neuronplace.io/replica": str(ordinal)},
        "annotations": {"neuronplace.io/cores": cores},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-28T10:00:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": node},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def condition(built, type_):
    (found,) = [c for c in built["conditions"] if c["type"] == type_]
    return found


def test_all_placed_and_ready():
    built = status.build_status(resource(), [pod(1, "4-7"), pod(0, "0-3")], now=NOW)
    assert built["observedGeneration"] == 3
    assert built["replicas"] == 2 and built["readyReplicas"] == 2
    assert built["selector"] == "neuronplace.io/inference=bert"
    assert built["placements"] == [
        {
            "replica": 0,
            "pod": "bert-0",
            "node": "inf2-a",
            "cores": "0-3",
            "processCores": ["0-1", "2-3"],
            "deviceManagement": "DevicePlugin",
        },
        {
            "replica": 1,
            "pod": "bert-1",
            "node": "inf2-a",
            "cores": "4-7",
            "processCores": ["4-5", "6-7"],
            "deviceManagement": "DevicePlugin",
        },
    ]
    placed, ready = condition(built, "Placed"), condition(built, "Ready")
    assert (placed["status"], placed["reason"], placed["observedGeneration"]) == ("True", "Placed", 3)
    assert (ready["status"], ready["reason"], ready["message"]) == ("True", "AllReplicasReady", "2/2 replicas ready")


def test_unschedulable_carries_the_engines_message():
    problem = status.Problem(
        names.REASON_UNSCHEDULABLE,
        status.summarize_unplaceable([(1, "needs 8 contiguous cores; largest free run is 6 on inf2-a")]),
    )
    built = status.build_status(resource(), [pod(0, "0-3")], problem=problem, now=NOW)
    placed = condition(built, "Placed")
    assert placed["status"] == "False" and placed["reason"] == "Unschedulable"
    assert placed["message"] == "replica 1: needs 8 contiguous cores; largest free run is 6 on inf2-a"
    assert condition(built, "Ready")["status"] == "False"


def test_grouped_unplaceable_message():
    message = status.summarize_unplaceable([(3, "no room"), (2, "no room"), (4, "tainted")])
    assert message == "replicas 2, 3: no room; replica 4: tainted"


def test_terminating_pods_are_neither_replicas_nor_placements():
    built = status.build_status(resource(), [pod(0, "0-3"), pod(1, "4-7", deleting=True)], now=NOW)
    assert built["replicas"] == 1 and built["readyReplicas"] == 1
    assert [p["replica"] for p in built["placements"]] == [0]
    assert condition(built, "Placed")["reason"] == "Pending"


def test_transition_time_moves_only_when_status_flips():
    first = status.build_status(resource(), [pod(0, "0-3"), pod(1, "4-7", ready=False)], now=NOW)
    second = status.build_status(
        resource(previous=first), [pod(0, "0-3"), pod(1, "4-7", ready=False)], now="2026-11-28T10:05:00Z"
    )
    assert condition(second, "Ready")["lastTransitionTime"] == "2026-11-28T10:00:00Z"
    third = status.build_status(resource(previous=second), [pod(0, "0-3"), pod(1, "4-7")], now="2026-11-28T10:09:00Z")
    assert condition(third, "Ready")["lastTransitionTime"] == "2026-11-28T10:09:00Z"
    assert condition(third, "Placed")["lastTransitionTime"] == "2026-11-28T10:00:00Z"


def test_zero_replicas_is_placed_and_ready():
    built = status.build_status(resource(replicas=0), [], now=NOW)
    assert condition(built, "Placed")["status"] == "True" and condition(built, "Ready")["status"] == "True"
    assert built["replicas"] == 0 and built["placements"] == []


def test_pods_with_broken_annotations_do_not_break_status():
    broken = pod(0, "7-3")
    built = status.build_status(resource(replicas=1), [broken], now=NOW)
    assert built["placements"] == [] and built["replicas"] == 1


def test_status_differs_only_on_real_changes():
    built = status.build_status(resource(), [pod(0, "0-3"), pod(1, "4-7")], now=NOW)
    assert not status.status_differs(built, dict(built))
    assert status.status_differs(built, {**built, "readyReplicas": 1})


def test_replica_failure_is_there_while_replicas_fail_and_gone_after():
    failing = status.Problem("OutOfcpu", "replica 1: OutOfcpu on inf2-a: Node didn't have enough resource: cpu")
    first = status.build_status(resource(), [pod(0, "0-3")], replica_failure=failing, now=NOW)
    shown = condition(first, names.CONDITION_REPLICA_FAILURE)
    assert (shown["status"], shown["reason"], shown["message"]) == ("True", "OutOfcpu", failing.message)
    again = status.build_status(
        resource(previous=first), [pod(0, "0-3")], replica_failure=failing, now="2026-11-28T10:05:00Z"
    )
    assert condition(again, names.CONDITION_REPLICA_FAILURE)["lastTransitionTime"] == "2026-11-28T10:00:00Z"
    healed = status.build_status(resource(previous=again), [pod(0, "0-3"), pod(1, "4-7")], now=NOW)
    assert names.CONDITION_REPLICA_FAILURE not in {c["type"] for c in healed["conditions"]}
    assert {c["type"] for c in healed["conditions"]} == {names.CONDITION_PLACED, names.CONDITION_READY}


def test_binding_in_effect_and_a_pinned_pods_node():
    pinned = pod(0, "0-3", node=None)
    pinned["spec"] = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["inf2-b"]}]}
                    ]
                }
            }
        }
    }
    built = status.build_status(resource(replicas=1), [pinned], binding="Scheduler", now=NOW)
    assert built["binding"] == "Scheduler"
    assert built["placements"][0]["node"] == "inf2-b", "a pod waiting for kube-scheduler is shown on its node"
    assert "binding" not in status.build_status(resource(replicas=1), [pinned], now=NOW)


def test_only_pods_the_resource_controls_count_once_it_has_a_uid():
    owned = resource()
    owned["metadata"]["uid"] = "uid-bert"
    mine = [pod(0, "0-3"), pod(1, "4-7")]
    for p in mine:
        p["metadata"]["ownerReferences"] = [{"kind": "NeuronInference", "uid": "uid-bert", "controller": True}]
    hand_made = pod(2, "0-23")  # the same labels, no owner: not a replica
    built = status.build_status(owned, [*mine, hand_made], now=NOW)
    assert built["replicas"] == 2 and built["readyReplicas"] == 2
    assert [p["pod"] for p in built["placements"]] == ["bert-0", "bert-1"]


def test_scheduler_silence_is_why_replicas_are_not_ready():
    assert status.scheduler_silence(()) is None
    silence = status.scheduler_silence(("pod bert-1 pinned to node inf2-a has not been looked at", "pod bert-2 ..."))
    assert silence is not None and silence.reason == names.REASON_SCHEDULER_NOT_RESPONDING == "SchedulerNotResponding"
    assert silence.message.endswith("; is kube-scheduler running?") and "bert-1" in silence.message
    built = status.build_status(resource(), [pod(0, "0-3"), pod(1, "4-7", ready=False)], not_ready=silence, now=NOW)
    ready = condition(built, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "SchedulerNotResponding")
    assert ready["message"] == "1/2 replicas ready; " + silence.message
    assert condition(built, "Placed")["status"] == "True", "the pods are where they belong; they are not bound"
    all_ready = status.build_status(resource(), [pod(0, "0-3"), pod(1, "4-7")], not_ready=silence, now=NOW)
    assert condition(all_ready, "Ready")["reason"] == "AllReplicasReady"
