"""The level-driven decision: desired spec vs live pods → which pods go, which ordinals need pods."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuronplace.placement import reconcile
from neuronplace.placement.pods import template_hash
from neuronplace.placement.podsecurity import TemplatePolicy
from neuronplace.runtime.coreset import CoreRange

NOW = dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=dt.UTC)
READY_NODE = {"metadata": {"name": "n1"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


def spec(replicas=3, image="bert:1"):
    return {
        "replicas": replicas,
        "coresPerReplica": 2,
        "processesPerReplica": 1,
        "template": {"spec": {"containers": [{"name": "model", "image": image}]}},
    }


def resource(**kwargs):
    return {"metadata": {"name": "bert", "namespace": "ml", "uid": "uid-1", "generation": 1}, "spec": spec(**kwargs)}


def pod(
    ordinal, *, node="n1", cores=None, ready=True, phase="Running", uid="uid-1", current=True, deleting=False, name=None
):
    meta = {
        "name": name or f"bert-{ordinal}",
        "namespace": "ml",
        "labels": {"neuronplace.io/inference": "bert", "neuronplace.io/replica": str(ordinal)},
        "annotations": {
            "neuronplace.io/cores": cores or f"{2 * ordinal}-{2 * ordinal + 1}",
            "neuronplace.io/template-hash": template_hash(spec()) if current else "old",
        },
        "ownerReferences": [{"uid": uid, "controller": True}],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-28T11:59:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": node},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def decide(res, pods, nodes=None, **kwargs):
    return reconcile.decide(
        res, pods, {"n1": READY_NODE} if nodes is None else nodes, now=NOW, node_grace_seconds=60, **kwargs
    )


def reasons(decision):
    return [(d.pod, d.reason) for d in decision.deletions]


def test_creates_every_missing_ordinal():
    decision = decide(resource(), [pod(1)])
    assert decision.create == (0, 2) and decision.deletions == () and decision.invalid is None


def test_scale_down_deletes_highest_ordinals_first():
    decision = decide(resource(replicas=1), [pod(0), pod(1), pod(2)])
    assert reasons(decision) == [("bert-2", "ScaledDown"), ("bert-1", "ScaledDown")]
    assert decision.create == ()


def test_failed_pod_is_recreated_on_the_same_cores():
    decision = decide(resource(), [pod(0), pod(1, phase="Failed", cores="6-7"), pod(2)])
    assert reasons(decision) == [("bert-1", "PodFailed")]
    assert decision.prefer[1] == ("n1", CoreRange(6, 2))


def test_deleted_pod_asks_for_its_last_known_cores():
    decision = decide(resource(), [pod(0), pod(2)], last_known={1: ("n1", CoreRange(10, 2))})
    assert decision.create == (1,) and decision.prefer[1] == ("n1", CoreRange(10, 2))


def test_last_known_cores_of_another_size_are_not_preferred():
    decision = decide(resource(), [pod(0), pod(2)], last_known={1: ("n1", CoreRange(8, 4))})
    assert 1 not in decision.prefer


def test_pod_on_a_vanished_node_is_force_deleted_and_placed_anew():
    decision = decide(resource(), [pod(0), pod(1, node="gone"), pod(2)], last_known={1: ("gone", CoreRange(2, 2))})
    (deletion,) = decision.deletions
    assert (deletion.pod, deletion.reason, deletion.force) == ("bert-1", "NodeGone", True)
    assert 1 not in decision.prefer


def not_ready_node(seconds_ago):
    since = (NOW - dt.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {"name": "n2"},
        "status": {"conditions": [{"type": "Ready", "status": "Unknown", "lastTransitionTime": since}]},
    }


def test_not_ready_node_within_grace_waits_and_requeues():
    decision = decide(resource(replicas=1), [pod(0, node="n2")], nodes={"n2": not_ready_node(20)})
    assert decision.deletions == ()
    assert 39 <= decision.requeue_after <= 41


def test_not_ready_node_past_grace_re_places():
    decision = decide(resource(replicas=1), [pod(0, node="n2")], nodes={"n2": not_ready_node(61)})
    assert reasons(decision) == [("bert-0", "NodeNotReady")] and decision.deletions[0].force


def test_rollout_replaces_one_replica_at_a_time():
    res = resource()
    decision = decide(res, [pod(0, current=False), pod(1, current=False), pod(2, current=False)])
    assert reasons(decision) == [("bert-2", "RollingUpdate")]
    # While replica 2 is being replaced (terminating, then missing), nothing else is touched.
    assert (
        decide(res, [pod(0, current=False), pod(1, current=False), pod(2, current=False, deleting=True)]).deletions
        == ()
    )
    during = decide(res, [pod(0, current=False), pod(1, current=False)])
    assert during.deletions == () and during.create == (2,)
    # The new pod not ready yet: wait.
    assert decide(res, [pod(0, current=False), pod(1, current=False), pod(2, ready=False)]).deletions == ()
    assert reasons(decide(res, [pod(0, current=False), pod(1, current=False), pod(2)])) == [("bert-1", "RollingUpdate")]
    assert decide(res, [pod(0), pod(1), pod(2)]).deletions == ()


def test_rollout_replaces_a_not_ready_outdated_pod_first():
    decision = decide(resource(), [pod(0, current=False, ready=False), pod(1, current=False), pod(2, current=False)])
    assert reasons(decision) == [("bert-0", "RollingUpdate")]


def test_an_older_incarnations_pod_blocks_its_name_but_is_not_ours_to_delete():
    decision = decide(resource(), [pod(0, uid="old-uid"), pod(1), pod(2)])
    assert decision.create == () and decision.deletions == ()


def test_stray_pod_is_deleted():
    decision = decide(resource(), [pod(0), pod(1), pod(2), pod(9, name="bert-x")])
    assert reasons(decision) == [("bert-x", "StrayPod")]


def test_invalid_specs_get_no_pods():
    cases = [
        ({"spec": None}, "spec is missing"),
        ({"spec": {**spec(), "coresPerReplica": 0}}, "coresPerReplica"),
        ({"spec": {**spec(), "coresPerReplica": "8"}}, "coresPerReplica"),
        ({"spec": {**spec(), "processesPerReplica": 3}}, "processesPerReplica"),
        ({"spec": {**spec(), "replicas": -1}}, "replicas"),
        ({"spec": {**spec(), "placement": {"strategy": "Random"}}}, "strategy"),
        ({"spec": {**spec(), "template": {"spec": {"containers": []}}}}, "containers"),
        ({"spec": {**spec(), "template": {"spec": {"nodeName": "x", "containers": [{"name": "m"}]}}}}, "nodeName"),
        (
            {"spec": {**spec(), "template": {"spec": {"hostNetwork": True, "containers": [{"name": "m"}]}}}},
            "hostNetwork",
        ),
    ]
    for override, expected in cases:
        res = {**resource(), **override}
        decision = decide(res, [])
        assert decision.invalid and expected in decision.invalid, (override, decision.invalid)
        assert decision.create == () and decision.deletions == ()


def test_privileged_templates_pass_when_allowed():
    res = resource()
    res["spec"]["template"]["spec"]["hostNetwork"] = True
    assert decide(res, []).invalid
    assert decide(res, [], policy=TemplatePolicy(allow_privileged=True)).create == (0, 1, 2)


pod_strategy = st.builds(
    lambda ordinal, ready, phase, current, deleting, node: pod(
        ordinal, ready=ready, phase=phase, current=current, deleting=deleting, node=node
    ),
    st.integers(0, 6),
    st.booleans(),
    st.sampled_from(["Running", "Pending", "Failed", "Succeeded"]),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["n1", "n1", "gone"]),
)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 5), st.lists(pod_strategy, max_size=8, unique_by=lambda p: p["metadata"]["name"]))
def test_decisions_are_consistent(replicas, pods):
    decision = decide(resource(replicas=replicas), pods)
    names = {p["metadata"]["name"] for p in pods}
    deleted = [d.pod for d in decision.deletions]
    assert len(deleted) == len(set(deleted)) and set(deleted) <= names
    assert not {f"bert-{i}" for i in decision.create} & names  # never create over an existing name
    assert set(decision.create) <= set(range(replicas))
    assert sum(d.reason == "RollingUpdate" for d in decision.deletions) <= 1
    terminating = {p["metadata"]["name"] for p in pods if p["metadata"].get("deletionTimestamp")}
    assert not set(deleted) & terminating  # never delete twice
    for deletion in decision.deletions:
        if deletion.reason == "ScaledDown":
            assert int(deletion.pod.split("-")[1]) >= replicas


def test_placement_request_merges_the_templates_constraints():
    res = resource()
    res["spec"]["placement"] = {
        "strategy": "Spread",
        "shapePolicy": "Permissive",
        "alignedStart": True,
        "nodeSelector": {"pool": "a"},
        "tolerations": [{"key": "kwok", "operator": "Exists", "effect": "NoSchedule"}],
    }
    res["spec"]["template"]["spec"]["nodeSelector"] = {"zone": "z1", "pool": "ignored"}
    res["spec"]["template"]["spec"]["tolerations"] = [{"key": "ml", "operator": "Exists"}]
    request = reconcile.placement_request(res, "global")
    assert request.owner == "ml/bert" and request.cores_per_replica == 2 and request.processes_per_replica == 1
    assert (request.strategy, request.shape_policy, request.aligned, request.numbering) == (
        "Spread",
        "Permissive",
        True,
        "global",
    )
    assert dict(request.node_selector) == {"zone": "z1", "pool": "a"}
    assert [t["key"] for t in request.tolerations] == ["ml", "kwok"]


@pytest.mark.parametrize("stamp", ["2026-11-28T16:18:33Z", "2026-11-28T16:18:33+00:00", "2026-11-28T17:18:33+01:00"])
def test_not_ready_since_reads_every_rfc3339_spelling(stamp):
    # Watches deliver "...Z"; lists re-serialised by the client library give "+00:00". Both are the
    # same instant: misreading one as "NotReady forever" would skip the NotReady grace period.
    node = {"status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": stamp}]}}
    assert reconcile.node_not_ready_since(node) == dt.datetime(2026, 11, 28, 16, 18, 33, tzinfo=dt.UTC)
