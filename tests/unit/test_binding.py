"""Binding modes, failed attempts and priority on the operator's side: the settings and flags, the
ReplicaFailure summary, what the cache keeps of a pinned or ended pod, the priority rules and the
order in which resources waiting for room are served."""

from __future__ import annotations

import argparse
import datetime as dt

import pytest

from neuronplace.cli import run as run_cli
from neuronplace.operator.cache import Cache
from neuronplace.operator.settings import OperatorSettings
from neuronplace.operator.slim import slim_pod
from neuronplace.placement import failures, priority
from neuronplace.placement.claims import node_of
from neuronplace.placement.pods import pin_to_node

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


def test_binding_settings_from_env_and_flags():
    defaults = OperatorSettings()
    assert (defaults.binding, defaults.unschedulable_seconds, defaults.allow_system_priority) == (
        "Scheduler",
        10,
        False,
    )
    env = OperatorSettings.from_env(
        {
            "NEURONPLACE_BINDING": "Direct",
            "NEURONPLACE_UNSCHEDULABLE_SECONDS": "2.5",
            "NEURONPLACE_ALLOW_SYSTEM_PRIORITY": "true",
        }
    )
    assert (env.binding, env.unschedulable_seconds, env.allow_system_priority) == ("Direct", 2.5, True)
    assert OperatorSettings.from_env(env.to_env()) == env
    with pytest.raises(ValueError, match="binding 'Bound' is not one of Scheduler, Direct"):
        OperatorSettings(binding="Bound")
    with pytest.raises(ValueError, match="unschedulable_seconds must be > 0"):
        OperatorSettings(unschedulable_seconds=0)

    parser = argparse.ArgumentParser()
    run_cli.configure(parser)
    args = parser.parse_args(["--binding", "Direct", "--unschedulable-seconds", "3", "--allow-system-priority"])
    flags = run_cli.settings_from_args(args)
    assert (flags.binding, flags.unschedulable_seconds, flags.allow_system_priority) == ("Direct", 3, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--binding", "nodeName"])


def test_backoff_doubles_from_ten_seconds_to_five_minutes():
    backoff = failures.Backoff()
    assert [backoff.seconds(n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 300, 300, 300]
    assert backoff.seconds(10_000) == 300


def test_backoff_takes_its_first_step_and_cap_from_the_rules():
    backoff = failures.Backoff(first=0.5, cap=3)
    assert [backoff.seconds(n) for n in range(1, 6)] == [0.5, 1, 2, 3, 3]
    history = failures.record(None, rejected("t1"), NOW, backoff)
    assert history.retry_at == NOW + dt.timedelta(seconds=0.5)
    assert history.avoided(NOW + dt.timedelta(seconds=0.9)) == {"inf2-a"}, "avoided for twice the wait"
    assert history.avoided(NOW + dt.timedelta(seconds=1)) == frozenset()


def rejected(attempt: str, node: str = "inf2-a") -> failures.Failure:
    return failures.Failure(1, attempt, node, "OutOfcpu", "Node didn't have enough resource: cpu", True, True)


def test_the_summary_quotes_the_last_failure_of_every_failing_replica():
    history = failures.record(None, rejected("t1"), NOW, failures.Backoff())
    history = failures.record(history, rejected("t2"), NOW, failures.Backoff())
    assert failures.record(history, rejected("t2"), NOW, failures.Backoff()) is history, "one attempt is counted once"
    unschedulable = failures.Failure(0, "t3", "inf2-b", "Unschedulable", "0/2 nodes are available: ...", True, False)
    other = failures.record(None, unschedulable, NOW, failures.Backoff())
    reason, message = failures.summarize({1: history, 0: other, 2: failures.ReplicaHistory()}, NOW)
    assert reason == "OutOfcpu", "the replica tried last is the one whose reason shows"
    assert message == (
        "replica 0: Unschedulable on inf2-b: 0/2 nodes are available: ... (1 failed attempt); "
        "replica 1: OutOfcpu on inf2-a: Node didn't have enough resource: cpu (2 failed attempts; next attempt at 12:00:20Z)"
    )
    assert failures.summarize({}, NOW) is None
    assert history.avoided(NOW) == {"inf2-a"} and history.avoided(NOW + dt.timedelta(seconds=40)) == frozenset()


def test_what_the_cache_keeps_of_a_pinned_and_an_ended_pod():
    pod = {
        "metadata": {"name": "bert-0", "namespace": "ml", "creationTimestamp": "2026-11-30T11:59:00Z"},
        "spec": {"affinity": pin_to_node({"podAntiAffinity": {"x": 1}}, "inf2-a"), "containers": [{"name": "m"}]},
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes ..."}
            ],
        },
    }
    slim = slim_pod(pod)
    assert node_of(slim) == "inf2-a" and slim["spec"]["nodeName"] is None
    assert slim["metadata"]["creationTimestamp"] == "2026-11-30T11:59:00Z"
    assert {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes ..."} in slim[
        "status"
    ]["conditions"]
    assert "podAntiAffinity" not in slim["spec"]["affinity"], "only the pin is kept"
    bound = slim_pod({**pod, "spec": {"nodeName": "inf2-a"}, "status": {"phase": "Failed", "reason": "OutOfcpu"}})
    assert bound["spec"] == {"nodeName": "inf2-a"}
    assert bound["status"]["reason"] == "OutOfcpu" and bound["status"]["started"] is False
    assert [c["type"] for c in bound["status"]["conditions"]] == [], "no scheduler verdict once bound"
    (failure,) = [failures.failed_pod(bound, 0, "inf2-a")]
    assert failure.avoid_node and failure.reason == "OutOfcpu"


