"""Replicas whose pods keep failing, on the real control plane, in the session's binding mode: the
simulated kubelet (``neuronplace.local.kubelet_faults``) rejects a replica's pods, or its containers
exit under ``restartPolicy: Never``. The operator must recreate such a replica with a growing
backoff, never in a create/delete loop; move a rejected replica to a node that takes it; and say why
in a ``ReplicaFailure`` condition.

The operator runs with the test bed's short failure backoff (``TEST_TIMINGS``: 2 s doubling), so a
few attempts take seconds. Pod creations are counted from a watch of the test's replica pods (every
pod ADDED, by uid: a recreated replica keeps its pod name); the same watch checks, at every event,
that a replica never has two live pods at once."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from neuronplace.local import kubelet_faults as faults
from neuronplace.local.operator_process import TEST_TIMINGS
from neuronplace.placement.names import CONDITION_REPLICA_FAILURE, INFERENCE_LABEL, TERMINAL_PHASES
from support.builders import inference
from support.cluster import apply, condition, get_inference, live, pods_of

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.both_bindings]

BACKOFF = TEST_TIMINGS["failure_backoff_seconds"]
# What a watch event may reach the test later than another (the gaps below are measured here).
JITTER = 0.5


class PodCreations(threading.Thread):
    """Every replica pod (``INFERENCE_LABEL``; not the capacity requests the operator may make for
    a replica that fits nowhere) ADDED to a namespace, as a watch sees it: uid -> monotonic time
    first seen. At every event it also counts the live pods (not ended, not being deleted): the
    tests here run one replica, so two at once is a double (kept in ``doubled``)."""

    def __init__(self, cluster, namespace: str) -> None:
        super().__init__(daemon=True, name=f"creations-{namespace}")
        from kubernetes import client, config

        self.core = client.CoreV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
        self.namespace = namespace
        self.added: dict[str, float] = {}
        self.live: set[str] = set()
        self.doubled: list[list[str]] = []
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        stream = watch.Watch()
        version = None  # a fresh list: ADDED for every pod there is (seen twice, counted once)
        try:
            while not self._stopping.is_set():
                resume = {"resource_version": version} if version else {}
                if not version:
                    with self.lock:
                        self.live.clear()  # the list says again which pods there are
                try:
                    for event in stream.stream(
                        self.core.list_namespaced_pod,
                        self.namespace,
                        label_selector=INFERENCE_LABEL,
                        timeout_seconds=5,
                        **resume,
                    ):
                        self._see(event["type"], event["object"])
                    version = stream.resource_version
                except ApiException as error:
                    if error.status != 410:  # 410 Gone: too old to resume from; list again
                        raise
                    version = None
        except BaseException as error:  # reported by times()
            self.error = error

    def _see(self, kind: str, pod) -> None:
        uid = pod.metadata.uid
        with self.lock:
            if kind == "ADDED":
                self.added.setdefault(uid, time.monotonic())
            ended = pod.status is not None and pod.status.phase in TERMINAL_PHASES
            if kind == "DELETED" or ended or pod.metadata.deletion_timestamp:
                self.live.discard(uid)
            else:
                self.live.add(uid)
            if len(self.live) > 1:
                self.doubled.append(sorted(self.live))

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=15)

    def times(self) -> list[float]:
        """Seconds since the watch started at which each pod was first seen, in order."""
        if self.error is not None:
            raise RuntimeError(f"watching pods of {self.namespace} failed: {self.error}") from self.error
        with self.lock:
            return sorted(seen - self.started_at for seen in self.added.values())

    def attempts(self, count: int) -> list[float] | None:
        """The first ``count`` creation times once there are that many (None before)."""
        times = self.times()
        return times[:count] if len(times) >= count else None


def failing(resource: dict, annotations: dict, restart_policy: str | None = None) -> dict:
    template = resource["spec"]["template"]
    template["metadata"].setdefault("annotations", {}).update(annotations)
    if restart_policy:
        template["spec"]["restartPolicy"] = restart_policy
    return resource


def live_pods(cluster, namespace: str, name: str) -> list[dict]:
    return [p for p in live(pods_of(cluster, namespace, name)) if p["status"].get("phase") not in TERMINAL_PHASES]


def replica_failure(cluster, namespace: str, name: str, says: str) -> dict | None:
    """The ReplicaFailure condition once it is True and says ``says`` (None before)."""
    failure = condition(get_inference(cluster, namespace, name), CONDITION_REPLICA_FAILURE)
    return (
        failure
        if failure.get("status") == "True" and says in f"{failure.get('reason')} {failure.get('message')}"
        else None
    )


def assert_backoff(gaps: list[float], least: list[float]) -> None:
    """Each gap between two attempts is at least what the backoff says (a loop's are near 0)."""
    shown = [round(g, 1) for g in gaps]
    assert all(gap >= floor for gap, floor in zip(gaps, least)), f"gaps {shown} s; at least {least} s expected"


def test_always_rejected_replica_backs_off_and_shows_replica_failure(
    local_cluster, operator, namespace, fleet, wait_for
):
    nodes = fleet({"inf2.48xlarge": 1})
    creations = PodCreations(local_cluster, namespace)
    creations.start()
    try:
        apply(local_cluster, namespace, failing(inference("svc", pool=nodes.pool), faults.rejected_on(faults.ANY_NODE)))
        # Four attempts: the waits before the 2nd, 3rd and 4th are one, two and four backoff steps
        # (the only node, which refused, is avoided for twice that: longer, never shorter).
        times = wait_for(lambda: creations.attempts(4), 60 + 30 * BACKOFF, "four attempts")
        failure = wait_for(
            lambda: replica_failure(local_cluster, namespace, "svc", "OutOfcpu"), 30, "ReplicaFailure: OutOfcpu"
        )
    finally:
        creations.stop()
    print(f"always rejected: pods created at {[round(t - times[0], 1) for t in times]} s")
    assert creations.doubled == [], f"two live pods of replica 0 at once: {creations.doubled[:3]}"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert_backoff(gaps, [BACKOFF * 2**i - JITTER for i in range(3)])
    assert "OutOfcpu" in f"{failure.get('reason')} {failure.get('message')}", failure
    warnings = local_cluster.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=svc,type=Warning",
        "-o",
        "jsonpath={.items[*].message}",
    ).stdout
    assert "OutOfcpu" in warnings or "enough resource: cpu" in warnings, f"no Warning event says why: {warnings!r}"


