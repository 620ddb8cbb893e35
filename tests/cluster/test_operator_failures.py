"""Replicas whose pods keep failing, on the real control plane, in the session's binding mode: the
simulated kubelet (``neuronplace.local.kubelet_faults``) rejects a replica's pods, or its containers
exit under ``restartPolicy: Never``. The operator must recreate such a replica with a growing
backoff, never in a create/delete loop; move a rejected replica to a node that takes it; and say why
in a ``ReplicaFailure`` condition.

Pod creations are counted from a watch of the test's replica pods (every pod ADDED, by uid: a
recreated replica keeps its pod name). While the counting runs, every second checks that a replica
never has two live pods at once."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from operator_support import apply, condition, get_inference, inference, live, pods_of

from neuronplace.local import kubelet_faults as faults
from neuronplace.placement.names import CONDITION_REPLICA_FAILURE, INFERENCE_LABEL, TERMINAL_PHASES

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.both_bindings]


class PodCreations(threading.Thread):
    """Every replica pod (``INFERENCE_LABEL``; not the capacity requests the operator may make for
    a replica that fits nowhere) ADDED to a namespace, as a watch sees it: uid -> monotonic time
    first seen."""

    def __init__(self, cluster, namespace: str) -> None:
        super().__init__(daemon=True, name=f"creations-{namespace}")
        from kubernetes import client, config

        self.core = client.CoreV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
        self.namespace = namespace
        self.added: dict[str, float] = {}
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
                try:
                    for event in stream.stream(
                        self.core.list_namespaced_pod,
                        self.namespace,
                        label_selector=INFERENCE_LABEL,
                        timeout_seconds=5,
                        **resume,
                    ):
                        if event["type"] == "ADDED":
                            with self.lock:
                                self.added.setdefault(event["object"].metadata.uid, time.monotonic())
                    version = stream.resource_version
                except ApiException as error:
                    if error.status != 410:  # 410 Gone: too old to resume from; list again
                        raise
                    version = None
        except BaseException as error:  # reported by times()
            self.error = error

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=15)

    def times(self) -> list[float]:
        """Seconds since the watch started at which each pod was first seen, in order."""
        if self.error is not None:
            raise RuntimeError(f"watching pods of {self.namespace} failed: {self.error}") from self.error
        with self.lock:
            return sorted(seen - self.started_at for seen in self.added.values())


def failing(resource: dict, annotations: dict, restart_policy: str | None = None) -> dict:
    template = resource["spec"]["template"]
    template["metadata"].setdefault("annotations", {}).update(annotations)
    if restart_policy:
        template["spec"]["restartPolicy"] = restart_policy
    return resource


def live_pods(cluster, namespace: str, name: str) -> list[dict]:
    return [p for p in live(pods_of(cluster, namespace, name)) if p["status"].get("phase") not in TERMINAL_PHASES]


def watch_for(cluster, namespace: str, name: str, seconds: float) -> list[dict]:
    """For ``seconds``: once a second, the replica's live pods must be at most one. Returns the
    ReplicaFailure conditions seen (one per second)."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pods = live_pods(cluster, namespace, name)
        assert len(pods) <= 1, f"replica 0 has {len(pods)} live pods at once: {[p['metadata']['uid'] for p in pods]}"
        seen.append(condition(get_inference(cluster, namespace, name), CONDITION_REPLICA_FAILURE))
        time.sleep(1)
    return seen


def assert_rejection_reported(conditions: list[dict]) -> None:
    reported = [c for c in conditions if c.get("status") == "True"]
    assert reported, f"no ReplicaFailure condition True in {len(conditions)} looks: {conditions[-1:]}"
    last = reported[-1]
    assert "OutOfcpu" in f"{last.get('reason')} {last.get('message')}", last


def test_always_rejected_replica_backs_off_and_shows_replica_failure(local_cluster, operator, namespace, fleet):
    nodes = fleet({"inf2.48xlarge": 1})
    creations = PodCreations(local_cluster, namespace)
    creations.start()
    try:
        apply(local_cluster, namespace, failing(inference("svc", pool=nodes.pool), faults.rejected_on(faults.ANY_NODE)))
        conditions = watch_for(local_cluster, namespace, "svc", 120)
        times = creations.times()
    finally:
        creations.stop()
    first = times[0]
    in_two_minutes = [t for t in times if t - first <= 120]
    print(f"always rejected: pods created at {[round(t - first, 1) for t in times]} s")
    assert 2 <= len(in_two_minutes) <= 7, f"pods created at {[round(t - first, 1) for t in times]} s"
    assert_rejection_reported(conditions)
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
    local_cluster, operator, namespace, fleet
):
    nodes = fleet({"inf2.48xlarge": 1})
    creations = PodCreations(local_cluster, namespace)
    creations.start()
    try:
        resource = failing(inference("svc", pool=nodes.pool), faults.exits_after(1, code=1), restart_policy="Never")
        apply(local_cluster, namespace, resource)
        conditions = watch_for(local_cluster, namespace, "svc", 60)
        times = creations.times()
    finally:
        creations.stop()
    first = times[0]
    in_a_minute = [t - first for t in times if t - first <= 60]
    print(f"exiting: pods created at {[round(t, 1) for t in in_a_minute]} s")
    # Each pod lives about a second: a loop would make dozens. The backoff (10 s, 20 s, 40 s ...)
    # allows three or four.
    assert 2 <= len(in_a_minute) <= 5, f"pods created at {[round(t, 1) for t in in_a_minute]} s"
    gaps = [b - a for a, b in itertools.pairwise(in_a_minute)]
    assert gaps[0] >= 5, f"recreated {gaps[0]:.1f} s after the first pod: no backoff"
    if len(gaps) > 1:
        assert gaps[1] > gaps[0], f"the backoff does not grow: gaps {[round(g, 1) for g in gaps]} s"
    assert any(c.get("status") == "True" for c in conditions), f"no ReplicaFailure condition: {conditions[-1:]}"