def resource(name: str, created: str, class_name: str | None = None) -> dict:
    spec = {"containers": [{"name": "m"}]}
    if class_name:
        spec["priorityClassName"] = class_name
    return {
        "metadata": {"name": name, "namespace": "ml", "creationTimestamp": created},
        "spec": {"template": {"spec": spec}},
    }


def test_system_priority_is_refused_unless_allowed():
    classes = {"high": 1_000_000_000, "batch": 1000}
    assert "system-node-critical has priority 2000001000" in priority.priority_refusal(
        resource("a", "t", "system-node-critical"), {}, False
    ), "the built-in classes are known before the cluster's list"
    assert "high has priority 1000000000" in priority.priority_refusal(resource("a", "t", "high"), classes, False)
    assert priority.priority_refusal(resource("a", "t", "high"), classes, True) is None
    assert priority.priority_refusal(resource("a", "t", "batch"), classes, False) is None
    assert priority.priority_refusal(resource("a", "t"), classes, False) is None
    assert priority.priority_refusal(resource("a", "t", "unknown"), classes, False) is None, "the API server says"


def test_resources_waiting_for_room_are_served_by_priority_then_age():
    cache = Cache()
    for item in (
        resource("old-plain", "2026-11-30T10:00:00Z"),
        resource("new-high", "2026-11-30T11:00:00Z", "high"),
        resource("old-high", "2026-11-30T09:00:00Z", "high"),
        resource("low", "2026-11-30T08:00:00Z", "low"),
    ):
        cache.apply_inference("ADDED", item)
    assert cache.apply_priority_class("ADDED", {"metadata": {"name": "high"}, "value": 1000}) == [
        ("ml", "new-high"),
        ("ml", "old-high"),
    ]
    cache.apply_priority_class("ADDED", {"metadata": {"name": "low"}, "value": -5})
    keys = [("ml", n) for n in ("old-plain", "new-high", "old-high", "low")]
    assert [name for _, name in cache.in_waiting_order(keys)] == ["old-high", "new-high", "old-plain", "low"]
    cache.apply_priority_class("DELETED", {"metadata": {"name": "high"}})
    assert [name for _, name in cache.in_waiting_order(keys)][:2] == ["old-high", "old-plain"]
