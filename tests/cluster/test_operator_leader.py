"""Two operators on one cluster with leader election (``neuronplace.operator.leader``): exactly one
holds the Lease and writes, the other writes nothing; a leader killed (SIGKILL), stopped (SIGTERM)
or frozen (SIGSTOP) is replaced, the frozen one writes nothing when it wakes and exits; the
invariant monitor watches every test.

The tests run shorter Lease timings than the product's (15/10/2 s) so that they take seconds;
every wait is derived from them. ``benchmarks/failover.py`` measures the product's.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from neuronplace.local.operator_process import free_port
from neuronplace.operator.leader import LOST_EXIT_CODE
from support.builders import inference
from support.cluster import apply, assert_no_shared_cores, live, placed_and_ready, pods_of
from support.metrics import scrape

pytestmark = pytest.mark.cluster

LEASE, RENEW, RETRY = 6.0, 4.0, 1.0
SLACK = 3.0  # a loaded 2-core machine: the follower's resync, kopf and the first reconcile
SCALE = 200  # the scale-up


def writes(process) -> float:
    """Write requests the operator has sent, the Lease's own excluded (0 when it cannot be scraped)."""
    return sum(
        count
        for (name, labels), count in scrape(process.metrics_url).items()
        if name == "neuronplace_api_writes_total" and dict(labels).get("resource") != "leases"
    )


@pytest.fixture
def lease_id(local_cluster):
    """A Lease of the test's own; gone afterwards (a killed leader leaves it held)."""
    name = f"ha-{uuid.uuid4().hex[:8]}"
    yield name
    local_cluster.kubectl("delete", "lease", name, "-n", "default", "--ignore-not-found", check=False)


@pytest.fixture
def pair(operator_factory, lease_id):
    """Two operators started one after the other: the first leads, the second follows."""

    def start(name: str):
        port = free_port()
        process = operator_factory(
            log_name=f"neuronplace-operator-{name}.log",
            metrics_port=port,
            pod_name=name,
            leader_election_id=lease_id,
            lease_duration_seconds=LEASE,
            renew_deadline_seconds=RENEW,
            retry_period_seconds=RETRY,
        )
        process.identity = name
        process.metrics_url = f"http://127.0.0.1:{port}/metrics"
        return process

    first = start("first")
    second = start("second")
    return first, second


def holder(cluster, lease_id: str) -> str:
    lease = cluster.get_json("lease", lease_id, "-n", "default")
    return lease["spec"].get("holderIdentity") or ""