def test_rejected_replica_lands_on_another_node_that_takes_it(local_cluster, operator, namespace, fleet, wait_for):
    (rejecting,) = fleet({"inf2.48xlarge": 1})
    apply(local_cluster, namespace, failing(inference("svc", pool=fleet.pool), faults.rejected_on([rejecting])))

    def rejected():
        pods = pods_of(local_cluster, namespace, "svc")
        return [p for p in pods if p["status"].get("reason") == "OutOfcpu" and p["spec"].get("nodeName") == rejecting]

    wait_for(rejected, 60, f"the first pod rejected on {rejecting}")
    (taking,) = fleet({"inf2.48xlarge": 1})  # the same pool: now a node that takes the pod exists

    def running_elsewhere():
        pods = live_pods(local_cluster, namespace, "svc")
        return [p for p in pods if p["status"].get("phase") == "Running" and p["spec"].get("nodeName") == taking]

    wait_for(running_elsewhere, 90, f"replica 0 Running on {taking}")
    nodes_used = {p["spec"].get("nodeName") for p in pods_of(local_cluster, namespace, "svc")}
    assert nodes_used <= {rejecting, taking}
    wait_for(lambda: get_inference(local_cluster, namespace, "svc")["status"].get("readyReplicas") == 1, 30, "ready")


def test_container_exiting_under_restart_policy_never_is_recreated_with_backoff(
    local_cluster, operator, namespace, fleet, wait_for
):
    nodes = fleet({"inf2.48xlarge": 1})
    runs = 1  # seconds each pod's container runs before it exits
    creations = PodCreations(local_cluster, namespace)
    creations.start()
    try:
        resource = failing(inference("svc", pool=nodes.pool), faults.exits_after(runs, code=1), restart_policy="Never")
        apply(local_cluster, namespace, resource)
        times = wait_for(lambda: creations.attempts(4), 60 + 20 * BACKOFF, "four attempts")
        wait_for(lambda: replica_failure(local_cluster, namespace, "svc", ""), 30, "a ReplicaFailure condition")
    finally:
        creations.stop()
    print(f"exiting: pods created at {[round(t - times[0], 1) for t in times]} s")
    assert creations.doubled == [], f"two live pods of replica 0 at once: {creations.doubled[:3]}"
    # Each pod runs about a second, then the replica waits 2 s, 4 s, 8 s: a loop would recreate it
    # a second or two after each, a backoff that does not grow would leave the gaps alike.
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert_backoff(gaps, [runs + BACKOFF * 2**i - JITTER for i in range(3)])
    assert gaps[2] > gaps[0], f"the backoff does not grow: gaps {[round(g, 1) for g in gaps]} s"
