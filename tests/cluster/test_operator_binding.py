"""Binding modes on the real control plane: in Scheduler mode kube-scheduler binds each pod to the
node and range placement chose, and a pinned pod it cannot bind is taken back after the timeout and
its replica placed on another node, quoting the scheduler; a pinned pod a frozen kube-scheduler
never looks at is kept and reported until it wakes; a template naming a system priority class is
refused unless the operator allows it.

Each resource names its binding mode itself (``spec.placement.binding``), so these run the same
under either session ``--binding``; the status shows the mode in effect.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from neuronplace.local.operator_process import TEST_TIMINGS
from neuronplace.placement.claims import pinned_node
from neuronplace.placement.names import (
    CONDITION_PLACED,
    CONDITION_READY,
    CONDITION_REPLICA_FAILURE,
    CORES_ANNOTATION,
    REASON_INVALID_SPEC,
    REASON_SCHEDULER_NOT_RESPONDING,
    REASON_UNSCHEDULABLE,
)
from support.builders import inference
from support.cluster import (
    apply,
    assert_no_shared_cores,
    assert_pod_consistent,
    condition,
    get_inference,
    live,
    placed_and_ready,
    pods_of,
)
from support.waits import hold

pytestmark = pytest.mark.cluster

INF2_CORES_PER_CHIP = 2


def events(cluster, namespace: str, name: str, reason: str) -> list[dict]:
    listed = cluster.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name={name},reason={reason}",
        "-o",
        "json",
    ).stdout
    return json.loads(listed)["items"]


def test_scheduler_mode_pods_are_bound_by_kube_scheduler_to_the_chosen_node_and_range(
    local_cluster, operator, namespace, fleet, wait_for
):
    nodes = fleet({"inf2.48xlarge": 2})
    apply(
        local_cluster,
        namespace,
        inference("sched", cores=4, replicas=3, pool=nodes.pool, binding="Scheduler"),
        inference("direct", cores=4, replicas=1, pool=nodes.pool, binding="Direct"),
    )
    resource = wait_for(
        lambda: placed_and_ready(local_cluster, namespace, "sched", 3), 90, "3 replicas bound and ready"
    )
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "direct", 1), 60, "the Direct replica ready")
    assert resource["status"]["binding"] == "Scheduler"
    assert get_inference(local_cluster, namespace, "direct")["status"]["binding"] == "Direct"
    placements = {p["pod"]: p for p in resource["status"]["placements"]}
    for pod in live(pods_of(local_cluster, namespace, "sched")):
        name = pod["metadata"]["name"]
        # Pinned by the operator, bound by kube-scheduler to exactly that node, range as placed.
        assert pinned_node(pod) == pod["spec"]["nodeName"] == placements[name]["node"]
        assert pod["metadata"]["annotations"][CORES_ANNOTATION] == placements[name]["cores"]
        assert pod["spec"].get("schedulerName", "default-scheduler") == "default-scheduler"
        assert events(local_cluster, namespace, name, "Scheduled"), f"kube-scheduler did not bind {name}"
        assert_pod_consistent(pod, INF2_CORES_PER_CHIP, 1)
    (direct,) = live(pods_of(local_cluster, namespace, "direct"))
    assert pinned_node(direct) is None and direct["spec"]["nodeName"] in nodes
    assert not events(local_cluster, namespace, direct["metadata"]["name"], "Scheduled")
    assert_no_shared_cores(local_cluster)
    wide = local_cluster.kubectl("get", "ninf", "-n", namespace, "-o", "wide").stdout
    assert "BINDING" in wide.splitlines()[0] and "Scheduler" in wide and "Direct" in wide, wide


def test_an_unschedulable_pinned_pod_is_taken_back_and_its_replica_placed_elsewhere(
    local_cluster, operator, namespace, fleet, wait_for
):
    """Two replicas that fit one node's cores refuse to share a node (required pod anti-affinity):
    placement, which does not look at other pods' labels, packs them onto one node; kube-scheduler
    refuses the second there; after the timeout (``unschedulable_seconds``) it goes, and its
    replica runs on the other node."""
    nodes = fleet({"inf2.xlarge": 2})
    resource = inference("apart", cores=1, replicas=2, pool=nodes.pool, binding="Scheduler")
    resource["spec"]["template"]["spec"]["affinity"] = {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "apart"}}, "topologyKey": "kubernetes.io/hostname"}
            ]
        }
    }
    started = time.monotonic()
    apply(local_cluster, namespace, resource)

    ready = wait_for(lambda: placed_and_ready(local_cluster, namespace, "apart", 2), 120, "both replicas running")
    took = time.monotonic() - started
    pods = live(pods_of(local_cluster, namespace, "apart"))
    assert {p["spec"]["nodeName"] for p in pods} == set(nodes), "one replica per node, as the anti-affinity says"
    # The operator counts the timeout from the pod's creationTimestamp, which the API server truncates
    # to whole seconds: the wait it sees can be up to 1 s longer than the wall clock here.
    timeout = TEST_TIMINGS["unschedulable_seconds"]
    assert took >= timeout - 1, f"placed in {took:.1f}s: the unschedulable pod must have waited its {timeout} s"
    failure = condition(ready, CONDITION_REPLICA_FAILURE)
    assert failure.get("status") == "True" and failure.get("reason") == REASON_UNSCHEDULABLE, failure
    assert "anti-affinity" in failure["message"], failure
    warned = events(local_cluster, namespace, "apart", REASON_UNSCHEDULABLE)
    assert any("anti-affinity" in e["message"] and "nodes are available" in e["message"] for e in warned), warned
    taken_back = events(local_cluster, namespace, "apart", "PodUnschedulable")
    assert taken_back and all("anti-affinity" in e["message"] for e in taken_back), taken_back
    assert_no_shared_cores(local_cluster)


def test_a_pinned_pod_a_silent_kube_scheduler_ignores_is_reported_and_kept(
    local_cluster, operator, namespace, fleet, wait_for
):
    """kube-scheduler frozen (SIGSTOP: alive, its watches open, binding nothing and writing no
    PodScheduled verdict, as the wedged 1.36.3 does): after ``scheduler_silence_seconds`` Ready
    says so, once as an Event; the pod is never replaced meanwhile. Woken, it binds that same pod
    and the resource is Ready."""
    nodes = fleet({"inf2.xlarge": 1})
    scheduler = local_cluster.running_components()["kube-scheduler"]
    os.kill(scheduler, signal.SIGSTOP)
    try:
        apply(local_cluster, namespace, inference("unheard", cores=1, pool=nodes.pool, binding="Scheduler"))
        (pod,) = wait_for(lambda: live(pods_of(local_cluster, namespace, "unheard")), 30, "the pinned pod")
        uid = pod["metadata"]["uid"]

        def reported():
            (now,) = pods_of(local_cluster, namespace, "unheard")
            assert now["metadata"]["uid"] == uid and not now["metadata"].get("deletionTimestamp"), "pod replaced"
            assert not now["spec"].get("nodeName"), "bound while kube-scheduler was frozen"
            ready = condition(get_inference(local_cluster, namespace, "unheard"), CONDITION_READY)
            return ready if ready.get("reason") == REASON_SCHEDULER_NOT_RESPONDING else None

        ready = wait_for(reported, TEST_TIMINGS["scheduler_silence_seconds"] + 45, "SchedulerNotResponding")
        assert ready["status"] == "False", ready
        assert (
            f"pod unheard-0 pinned to node {pinned_node(pod)} has not been looked at by kube-scheduler"
            in (ready["message"])
        ), ready
        assert ready["message"].endswith("is kube-scheduler running?"), ready
        # Nothing but a resync looks at the pod again (kube-scheduler writes nothing): two resyncs
        # and a margin later, still the same pod, still reported, still one Event.
        hold(
            lambda: reported() or pytest.fail("the report went away while kube-scheduler was still frozen"),
            2 * TEST_TIMINGS["resync_seconds"] + 2,
        )
        warned = events(local_cluster, namespace, "unheard", REASON_SCHEDULER_NOT_RESPONDING)
        assert len(warned) == 1 and warned[0]["type"] == "Warning", warned
        assert not events(local_cluster, namespace, "unheard", "PodUnschedulable")
    finally:
        os.kill(scheduler, signal.SIGCONT)
    resource = wait_for(lambda: placed_and_ready(local_cluster, namespace, "unheard", 1), 90, "bound once woken")
    assert condition(resource, CONDITION_READY)["reason"] != REASON_SCHEDULER_NOT_RESPONDING
    (bound,) = live(pods_of(local_cluster, namespace, "unheard"))
    assert bound["metadata"]["uid"] == uid and bound["spec"]["nodeName"] == pinned_node(bound)


@pytest.fixture
def operator_with_env(operator_factory):
    """``operator_with_env(log_name, **env)``: an operator configured through its environment in
    place of the session's operator, for one test."""
    return lambda log_name, **env: operator_factory(log_name=log_name, env=env)


