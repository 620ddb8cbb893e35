"""The level-driven decision: desired spec vs live pods → which pods go, which ordinals need pods."""

from __future__ import annotations

import datetime as dt
import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuronplace.placement import failures, replica_pods
from neuronplace.placement import request as request_model
from neuronplace.placement.pods import template_hash
from neuronplace.runtime.coreset import CoreRange
from support import builders

NOW = dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=dt.UTC)
READY_NODE = {"metadata": {"name": "n1"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


# ml/bert: 3 replicas of 2 cores.
resource = functools.partial(
    builders.inference, "bert", namespace="ml", uid="uid-1", generation=1, replicas=3, image="bert:1"
)


def pod(
    ordinal,
    *,
    node="n1",
    cores=None,
    ready=True,
    phase="Running",
    uid="uid-1",
    current=True,
    deleting=False,
    name=None,
    created=None,
):
    meta = {
        "name": name or f"bert-{ordinal}",
        "namespace": "ml",
        "labels": {"neuronplace.io/inference": "bert", "neuronplace.io/replica": str(ordinal)},
        "annotations": {
            "neuronplace.io/cores": cores or f"{2 * ordinal}-{2 * ordinal + 1}",
            "neuronplace.io/template-hash": template_hash(resource()["spec"]) if current else "old",
        },
        "ownerReferences": [{"uid": uid, "controller": True}],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-28T11:59:00Z"
    if created:
        meta["creationTimestamp"] = created
    return {
        "metadata": meta,
        "spec": {"nodeName": node},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def decide(res, pods, nodes=None, now=NOW, **kwargs):
    kwargs.setdefault("failure_backoff", failures.Backoff())
    return replica_pods.decide(
        res, pods, {"n1": READY_NODE} if nodes is None else nodes, now=now, node_grace_seconds=60, **kwargs
    )


def reasons(decision):
    return [(d.pod, d.reason) for d in decision.deletions]


def test_creates_every_missing_ordinal():
    decision = decide(resource(), [pod(1)])
    assert decision.create == (0, 2) and decision.deletions == ()


def test_scale_down_deletes_highest_ordinals_first():
    decision = decide(resource(replicas=1), [pod(0), pod(1), pod(2)])
    assert reasons(decision) == [("bert-2", "ScaledDown"), ("bert-1", "ScaledDown")]
    assert decision.create == ()


def fold(history, decision):
    """The operator's side: a replica history after a decision's updates."""
    out = dict(history)
    for ordinal, replica_history in decision.history.items():
        if replica_history is None:
            out.pop(ordinal, None)
        else:
            out[ordinal] = replica_history
    return out


def at(seconds):
    return NOW + dt.timedelta(seconds=seconds)


def test_failed_pod_waits_its_backoff_then_is_recreated_on_the_same_cores():
    failed = pod(1, phase="Failed", cores="6-7", created="2026-11-28T11:59:58Z")
    first = decide(resource(), [pod(0), failed, pod(2)])
    assert first.deletions == () and first.create == (), "the ended pod stays while its replica backs off"
    (failure,) = first.failures
    assert (failure.replica, failure.reason, failure.node, failure.avoid_node) == (1, "ContainersExited", "n1", False)
    assert first.requeue_after == pytest.approx(10)
    history = fold({}, first)
    again = decide(resource(), [pod(0), failed, pod(2)], history=history, now=at(5))
    assert again.failures == () and again.deletions == () and again.requeue_after == pytest.approx(5)
    due = decide(resource(), [pod(0), failed, pod(2)], history=history, now=at(10))
    assert reasons(due) == [("bert-1", "PodFailed")] and due.failures == ()
    assert due.prefer[1] == ("n1", CoreRange(6, 2))
    gone = decide(resource(), [pod(0), pod(2)], history=history, now=at(11))
    assert gone.create == (1,) and 1 not in gone.avoid


def test_kubelet_rejection_avoids_the_node_and_backoff_doubles_to_five_minutes():
    history: dict = {}
    waits = []
    for attempt in range(8):
        rejected = pod(1, phase="Failed", created=f"2026-11-28T10:00:{attempt:02d}Z")
        rejected["status"].update(reason="OutOfcpu", message="Node didn't have enough resource: cpu")
        decision = decide(resource(), [pod(0), rejected, pod(2)], history=history)
        history = fold(history, decision)
        waits.append(decision.requeue_after)
        (failure,) = decision.failures
        assert failure.reason == "OutOfcpu" and failure.avoid_node
    assert waits == [10, 20, 40, 80, 160, 300, 300, 300]
    created = decide(resource(), [pod(0), pod(2)], history=history, now=at(300))
    assert created.create == (1,) and created.avoid[1] == frozenset({"n1"})
    assert 1 not in created.prefer


def test_a_pod_that_ran_before_it_failed_keeps_its_node():
    evicted = pod(1, phase="Failed")
    evicted["status"].update(reason="Evicted", containerStatuses=[{"state": {"terminated": {"startedAt": "x"}}}])
    (failure,) = decide(resource(), [pod(0), evicted, pod(2)]).failures
    assert failure.reason == "Evicted" and not failure.avoid_node


def test_one_failed_attempt_is_counted_once():
    failed = pod(1, phase="Succeeded", created="2026-11-28T11:59:58Z")
    history = fold({}, decide(resource(), [pod(0), failed, pod(2)]))
    later = decide(resource(), [pod(0), failed, pod(2)], history=history, now=at(3))
    assert later.failures == () and later.history == {} and history[1].failures == 1
    assert history[1].last.reason == "Completed"


def test_ten_minutes_of_running_forgive_the_failures():
    failed = pod(1, phase="Failed", created="2026-11-28T11:00:00Z")
    history = fold({}, decide(resource(), [pod(0), failed, pod(2)]))
    young = pod(1, created="2026-11-28T12:00:00Z")
    assert decide(resource(), [pod(0), young, pod(2)], history=history, now=at(599)).history == {}
    assert decide(resource(), [pod(0), young, pod(2)], history=history, now=at(600)).history == {1: None}


def test_a_changed_spec_does_not_wait_for_the_old_attempts_backoff():
    failed = pod(1, phase="Failed", current=False)
    decision = decide(resource(), [pod(0), failed, pod(2)])
    assert reasons(decision) == [("bert-1", "PodFailed")] and decision.history[1].failures == 1


def pinned(ordinal, *, created="2026-11-28T11:59:50Z", verdict=None):
    unbound = pod(ordinal, created=created, phase="Pending", ready=False)
    unbound["spec"] = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
                    ]
                }
            }
        }
    }
    if verdict:
        unbound["status"]["conditions"].append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": verdict}
        )
    return unbound