def first_write_after(process, since: float, timeout: float) -> float:
    """Seconds from ``since`` (monotonic) until ``process`` has sent its first write."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if writes(process) > 0:
            return time.monotonic() - since
        time.sleep(0.1)  # the scrape's resolution
    raise TimeoutError(f"{process.identity} wrote nothing within {timeout:.0f}s:\n{process.log_tail(40)}")


def test_one_leader_writes_and_the_follower_writes_nothing(local_cluster, pair, lease_id, namespace, fleet, wait_for):
    leader, follower = pair
    nodes = fleet({"inf2.48xlarge": 1})
    apply(local_cluster, namespace, inference("alpha", cores=2, replicas=4, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "alpha", 4), 60, "alpha placed")
    local_cluster.kubectl("scale", "ninf", "alpha", "-n", namespace, "--replicas=2")
    wait_for(lambda: len(live(pods_of(local_cluster, namespace, "alpha"))) == 2, 60, "alpha scaled down")
    assert holder(local_cluster, lease_id) == leader.identity
    assert writes(leader) > 0
    assert writes(follower) == 0, "the follower wrote to the cluster"
    assert written_since(local_cluster, namespace, f"neuronplace@{follower.identity}", 0) == []
    assert written_since(local_cluster, namespace, f"neuronplace@{leader.identity}", 0)
    assert follower.health()["leader"] == {"identity": "second", "leading": False, "holder": "first"}
    cores = neuronplace(
        local_cluster, "cores", "--selector", f"neuronplace.io/pool={nodes.pool}", "--lease", f"default/{lease_id}"
    )
    assert f"leader: first (Lease default/{lease_id}, renewed" in cores
    status = neuronplace(local_cluster, "local", "status", NEURONPLACE_LEADER_ELECTION_ID=lease_id)
    ours = status.split(f"{local_cluster.name}:", 1)[1].splitlines()[1:]
    block = ours[: next((i for i, line in enumerate(ours) if not line.startswith(" ")), len(ours))]
    assert any(line.startswith(f"  leader: first (Lease default/{lease_id}, renewed") for line in block), status
    bad = subprocess.run(
        [sys.executable, "-m", "neuronplace.cli", "cores", "--lease", "nope"],
        env=local_cluster.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--lease must be NAMESPACE/NAME" in bad.stdout


def neuronplace(cluster, *args: str, **env: str) -> str:
    """What a ``neuronplace`` command printed (it must succeed)."""
    result = subprocess.run(
        [sys.executable, "-m", "neuronplace.cli", *args],
        env={**cluster.env(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def kill_after_creations(cluster, namespace: str, process, count: int, sig: int) -> float:
    """Send ``sig`` to ``process`` once ``count`` pods exist in ``namespace``; returns when (monotonic)."""
    from kubernetes import client, config, watch

    core = client.CoreV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
    since = core.list_namespaced_pod(namespace).metadata.resource_version
    seen = 0
    try:
        for event in watch.Watch().stream(
            core.list_namespaced_pod, namespace, timeout_seconds=120, resource_version=since
        ):
            if event["type"] == "ADDED":
                seen += 1
                if seen >= count:
                    break
    finally:
        process.process.send_signal(sig)
    return time.monotonic()


def test_sigkill_of_the_leader_mid_scale_up(local_cluster, pair, lease_id, namespace, fleet, wait_for):
    leader, follower = pair
    nodes = fleet({"inf2.48xlarge": 9})  # 216 cores for 200 one-core replicas
    apply(local_cluster, namespace, inference("wide", cores=1, replicas=1, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "wide", 1), 60, "wide placed")
    killed: list[float] = []
    killer = threading.Thread(
        target=lambda: killed.append(
            kill_after_creations(local_cluster, namespace, leader, SCALE // 3, signal.SIGKILL)
        ),
        daemon=True,
    )
    killer.start()
    local_cluster.kubectl("scale", "ninf", "wide", "-n", namespace, f"--replicas={SCALE}")
    killer.join(timeout=120)
    leader.process.wait(timeout=30)
    at_kill = len(pods_of(local_cluster, namespace, "wide"))
    assert at_kill < SCALE, "the scale-up finished before the kill: nothing was tested"
    took = first_write_after(follower, killed[0], LEASE + 2 * RETRY + SLACK + 10)
    print(f"{at_kill} of {SCALE} pods at the kill; the follower's first write {took:.1f}s after it")
    assert took <= LEASE + 2 * RETRY + SLACK
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "wide", SCALE), 180, f"wide at {SCALE}")
    assert holder(local_cluster, lease_id) == follower.identity
    pods = pods_of(local_cluster, namespace, "wide")
    assert sorted(p["metadata"]["name"] for p in pods) == sorted(f"wide-{i}" for i in range(SCALE))
    assert_no_shared_cores(local_cluster)


def test_sigterm_hands_over_within_seconds(local_cluster, pair, lease_id, namespace, fleet, wait_for):
    leader, follower = pair
    nodes = fleet({"inf2.48xlarge": 1})
    apply(local_cluster, namespace, inference("alpha", cores=2, replicas=2, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "alpha", 2), 60, "alpha placed")
    began = time.monotonic()
    leader.process.send_signal(signal.SIGTERM)
    wait_for(lambda: holder(local_cluster, lease_id) == follower.identity, 30, "the follower holding the Lease", 0.05)
    handover = time.monotonic() - began
    print(f"SIGTERM to the follower holding the Lease: {handover:.2f}s")
    assert handover <= 3.0
    assert leader.process.wait(timeout=30) == 0
    local_cluster.kubectl("scale", "ninf", "alpha", "-n", namespace, "--replicas=4")
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "alpha", 4), 60, "the new leader scaling up")
    assert_no_shared_cores(local_cluster)


def written_since(cluster, namespace: str, manager: str, since: float) -> list[str]:
    """What ``manager`` wrote in ``namespace`` after ``since`` (Unix seconds): pods, Events and the
    NeuronInferences' status, as their managedFields say (a deleted pod says nothing)."""
    found = []
    for kind in ("pods", "events", "neuroninferences"):
        for item in cluster.get_json(kind, "-n", namespace, "--show-managed-fields")["items"]:
            for entry in item["metadata"].get("managedFields") or []:
                if entry.get("manager") != manager:
                    continue
                # An entry without a time is the object's creation (kubectl's events have none).
                at = dt.datetime.fromisoformat(
                    (entry.get("time") or item["metadata"]["creationTimestamp"]).replace("Z", "+00:00")
                )
                if at.timestamp() >= since:
                    found.append(f"{kind} {item['metadata']['name']} {entry.get('subresource', '')} at {entry['time']}")
    return found


def test_a_frozen_leader_writes_nothing_when_it_wakes_and_exits(
    local_cluster, pair, lease_id, namespace, fleet, wait_for
):
    leader, follower = pair
    nodes = fleet({"inf2.48xlarge": 2})
    apply(local_cluster, namespace, inference("alpha", cores=2, replicas=4, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "alpha", 4), 60, "alpha placed")
    frozen = time.time()
    leader.process.send_signal(signal.SIGSTOP)
    try:
        # Frozen longer than the Lease: the follower takes over and acts meanwhile.
        wait_for(lambda: holder(local_cluster, lease_id) == follower.identity, LEASE + 2 * RETRY + SLACK, "takeover")
        local_cluster.kubectl("scale", "ninf", "alpha", "-n", namespace, "--replicas=12")
        wait_for(lambda: placed_and_ready(local_cluster, namespace, "alpha", 12), 60, "the new leader scaling up")
        # The old leader's watches hold these changes for it when it wakes: work it must not do.
        local_cluster.kubectl("scale", "ninf", "alpha", "-n", namespace, "--replicas=8")
    finally:
        leader.process.send_signal(signal.SIGCONT)
    assert leader.process.wait(timeout=RETRY + SLACK) == LOST_EXIT_CODE
    assert "leader election lost" in leader.log_tail(20)
    assert written_since(local_cluster, namespace, f"neuronplace@{leader.identity}", frozen + 1) == []
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "alpha", 8), 60, "the new leader scaling down")
    assert holder(local_cluster, lease_id) == follower.identity
    assert_no_shared_cores(local_cluster)
