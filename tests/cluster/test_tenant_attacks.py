"""The attacks of issue 24, each made on the real API server by a tenant with nothing but the built-in
``edit`` role in its namespace (impersonated: ``kubectl --as=tenant``), against the shared operator:

1. one ``kubectl annotate`` on a running replica must not get the next replica the cores the first
   one's process holds (its spec's ``NEURONPLACE_NODE_CORES``); the edit is reported (a Warning
   Event, ``neuronplace cores``);
2. a pod pinned to a node that kube-scheduler will never bind there (scheduling gates, or more cpu
   than the node has) must not make that node look full;
3. a pinned, never-bound look-alike carrying the inference label must not stop capacity requests;
4. a pod holding a replica's name must be reported (``ReplicaFailure`` naming it, with the failure
   backoff), not retried hot for ever; once it is gone the replica is created.

Each one was seen failing on the code before issue 24.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from neuronplace.local.fleet import KWOK_TOLERATION
from neuronplace.local.operator_process import TEST_TIMINGS
from neuronplace.placement.names import (
    AWS_NEURON_IDS,
    CAPACITY_REQUEST_LABEL,
    CONDITION_REPLICA_FAILURE,
    CORES_ANNOTATION,
    ENV_NODE_CORES,
    INFERENCE_LABEL,
    NEURONCORE_RESOURCE,
)
from neuronplace.placement.pods import pin_to_node
from neuronplace.runtime.coreset import CoreRange
from support.builders import inference
from support.cluster import apply, condition, core_map, env_of, get_inference, live, placed_and_ready, pods_of

pytestmark = pytest.mark.cluster

TENANT = "tenant"


@pytest.fixture
def tenant(local_cluster, namespace):
    """``kubectl`` in the test's namespace as a user bound to the built-in ``edit`` role there."""
    local_cluster.kubectl(
        "create", "rolebinding", "tenant-edit", "--clusterrole=edit", f"--user={TENANT}", "-n", namespace
    )

    def as_tenant(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return local_cluster.kubectl(*args, "-n", namespace, f"--as={TENANT}", input=input)

    return as_tenant


def tenant_pod(name: str, *, node: str | None = None, cores: int = 0, cpu: str | None = None, gated=False, labels=None):
    """A tenant's pod: pinned to ``node`` by matchFields (as a DaemonSet pod is), or going nowhere."""
    limits = {NEURONCORE_RESOURCE: str(cores)} if cores else {}
    if cpu:
        limits["cpu"] = cpu
    spec: dict = {
        "tolerations": [KWOK_TOLERATION],
        "containers": [{"name": "c", "image": "tenant:1", "resources": {"limits": limits}}],
    }
    if node:
        spec["affinity"] = pin_to_node(None, node)
    else:
        spec["nodeSelector"] = {"tenant.example/nowhere": "true"}  # never scheduled anywhere
    if gated:
        spec["schedulingGates"] = [{"name": "tenant.example/hold"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def spec_cores(pod: dict) -> set[int]:
    """The node-global cores a replica's spec gives its processes."""
    return {core for c in pod["spec"]["containers"] for core in CoreRange.parse(env_of(c)[ENV_NODE_CORES]).ids}


def events(cluster, namespace: str, reason: str) -> list[dict]:
    items = cluster.get_json("events", "-n", namespace, "--field-selector", f"reason={reason}")["items"]
    return [e for e in items if e["involvedObject"].get("kind") == "NeuronInference"]


def test_an_annotation_edit_does_not_give_a_replicas_cores_again(
    local_cluster, operator, namespace, fleet, wait_for, tenant
):
    nodes = fleet({"inf2.48xlarge": 1})
    apply(local_cluster, namespace, inference("web", cores=4, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "web", 1), 90, "web-0 Running")
    [first] = live(pods_of(local_cluster, namespace, "web"))
    really = spec_cores(first)
    moved = CoreRange(20, 4) if not really & set(range(20, 24)) else CoreRange(0, 4)
    tenant(
        "annotate",
        "pod",
        "web-0",
        "--overwrite",
        f"{CORES_ANNOTATION}={moved}",
        f"{AWS_NEURON_IDS}={','.join(map(str, moved.ids))}",
    )
    local_cluster.kubectl("patch", "ninf", "web", "-n", namespace, "--type=merge", "-p", '{"spec":{"replicas":2}}')
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "web", 2), 90, "web-1 Running")
    second = next(p for p in live(pods_of(local_cluster, namespace, "web")) if p["metadata"]["name"] == "web-1")
    assert not spec_cores(second) & really, "web-1 got cores web-0's process holds"
    assert not spec_cores(second) & set(moved.ids)  # and none the edit named: the union is held

    [warning] = wait_for(lambda: events(local_cluster, namespace, "CoresMismatch"), 60, "a CoresMismatch Warning")
    assert warning["type"] == "Warning" and f"pod {namespace}/web-0" in warning["message"]
    assert f"inconsistent: {namespace}/web-0 CoresMismatch" in core_map(local_cluster, nodes.pool)


def test_pods_pinned_where_they_can_never_run_do_not_fill_a_node(
    local_cluster, operator, namespace, fleet, wait_for, tenant
):
    nodes = fleet({"inf2.48xlarge": 1})
    node = nodes[0]
    gated = tenant_pod("gated", node=node, cores=24, gated=True)
    greedy = tenant_pod("greedy", node=node, cores=24, cpu="100000")  # more cpu than any node has
    tenant("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [gated, greedy]}))

    apply(local_cluster, namespace, inference("whole", cores=24, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "whole", 1), 90, "the whole-node replica Running")
    lines = core_map(local_cluster, nodes.pool)
    assert f"not holding: {namespace}/gated SchedulingGated" in lines
    assert f"not holding: {namespace}/greedy ExceedsNode" in lines


def test_a_pinned_look_alike_does_not_stop_capacity_requests(
    local_cluster, operator, namespace, fleet, wait_for, tenant
):
    nodes = fleet({"inf2.48xlarge": 1})
    decoy = tenant_pod("decoy", node=nodes[0], gated=True, labels={INFERENCE_LABEL: "decoy"})
    tenant("create", "-f", "-", input=json.dumps(decoy))

    apply(local_cluster, namespace, inference("big", cores=32, pool=nodes.pool))  # fits on no node
    [request] = wait_for(
        lambda: live(local_cluster.get_json("pods", "-n", namespace, "-l", f"{CAPACITY_REQUEST_LABEL}=big")["items"]),
        60,
        "a capacity request for big's replica",
    )
    assert request["metadata"]["name"] == "big-0-capacity"


def test_a_pod_holding_a_replicas_name_is_reported_and_not_retried_hot(
    local_cluster, operator, namespace, fleet, wait_for, tenant
):
    nodes = fleet({"inf2.48xlarge": 1})
    tenant("create", "-f", "-", input=json.dumps(tenant_pod("web-0")))  # made before the inference

    apply(local_cluster, namespace, inference("web", cores=2, replicas=2, pool=nodes.pool))
    failure = wait_for(
        lambda: (
            found
            if (found := condition(get_inference(local_cluster, namespace, "web"), CONDITION_REPLICA_FAILURE)).get(
                "reason"
            )
            == "NameTaken"
            else None
        ),
        60,
        "ReplicaFailure naming the pod that holds web-0's name",
    )
    assert failure["status"] == "True" and f"pod {namespace}/web-0 exists" in failure["message"]
    assert "delete or rename" in failure["message"]
    web_1 = [p for p in live(pods_of(local_cluster, namespace, "web")) if p["metadata"]["name"] == "web-1"]
    assert len(web_1) == 1  # the other replica is not held up

    # Nothing announces "no more tries": watch for a while. With the tests' failure backoff (2 s,
    # doubling), tries come at 0, 2, 6, 14 s...: at most `retries` fit in the window, counting the
    # one already reported; a hot loop would post hundreds.
    window, first = 15.0, TEST_TIMINGS["failure_backoff_seconds"]
    retries = 1 + sum(1 for k in range(16) if first * (2**k - 1) <= window + first)
    time.sleep(window)
    assert len(events(local_cluster, namespace, "NameTaken")) <= retries

    tenant("delete", "pod", "web-0", "--wait=false")
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "web", 2), 90, "web-0 created once the name is free")
