"""The invariant monitor (``monitor.py``): it sees what the convergence check cannot.

The first tests feed it events by hand (no cluster): a double booking that appears and clears is
counted once, with how long it lasted. The cluster test injects a real one on the local control
plane: a hand-made pod claims a managed replica's cores for a few seconds and is deleted again. The
monitor, following the real watches, counts it; ``wait_converged`` afterwards (the check every
scenario used to rely on alone) reports nothing.
"""

from __future__ import annotations

import json
import random
import time

import pytest

from neuronplace.local.fleet import KWOK_TOLERATION, build_node
from neuronplace.local.reliability import harness as hs
from neuronplace.local.reliability import invariants as inv
from neuronplace.local.reliability.monitor import InvariantMonitor
from neuronplace.placement.names import AWS_NEURON_IDS, CORES_ANNOTATION, NEURONCORE_RESOURCE


def _foreign(name: str, node: str, ids: str, namespace: str = "other") -> dict:
    count = {NEURONCORE_RESOURCE: str(len(ids.split(",")))}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": {AWS_NEURON_IDS: ids}},
        "spec": {
            "nodeName": node,
            "tolerations": [dict(KWOK_TOLERATION)],
            "containers": [{"name": "c", "image": "other:1", "resources": {"requests": count, "limits": dict(count)}}],
        },
        "status": {"phase": "Running"},
    }


def _offline_monitor() -> InvariantMonitor:
    return InvariantMonitor(lambda: None)


def test_a_node_overfilled_with_cpu_is_seen_at_the_event_that_overfills_it():
    node = build_node("n-0", "inf2.48xlarge")  # 192 CPUs
    hungry = [_foreign(f"p{i}", "n-0", str(i)) for i in range(2)]
    for pod in hungry:
        pod["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "150"
    monitor = _offline_monitor()
    monitor._replace("nodes", [node])
    monitor._replace("pods", [hungry[0]])
    monitor._replace("inferences", [])
    assert monitor.violations == 0
    monitor._apply("pods", "ADDED", hungry[1])
    assert [(v.invariant, v.subject) for v in monitor.active()] == [("node-resources", "node n-0")]
    monitor._apply("pods", "DELETED", hungry[1])
    assert monitor.active() == [] and monitor.violations == 1


def test_a_double_booking_is_counted_once_with_how_long_it_lasted():
    node = build_node("n-0", "inf2.xlarge")  # 2 cores
    monitor = _offline_monitor()
    monitor._replace("nodes", [node])
    monitor._replace("pods", [_foreign("first", "n-0", "0,1")])
    monitor._replace("inferences", [])
    assert monitor.violations == 0
    intruder = _foreign("intruder", "n-0", "1")
    monitor._apply("pods", "ADDED", intruder)
    monitor._apply("pods", "MODIFIED", intruder)  # still there: the same violation, not a new one
    assert monitor.violations == 2  # core 1 twice, and 3 cores held on a 2-core node
    assert {v.invariant for v in monitor.active()} == {"exclusive-cores"}
    time.sleep(0.05)  # the violation must last a measurable while: its duration is what is checked below
    monitor._apply("pods", "DELETED", intruder)
    assert monitor.active() == []
    assert monitor.violations == 2
    assert all(seen.lasted is not None and seen.lasted >= 0.05 for seen in monitor.report.first)
    assert "held by both other/" in str(monitor.report.first[0])


def test_a_terminating_pod_still_counts():
    node = build_node("n-0", "inf2.xlarge")
    monitor = _offline_monitor()
    monitor._replace("nodes", [node])
    old = _foreign("old", "n-0", "0,1")
    old["metadata"]["deletionTimestamp"] = "2026-11-30T00:00:00Z"
    monitor._replace("pods", [old])
    monitor._apply("pods", "ADDED", _foreign("new", "n-0", "0,1"))
    assert monitor.violations >= 1


def test_pods_are_checked_only_in_scope_but_cores_everywhere():
    node = build_node("n-0", "inf2.xlarge")
    monitor = InvariantMonitor(lambda: None, namespaces=["mine"])
    monitor._replace("nodes", [node])
    broken = _foreign("managed-looking", "n-0", "0", namespace="theirs")
    broken["metadata"]["labels"] = {"neuronplace.io/inference": "x"}
    broken["metadata"]["annotations"][CORES_ANNOTATION] = "0"  # no NEURON_RT_VISIBLE_CORES: inconsistent
    monitor._apply("pods", "ADDED", broken)
    assert monitor.violations == 0  # another namespace's pod: not this monitor's pod-consistency
    monitor._apply("pods", "ADDED", _foreign("overlap", "n-0", "0", namespace="anywhere"))
    assert [v.invariant for v in monitor.active()] == ["exclusive-cores"]


def test_a_pod_outside_its_resource_namespace_is_caught():
    monitor = _offline_monitor()
    monitor._replace("inferences", [{"metadata": {"name": "bert", "namespace": "ml", "uid": "u-1"}}])
    pod = _foreign("bert-0", "n-0", "0", namespace="elsewhere")
    pod["metadata"]["ownerReferences"] = [{"kind": "NeuronInference", "name": "bert", "uid": "u-1", "controller": True}]
    monitor._apply("pods", "ADDED", pod)
    assert [v.invariant for v in monitor.active()] == ["pod-namespace"]


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_monitor_catches_a_short_double_booking_that_convergence_misses(
    local_cluster, reliability_crd, operator_process
):
    operator_process.stop()  # the shared operator watches every namespace: the harness runs its own
    record = hs.ChaosRecord()
    world = hs.Harness(local_cluster, "monitor_catches_double_booking", random.Random(1), record)
    world.open()
    try:
        node = world.fleet({"inf2.xlarge": 1})[0]  # 2 cores
        world.apply(world.inference("held", replicas=1, cores=2))
        world.converge(extra=lambda snapshot: [] if world.managed_pods(snapshot) else [inv.Violation("x", "held", "")])
        assert world.monitor.violations == 0, world.monitor.report.first
        # A pod nobody manages, bound by hand to the same node, claiming the same two cores.
        intruder = _foreign("intruder", node, "0,1", namespace=world.namespace)
        intruder.pop("status")
        world.cluster.kubectl("create", "-f", "-", input=json.dumps(intruder))
        deadline = time.monotonic() + 30
        while not world.monitor.active():
            assert time.monotonic() < deadline, "the monitor never saw the double booking"
            time.sleep(0.1)  # the poll interval: what is awaited is the monitor's verdict
        # A few seconds of double booking, on purpose: how long it lasted is what is checked below.
        time.sleep(3)
        world.kubectl("delete", "pod", "intruder", "--grace-period=0", "--force", "--wait=true")
        deadline = time.monotonic() + 30
        while world.monitor.active():
            assert time.monotonic() < deadline, f"the double booking never cleared: {world.monitor.active()}"
            time.sleep(0.1)  # the poll interval: what is awaited is the monitor's verdict
        # The check scenarios ran before the monitor: clean, as if nothing had happened.
        seconds, _ = inv.wait_converged(world.snapshot, 30)
        assert seconds < 30
    finally:
        world.close()
    report = world.monitor_report
    assert report is not None
    assert report.violations >= 1
    overlap = [
        s for s in report.first if s.violation.invariant == "exclusive-cores" and "held by both" in s.violation.detail
    ]
    assert overlap, report.first
    assert all(s.lasted is not None and 2.5 <= s.lasted < 30 for s in overlap), [str(s) for s in overlap]
    assert record.transient == report.violations
