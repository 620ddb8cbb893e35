"""Capacity requests on a real control plane: without an autoscaler they wait Pending and never
get in a replica's way; with Karpenter (kwok provider, the ``autoscaler`` fixture: a cluster of its
own that starts with no node at all) they make nodes appear, the replicas run there, and the nodes
go once the replicas do.

Every wait also checks, at each poll, that no replica has more than one capacity request and that
Karpenter never claims more nodes than the replicas need; the invariant monitor
(``neuronplace.local.reliability.monitor``) checks at every pod and node event that no NeuronCore is held twice and
no node's requests (capacity requests included, as kube-scheduler counts them) exceed what it has.
The figures (apply → Running, empty → node removed) are printed (``-rP``) and recorded as
properties.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from neuronplace.local.autoscaler import BATCH_MAX_SECONDS
from neuronplace.local.cluster import LocalCluster
from neuronplace.local.operator_process import TEST_TIMINGS, OperatorProcess, install_crd
from neuronplace.local.pytest_operator import OperatorFactory
from neuronplace.local.reliability.monitor import monitor_for
from neuronplace.placement.names import (
    CAPACITY_REQUEST_LABEL,
    CONDITION_PLACED,
    CONDITION_POD_SCHEDULED,
    CONDITION_WAITING_FOR_CAPACITY,
    INFERENCE_LABEL,
    INSTANCE_TYPE_LABEL,
    NEURONCORE_RESOURCE,
    REASON_CAPACITY_REQUESTED,
    REASON_UNSCHEDULABLE,
    REPLICA_LABEL,
)
from support.builders import inference
from support.cluster import (
    apply,
    assert_no_shared_cores,
    condition,
    get_inference,
    live,
    placed_and_ready,
    quick_node_pool,
)
from support.waits import hold

pytestmark = pytest.mark.cluster

INF2_48 = {INSTANCE_TYPE_LABEL: "inf2.48xlarge"}  # 24 cores: the node shape each test reasons about
# Karpenter makes a node for Pending pods within a batch window; three windows and a margin without
# one show it makes none.
PROVISIONING_ROUNDS = 3 * BATCH_MAX_SECONDS + 1


def requests_of(cluster: LocalCluster, namespace: str) -> list[dict]:
    """The live capacity-request pods of a namespace."""
    return live(cluster.get_json("pods", "-n", namespace, "-l", CAPACITY_REQUEST_LABEL)["items"])


def names(cluster: LocalCluster, kind: str) -> list[str]:
    return sorted(item["metadata"]["name"] for item in cluster.get_json(kind)["items"])


def one_request_per_replica(cluster: LocalCluster, namespace: str) -> None:
    per_replica = Counter(
        (r["metadata"]["labels"][CAPACITY_REQUEST_LABEL], r["metadata"]["labels"][REPLICA_LABEL])
        for r in requests_of(cluster, namespace)
    )
    doubled = {replica: count for replica, count in per_replica.items() if count > 1}
    assert not doubled, f"replicas with more than one capacity request: {doubled}"


def poll(what: str, check: Callable, timeout: float, invariant: Callable[[], None] = lambda: None):
    """``check()`` until truthy (returned), calling ``invariant()`` (which asserts) before each try."""
    deadline = time.monotonic() + timeout
    while True:
        invariant()
        try:
            result = check()
        except Exception:  # a transient kubectl failure; the deadline still applies
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.25)  # the poll interval: nothing here can be waited on but the next look


def assert_never_overbooked(report) -> None:
    """At every pod and node event: no node's bound pods requested more than it has (kube-scheduler's
    accounting, NeuronCores included) and no two pods' core ranges overlapped.

    One thing may show for an instant: a capacity request kube-scheduler bound into room a replica
    pod pinned there has taken but not yet been bound to (kube-scheduler counts a pinned pod on its
    node only once it binds it). The monitor, which counts the pinned pod on its node, then sees the
    node hold more cores than it has by count, until the replica preempts the request (its priority
    is higher): allowed, printed, and it must be gone within 2 s.
    """
    assert report.events > 0, "the monitor saw no events"
    assert report.violations == len(report.first), "more violations than the monitor kept"
    transient = [
        seen
        for seen in report.first
        if seen.violation.invariant == "exclusive-cores" and "live pods hold" in seen.violation.detail
    ]
    for seen in transient:
        print("preempted capacity request:", seen)
    assert [str(seen) for seen in report.first if seen not in transient] == []
    assert all(seen.lasted is not None and seen.lasted < 2 for seen in transient), [str(s) for s in transient]


# ---- without an autoscaler (the session's cluster) -------------------------------------------------


def test_without_an_autoscaler_the_request_waits_and_goes_before_the_replica_is_placed(
    local_cluster, operator, namespace, fleet, wait_for
):
    nodes = fleet({"inf2.48xlarge": 1})
    monitor = monitor_for(local_cluster.kubeconfig, node_selector=f"neuronplace.io/pool={nodes.pool}", keep=1000)
    monitor.start()
    try:
        apply(local_cluster, namespace, inference("big", cores=16, replicas=2, pool=nodes.pool, binding="Scheduler"))

        def waiting():
            requests = requests_of(local_cluster, namespace)
            resource = get_inference(local_cluster, namespace, "big")
            said = condition(resource, CONDITION_WAITING_FOR_CAPACITY)
            scheduled = [condition(r, CONDITION_POD_SCHEDULED).get("reason") for r in requests]
            if scheduled == ["Unschedulable"] and said.get("status") == "True":
                return requests, resource
            return None

        (request,), resource = wait_for(waiting, 60, "one capacity request and WaitingForCapacity")
        assert request["metadata"]["name"] == "big-1-capacity"
        assert INFERENCE_LABEL not in request["metadata"]["labels"]
        assert not request["spec"].get("nodeName") and request["status"]["phase"] == "Pending"
        assert request["spec"]["containers"][0]["resources"]["requests"][NEURONCORE_RESOURCE] == "16"
        assert condition(request, CONDITION_POD_SCHEDULED).get("reason") == "Unschedulable"
        assert condition(resource, CONDITION_PLACED).get("reason") == REASON_UNSCHEDULABLE
        said = condition(resource, CONDITION_WAITING_FOR_CAPACITY)
        assert said["reason"] == REASON_CAPACITY_REQUESTED and said["message"].startswith("replica 1: waiting")
        assert resource["status"]["replicas"] == 1, "a capacity request is no replica"

        # Nothing changes now but by a resync: one resync and a margin later, the same request
        # (none recreated).
        hold(
            lambda: (
                [r["metadata"]["uid"] for r in requests_of(local_cluster, namespace)] == [request["metadata"]["uid"]]
                or pytest.fail("the capacity request was recreated")
            ),
            TEST_TIMINGS["resync_seconds"] + 1,
        )

        # Room appears: kube-scheduler may bind the request there first; it must be gone before the
        # replica's pod is made there (the monitor counts both, as kube-scheduler does).
        fleet({"inf2.48xlarge": 1})
        wait_for(lambda: placed_and_ready(local_cluster, namespace, "big", 2), 60, "both replicas Running")
        wait_for(lambda: not requests_of(local_cluster, namespace), 30, "the request deleted")
        resource = get_inference(local_cluster, namespace, "big")
        assert not condition(resource, CONDITION_WAITING_FOR_CAPACITY)

        # Scaled up beyond the room, then down: no request is left behind.
        local_cluster.kubectl("scale", "ninf", "big", "-n", namespace, "--replicas=4")
        wait_for(lambda: len(requests_of(local_cluster, namespace)) == 2, 60, "two requests for replicas 2 and 3")
        local_cluster.kubectl("scale", "ninf", "big", "-n", namespace, "--replicas=2")
        wait_for(lambda: not requests_of(local_cluster, namespace), 60, "no request after scaling down")
    finally:
        report = monitor.stop()
    assert_never_overbooked(report)


# ---- with Karpenter (a cluster of their own) -------------------------------------------------------


@pytest.fixture(scope="module")
def scaled_operator(autoscaled_cluster: LocalCluster, binding: str) -> Iterator[OperatorProcess]:
    install_crd(autoscaled_cluster)
    process = OperatorFactory(autoscaled_cluster, dict(TEST_TIMINGS)).make(
        binding=binding, log_name="neuronplace-operator.log"
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def scaled_namespace(autoscaler, autoscaled_cluster: LocalCluster, scaled_operator) -> Iterator[str]:
    """A fresh namespace and the quick NodePool; when the test is done, its resources deleted and
    every node gone again."""
    autoscaler.apply(quick_node_pool())
    name = f"scale-{uuid.uuid4().hex[:6]}"
    cluster = autoscaled_cluster
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("-n", name, "wait", "--for=create", "serviceaccount/default", "--timeout=60s")
    if not scaled_operator.alive():
        scaled_operator.start()
    try:
        yield name
    finally:
        cluster.kubectl("delete", "ninf", "--all", "-n", name, "--wait=true", "--timeout=60s", check=False)
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
        poll("every node removed", lambda: not names(cluster, "nodes") and not names(cluster, "nodeclaims"), 180)


def test_from_no_node_two_replicas_get_a_node_and_it_goes_after_scaling_to_zero(
    autoscaled_cluster, scaled_namespace, record_property
):
    cluster, namespace = autoscaled_cluster, scaled_namespace
    assert names(cluster, "nodes") == [], "the autoscaled cluster has no node"

    def bounded() -> None:
        claims = names(cluster, "nodeclaims")
        assert len(claims) <= 1, f"2 x 8 cores fit one inf2.48xlarge; Karpenter claimed {claims}"
        one_request_per_replica(cluster, namespace)

    monitor = monitor_for(cluster.kubeconfig, keep=1000)
    monitor.start()
    try:
        started = time.monotonic()
        apply(cluster, namespace, inference("first", cores=8, replicas=2, nodeSelector=INF2_48, binding="Scheduler"))
        poll("both replicas Running", lambda: placed_and_ready(cluster, namespace, "first", 2), 180, bounded)
        to_running = time.monotonic() - started
        poll("no capacity request left", lambda: not requests_of(cluster, namespace), 30, bounded)
        (node,) = names(cluster, "nodes")
        held = assert_no_shared_cores(cluster)
        assert sorted(held) == [node] and len(held[node]) == 16

        cluster.kubectl("scale", "ninf", "first", "-n", namespace, "--replicas=0")
        emptied = time.monotonic()
        poll("the empty node removed", lambda: not names(cluster, "nodes"), 180, bounded)
        to_removed = time.monotonic() - emptied
        assert requests_of(cluster, namespace) == []
    finally:
        report = monitor.stop()
    assert_never_overbooked(report)
    record_property("seconds_apply_to_running", round(to_running, 1))
    record_property("seconds_scaled_to_zero_to_node_removed", round(to_removed, 1))
    print(
        f"apply -> 2 replicas Running on a new node: {to_running:.1f} s; scaled to 0 -> node removed: {to_removed:.1f} s"
    )


def test_three_resources_get_the_nodes_they_need_and_no_more(autoscaled_cluster, scaled_namespace, record_property):
    cluster, namespace = autoscaled_cluster, scaled_namespace

    def bounded() -> None:
        claims = names(cluster, "nodeclaims")
        assert len(claims) <= 3, f"six replicas of 12 cores need three 24-core nodes; Karpenter claimed {claims}"
        one_request_per_replica(cluster, namespace)

    monitor = monitor_for(cluster.kubeconfig, keep=1000)
    monitor.start()
    try:
        started = time.monotonic()
        apply(
            cluster,
            namespace,
            *(
                inference(name, cores=12, replicas=2, nodeSelector=INF2_48, binding="Scheduler")
                for name in ("a", "b", "c")
            ),
        )
        for name in ("a", "b", "c"):
            poll(f"{name}'s replicas Running", lambda n=name: placed_and_ready(cluster, namespace, n, 2), 240, bounded)
        to_running = time.monotonic() - started
        # No more nodes (Karpenter's provisioning rounds), no requests come back (a resync).
        hold(
            lambda: bounded() or requests_of(cluster, namespace) == [] or pytest.fail("a capacity request came back"),
            max(PROVISIONING_ROUNDS, TEST_TIMINGS["resync_seconds"] + 1),
        )
        assert len(names(cluster, "nodes")) == 3
        held = assert_no_shared_cores(cluster)
        assert all(len(cores) == 24 for cores in held.values()), held

        cluster.kubectl("delete", "ninf", "a", "b", "c", "-n", namespace, "--wait=true", "--timeout=60s")
        deleted = time.monotonic()
        poll("the empty nodes removed", lambda: not names(cluster, "nodes"), 240, bounded)
        to_removed = time.monotonic() - deleted
        assert requests_of(cluster, namespace) == []
    finally:
        report = monitor.stop()
    assert_never_overbooked(report)
    record_property("seconds_apply_to_running_3_nodes", round(to_running, 1))
    record_property("seconds_deleted_to_3_nodes_removed", round(to_removed, 1))
    print(
        f"3 resources -> 6 replicas Running on 3 new nodes: {to_running:.1f} s; deleted -> removed: {to_removed:.1f} s"
    )


def test_a_replica_no_node_pool_can_satisfy_says_so_and_makes_no_node(autoscaler, autoscaled_cluster, scaled_namespace):
    cluster, namespace = autoscaled_cluster, scaled_namespace
    autoscaler.apply(quick_node_pool(instance_types=["inf2.24xlarge", "inf2.48xlarge"]))
    try:
        apply(
            cluster,
            namespace,
            inference("trn", cores=8, nodeSelector={INSTANCE_TYPE_LABEL: "trn1.32xlarge"}, binding="Scheduler"),
        )

        def no_claim() -> None:
            assert names(cluster, "nodeclaims") == []

        def reported():
            resource = get_inference(cluster, namespace, "trn")
            requests = requests_of(cluster, namespace)
            said = condition(resource, CONDITION_WAITING_FOR_CAPACITY)
            return (resource, requests) if requests and said.get("status") == "True" else None

        resource, (request,) = poll("the request and WaitingForCapacity", reported, 60, no_claim)
        placed = condition(resource, CONDITION_PLACED)
        assert placed["reason"] == REASON_UNSCHEDULABLE and "8 contiguous cores" in placed["message"], placed

        def karpenter_refused():
            events = cluster.get_json(
                "-n", namespace, "events", "--field-selector", f"involvedObject.name={request['metadata']['name']}"
            )["items"]
            said = [
                e for e in events if "karpenter" in (e.get("source", {}).get("component"), e.get("reportingComponent"))
            ]
            return said

        said = poll("Karpenter's word on the request", karpenter_refused, 60, no_claim)
        print("Karpenter on the capacity request:", said[-1].get("reason"), said[-1].get("message"))
        hold(no_claim, PROVISIONING_ROUNDS)  # more provisioning rounds: still no node
        assert names(cluster, "nodes") == []
        assert len(requests_of(cluster, namespace)) == 1
    finally:
        autoscaler.apply(quick_node_pool())


def test_an_operator_killed_while_nodes_are_made_leaves_one_request_per_replica_and_places_all(
    autoscaled_cluster, scaled_operator, scaled_namespace
):
    cluster, namespace = autoscaled_cluster, scaled_namespace

    def bounded() -> None:
        claims = names(cluster, "nodeclaims")
        assert len(claims) <= 2, f"two replicas of 16 cores need two 24-core nodes; Karpenter claimed {claims}"
        one_request_per_replica(cluster, namespace)

    monitor = monitor_for(cluster.kubeconfig, keep=1000)
    monitor.start()
    try:
        apply(cluster, namespace, inference("kill", cores=16, replicas=2, nodeSelector=INF2_48, binding="Scheduler"))
        poll(
            "two requests and a node claimed",
            lambda: len(requests_of(cluster, namespace)) == 2 and names(cluster, "nodeclaims"),
            60,
            bounded,
        )
        scaled_operator.kill()
        # Karpenter goes on making nodes and kube-scheduler binds the requests there meanwhile.
        poll("a node while the operator is down", lambda: names(cluster, "nodes"), 60, bounded)
        poll(
            "a capacity request bound while the operator is down",
            lambda: any(r["spec"].get("nodeName") for r in requests_of(cluster, namespace)),
            60,
            bounded,
        )
        scaled_operator.start()
        poll("both replicas Running", lambda: placed_and_ready(cluster, namespace, "kill", 2), 180, bounded)
        poll("no capacity request left", lambda: not requests_of(cluster, namespace), 30, bounded)
        hold(bounded, PROVISIONING_ROUNDS)  # no third node
        assert len(names(cluster, "nodes")) == 2
        assert_no_shared_cores(cluster)
    finally:
        report = monitor.stop()
    assert_never_overbooked(report)
    placements = get_inference(cluster, namespace, "kill")["status"]["placements"]
    assert sorted(p["node"] for p in placements) == names(cluster, "nodes"), placements
