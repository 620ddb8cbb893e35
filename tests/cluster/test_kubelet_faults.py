"""The simulated kubelet faults (``neuronplace.local.kubelet_faults``) on the real control plane:
a marked pod is rejected at admission on the nodes it names and runs elsewhere; a marked container
exits after a delay when its restart policy makes that final; unmarked pods never notice. Plain
pods, no operator: this is the test bed the operator's failure tests stand on."""

from __future__ import annotations

import json
import time

import pytest

from neuronplace.local import kubelet_faults as faults
from neuronplace.local.fleet import KWOK_TOLERATION

pytestmark = pytest.mark.cluster


def pod(name: str, annotations: dict, node: str | None = None, pin: str | None = None, restart: str = "Always") -> dict:
    """A plain pod on a kwok node: bound with ``nodeName`` to ``node``, or left for kube-scheduler
    and pinned to ``pin`` by required node affinity on ``metadata.name`` (as the operator's
    Scheduler mode creates its pods)."""
    spec: dict = {
        "containers": [{"name": "main", "image": "example.invalid/model:1"}],
        "tolerations": [KWOK_TOLERATION],
        "restartPolicy": restart,
    }
    if node:
        spec["nodeName"] = node
    if pin:
        term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [pin]}]}
        spec["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": annotations}, "spec": spec}


def create(cluster, namespace: str, *pods: dict) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(pods)})
    cluster.kubectl("-n", namespace, "create", "-f", "-", input=body)


def status_of(cluster, namespace: str, name: str) -> dict:
    return cluster.get_json("-n", namespace, "pod", name)["status"]


def wait_phase(cluster, namespace: str, name: str, phases: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = status_of(cluster, namespace, name)
        if status.get("phase") in phases:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"pod {name} not {sorted(phases)} after {timeout:.0f} s: {status}")
        time.sleep(0.25)  # the poll interval: what is awaited is the pod's phase


def test_marked_pod_is_rejected_only_on_the_nodes_it_names(local_cluster, namespace, fleet):
    bad, good = fleet({"inf2.48xlarge": 2})
    marks = faults.rejected_on([bad])
    create(
        local_cluster,
        namespace,
        pod("on-bad", marks, node=bad),
        pod("on-good", marks, node=good),
        pod("pinned-bad", marks, pin=bad),  # bound later, by kube-scheduler
        pod("unmarked", {}, node=bad),
        pod("custom", faults.rejected_on("*", "OutOfmemory"), node=good),
    )
    for name in ("on-bad", "pinned-bad"):
        status = wait_phase(local_cluster, namespace, name, {"Failed", "Running"})
        assert status["phase"] == "Failed", (name, status)
        assert status["reason"] == "OutOfcpu"
        assert status["message"] == "Pod was rejected: Node didn't have enough resource: cpu"
        assert not status.get("containerStatuses"), "a rejected pod never started a container"
    assert local_cluster.get_json("-n", namespace, "pod", "pinned-bad")["spec"]["nodeName"] == bad
    custom = wait_phase(local_cluster, namespace, "custom", {"Failed", "Running"})
    assert (custom["phase"], custom["reason"]) == ("Failed", "OutOfmemory")
    assert custom["message"] == "Pod was rejected: Node didn't have enough resource: memory"
    for name in ("on-good", "unmarked"):
        local_cluster.kubectl("-n", namespace, "wait", f"pod/{name}", "--for=condition=Ready", "--timeout=60s")
    # Failed is final: kwok's other stages leave the rejected pod as it is. Nothing announces that a
    # stage did not fire; kwok's pod stages here fire within a second of their condition (the
    # Running ones above took that long), so two seconds later the phase must still be Failed.
    time.sleep(2)
    assert status_of(local_cluster, namespace, "on-bad")["phase"] == "Failed"


def test_marked_container_exits_when_its_restart_policy_ends_the_pod(local_cluster, namespace, fleet):
    (node,) = fleet({"inf2.48xlarge": 1})
    create(
        local_cluster,
        namespace,
        pod("fails", faults.exits_after(2, code=3), node=node, restart="Never"),
        pod("completes", faults.exits_after(2, code=0), node=node, restart="OnFailure"),
        pod("restarts", faults.exits_after(2, code=3), node=node, restart="OnFailure"),
        pod("always", faults.exits_after(2, code=0), node=node, restart="Always"),
    )
    for name in ("restarts", "always"):
        local_cluster.kubectl("-n", namespace, "wait", f"pod/{name}", "--for=condition=Ready", "--timeout=60s")
    started = time.monotonic()
    failed = wait_phase(local_cluster, namespace, "fails", {"Failed", "Succeeded"})
    assert failed["phase"] == "Failed"
    (container,) = failed["containerStatuses"]
    assert container["state"]["terminated"]["exitCode"] == 3
    assert container["state"]["terminated"]["reason"] == "Error"
    assert {c["type"]: c["status"] for c in failed["conditions"]}["Ready"] == "False"
    completed = wait_phase(local_cluster, namespace, "completes", {"Failed", "Succeeded"})
    assert completed["phase"] == "Succeeded"
    assert completed["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    # A kubelet restarts these containers in place; the pods stay Running past the delay: the exit
    # comes 2 s after each start (exits_after(2)), so at 4 s each has exited at least once, and
    # nothing but the clock says so.
    time.sleep(max(0.0, 4 - (time.monotonic() - started)))
    for name in ("restarts", "always"):
        assert status_of(local_cluster, namespace, name)["phase"] == "Running", name