SCHEDULER_SAYS = "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."


def test_a_pinned_pod_is_on_its_node_before_it_is_bound():
    decision = decide(resource(), [pod(0), pinned(1), pod(2)])
    assert decision.deletions == () and decision.create == ()
    assert decision.prefer[1] == ("n1", CoreRange(2, 2))
    assert decision.requeue_after == pytest.approx(5), "looks again when the pod may be unschedulable"
    gone = decide(resource(), [pod(0), pinned(1), pod(2)], nodes={})
    assert ("bert-1", "NodeGone") in reasons(gone)


def test_an_unschedulable_pinned_pod_goes_after_the_timeout_and_its_replica_avoids_the_node():
    waiting = decide(resource(), [pod(0), pinned(1, verdict=SCHEDULER_SAYS), pod(2)], unschedulable_seconds=15)
    assert waiting.deletions == () and waiting.requeue_after == pytest.approx(5)
    decision = decide(resource(), [pod(0), pinned(1, verdict=SCHEDULER_SAYS), pod(2)], unschedulable_seconds=10)
    (deletion,) = decision.deletions
    assert (deletion.pod, deletion.reason) == ("bert-1", "PodUnschedulable") and SCHEDULER_SAYS in deletion.message
    (failure,) = decision.failures
    assert failure.reason == "Unschedulable" and failure.message == SCHEDULER_SAYS and failure.avoid_node
    history = fold({}, decision)
    again = decide(resource(), [pod(0), pod(2)], history=history, now=at(1))
    assert again.create == (1,) and again.avoid == {1: frozenset({"n1"})}, "placed again at once, elsewhere"
    # Looked at again when n1 may be used again (its only node may be n1), not at the next resync.
    assert again.requeue_after == pytest.approx(19)
    assert decide(resource(), [pod(0), pod(2)], history=history, now=at(21)).avoid == {}


