"""Reading and checking the cluster in the operator's cluster tests: apply resources, read them and
their pods back, and the invariants every test checks (no core held twice, a pod's annotations, env
and requests agree)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict

from neuronplace.local.autoscaler import TEST_CONSOLIDATE_AFTER, build_node_pool
from neuronplace.local.fleet import POOL_LABEL
from neuronplace.local.operator_process import TEST_TIMINGS
from neuronplace.placement import conditions
from neuronplace.placement.claims import node_of
from neuronplace.placement.names import (
    AWS_NEURON_IDS,
    CORES_ANNOTATION,
    ENV_NODE_CORES,
    ENV_VISIBLE_CORES,
    INFERENCE_LABEL,
    NEURON_ALLOC_TIME,
    NEURON_ALLOCATED,
    NEURON_RESOURCE_TYPE,
    NEURONCORE_RESOURCE,
    TERMINAL_PHASES,
)
from neuronplace.runtime.coreset import CoreRange, parse_core_set

# The one reader of status.conditions; the tests take it from here too.
condition = conditions.condition
is_ready = conditions.is_ready

# Short on purpose: the tests make nodes NotReady and wait for the re-placement.
TEST_NODE_GRACE_SECONDS = TEST_TIMINGS["node_grace_seconds"]


def quick_node_pool(**narrowed) -> dict:
    """Karpenter's NodePool with the test bed's short ``consolidateAfter``: an emptied node goes in
    seconds. ``narrowed``: more ``build_node_pool`` arguments (instance types ...)."""
    return build_node_pool(consolidate_after=TEST_CONSOLIDATE_AFTER, **narrowed)


def apply(cluster, namespace: str, *resources: dict, check: bool = True):
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(resources)})
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=body, check=check)


def get_inference(cluster, namespace: str, name: str) -> dict:
    return json.loads(cluster.kubectl("get", "ninf", name, "-n", namespace, "-o", "json").stdout)


def pods_of(cluster, namespace: str, name: str | None = None) -> list[dict]:
    selector = f"{INFERENCE_LABEL}={name}" if name else INFERENCE_LABEL
    items = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)["items"]
    return sorted(items, key=lambda p: p["metadata"]["name"])


def live(pods: list[dict]) -> list[dict]:
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def running_ready(pod: dict) -> bool:
    if pod["status"].get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
        return False
    return is_ready(pod)


def placed_and_ready(cluster, namespace: str, name: str, replicas: int):
    """The resource when all ``replicas`` pods are Running+Ready and its status says so; else None."""
    resource = get_inference(cluster, namespace, name)
    pods = live(pods_of(cluster, namespace, name))
    status = resource.get("status") or {}
    if (
        len(pods) == replicas
        and all(running_ready(p) for p in pods)
        and status.get("readyReplicas") == replicas
        and status.get("replicas") == replicas
        and is_ready(resource)
        and status.get("observedGeneration") == resource["metadata"]["generation"]
    ):
        return resource
    return None


def all_managed_pods(cluster) -> list[dict]:
    return json.loads(cluster.kubectl("get", "pods", "-A", "-l", INFERENCE_LABEL, "-o", "json").stdout)["items"]


def assert_no_shared_cores(cluster) -> dict[str, dict[int, str]]:
    """No two live pods hold the same core on any node; returns node → core → pod."""
    held_by: dict[str, dict[int, str]] = defaultdict(dict)
    for pod in all_managed_pods(cluster):
        if pod["status"].get("phase") in TERMINAL_PHASES:
            continue
        node = node_of(pod)  # bound, or pinned there while kube-scheduler has yet to bind it
        assert node, f"managed pod {pod['metadata']['name']} is neither bound nor pinned to a node"
        name = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        for core in parse_core_set(pod["metadata"]["annotations"][CORES_ANNOTATION]):
            assert core not in held_by[node], f"core {core} on {node} held by both {held_by[node][core]} and {name}"
            held_by[node][core] = name
    return held_by


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def assert_pod_consistent(pod: dict, cores_per_chip: int, processes: int, numbering: str = "device-local") -> None:
    """Annotation, device-plugin annotations, per-process env and resources all say the same thing."""
    annotations = pod["metadata"]["annotations"]
    cores = CoreRange.parse(annotations[CORES_ANNOTATION])
    assert annotations[AWS_NEURON_IDS] == ",".join(map(str, cores.ids))
    assert annotations[NEURON_RESOURCE_TYPE] == NEURONCORE_RESOURCE
    assert annotations[NEURON_ALLOCATED] in ("true", "false") and annotations[NEURON_ALLOC_TIME].isdigit()
    assert "schedulerName" not in pod["spec"] or pod["spec"]["schedulerName"] == "default-scheduler"
    offset = (cores.start // cores_per_chip) * cores_per_chip if numbering == "device-local" else 0
    neuron_containers = [c for c in pod["spec"]["containers"] if ENV_VISIBLE_CORES in env_of(c)]
    assert len(neuron_containers) == processes
    expected = cores.split(processes)
    for index, container in enumerate(neuron_containers):
        env = env_of(container)
        visible = parse_core_set(env[ENV_VISIBLE_CORES])
        assert [v + offset for v in visible] == list(expected[index].ids), (pod["metadata"]["name"], env)
        assert env[ENV_NODE_CORES] == str(expected[index])
        for kind in ("requests", "limits"):
            assert container["resources"][kind][NEURONCORE_RESOURCE] == str(cores.count // processes)


def core_map(cluster, pool: str) -> str:
    """What ``neuronplace cores`` prints for the nodes of ``pool`` (it must succeed)."""
    result = subprocess.run(
        [sys.executable, "-m", "neuronplace.cli", "cores", "--selector", f"{POOL_LABEL}={pool}"],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