def refused(cluster, namespace: str, name: str) -> dict | None:
    placed = condition(get_inference(cluster, namespace, name), CONDITION_PLACED)
    return placed if placed.get("reason") == REASON_INVALID_SPEC else None


def test_system_priority_is_refused_unless_the_operator_allows_it(
    local_cluster, operator, operator_with_env, namespace, fleet, wait_for
):
    nodes = fleet({"inf2.xlarge": 1})
    high = f"np-high-{namespace}"
    local_cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": high}, "value": 10**9}
        ),
    )
    try:
        critical = inference("critical", cores=1, pool=nodes.pool)
        critical["spec"]["template"]["spec"]["priorityClassName"] = "system-node-critical"
        custom = inference("custom", cores=1, pool=nodes.pool)
        custom["spec"]["template"]["spec"]["priorityClassName"] = high
        apply(local_cluster, namespace, critical, custom)
        for name, value in (("critical", 2000001000), ("custom", 10**9)):
            placed = wait_for(lambda n=name: refused(local_cluster, namespace, n), 60, f"{name} refused")
            assert f"priority {value}" in placed["message"] and "NEURONPLACE_ALLOW_SYSTEM_PRIORITY" in placed["message"]
            assert not pods_of(local_cluster, namespace, name)

        operator_with_env("neuronplace-operator-system-priority.log", NEURONPLACE_ALLOW_SYSTEM_PRIORITY="true")
        for name in ("critical", "custom"):
            wait_for(lambda n=name: placed_and_ready(local_cluster, namespace, n, 1), 60, f"{name} placed once allowed")
        (pod,) = live(pods_of(local_cluster, namespace, "critical"))
        assert pod["spec"]["priorityClassName"] == "system-node-critical" and pod["spec"]["priority"] == 2000001000
    finally:
        local_cluster.kubectl("delete", "priorityclass", high, "--ignore-not-found")