def test_a_pinned_pod_kube_scheduler_never_looked_at_is_reported_and_kept():
    assert replica_pods.SCHEDULER_SILENCE_SECONDS == 30
    pods = [pod(0), pinned(1, created="2026-11-28T11:59:40Z"), pod(2)]  # no PodScheduled at all
    early = decide(resource(), pods, now=at(-15))  # 5 s old
    assert early.unheard == () and early.requeue_after == pytest.approx(5)
    almost = decide(resource(), pods, now=at(8))  # 28 s old: looks again when the silence is long enough
    assert almost.unheard == () and almost.requeue_after == pytest.approx(2)
    silent = decide(resource(), pods, now=at(11))  # 31 s old
    assert silent.unheard == (
        "pod bert-1 pinned to node n1 has not been looked at by kube-scheduler for more than 30s",
    )
    assert silent.deletions == () and silent.create == () and silent.failures == (), "kept: no loop, no Direct"
    assert silent.requeue_after is None, "kube-scheduler's next word is a pod event"
    assert decide(resource(), pods, now=at(300)).unheard == silent.unheard, "the message stays put"
    longer = decide(resource(), pods, now=at(31), unschedulable_seconds=20, scheduler_silence_seconds=60)  # 51 s old
    assert longer.unheard == () and longer.requeue_after == pytest.approx(9)
    shorter = decide(resource(), pods, now=at(-15), scheduler_silence_seconds=4)  # 5 s old, threshold 4 s
    assert shorter.unheard == (
        "pod bert-1 pinned to node n1 has not been looked at by kube-scheduler for more than 4s",
    )


def test_any_verdict_is_word_from_kube_scheduler():
    refused = pinned(1, created="2026-11-28T11:58:00Z", verdict=SCHEDULER_SAYS)
    decision = decide(resource(), [pod(0), refused, pod(2)], unschedulable_seconds=600)
    assert decision.unheard == () and decision.deletions == ()
    gated = pinned(1, created="2026-11-28T11:58:00Z")
    gated["status"]["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"})
    assert decide(resource(), [pod(0), gated, pod(2)]).unheard == ()
    bound = pod(1, created="2026-11-28T11:58:00Z")  # bound pods carry no PodScheduled in the cache
    assert decide(resource(), [pod(0), bound, pod(2)]).unheard == ()


def test_scaled_away_replicas_forget_their_failures():
    failed = pod(2, phase="Failed")
    history = fold({}, decide(resource(), [pod(0), pod(1), failed]))
    assert decide(resource(replicas=2), [pod(0), pod(1)], history=history).history == {2: None}


def test_avoiding_keeps_every_required_term_and_adds_the_nodes_to_each():
    request = request_model.placement_request(resource(), "device-local")
    assert request_model.avoiding(request, frozenset()) is request
    away = request_model.avoiding(request, frozenset({"n2", "n1"}))
    terms = away.affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1", "n2"]}]}]
    zone = {"key": "zone", "operator": "In", "values": ["a"]}
    both = resource()
    both["spec"]["template"]["spec"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [zone]}, {}]}
        }
    }
    away = request_model.avoiding(request_model.placement_request(both, "device-local"), frozenset({"n1"}))
    terms = away.affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    not_n1 = {"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}
    assert terms == [{"matchExpressions": [zone], "matchFields": [not_n1]}, {}], "an empty term still matches nothing"


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
    request = request_model.placement_request(res, "global")
    assert request.inference == "ml/bert" and request.cores_per_replica == 2 and request.processes_per_replica == 1
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
    assert replica_pods.node_not_ready_since(node) == dt.datetime(2026, 11, 28, 16, 18, 33, tzinfo=dt.UTC)
