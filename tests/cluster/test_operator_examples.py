"""The examples on the real control plane, every simulated node carrying the Neuron taint of an EKS
node pool (`aws.amazon.com/neuron`) besides kwok's: every file applies (its Service and
PodDisruptionBudget too), Running pods whose env and annotations match their ranges, no shared core,
the two tensor-parallel servers together on one trn2, status and printer columns right, and the
runtime reading what the operator wrote."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from neuronplace.local.examples import example_files
from neuronplace.local.fleet import POOL_LABEL
from neuronplace.runtime.coreset import CoreRange, parse_core_set
from support.builders import example_objects
from support.cluster import (
    apply,
    assert_no_shared_cores,
    assert_pod_consistent,
    condition,
    env_of,
    live,
    placed_and_ready,
    pods_of,
)

pytestmark = pytest.mark.cluster

FLEET = {"inf2.48xlarge": 3, "inf1.6xlarge": 1, "trn1.32xlarge": 1, "trn2.48xlarge": 1}
CORES_PER_CHIP = {"inf2.48xlarge": 2, "inf1.6xlarge": 4, "trn1.32xlarge": 2, "trn2.48xlarge": 4}
# The taint the EKS node pools of docs/install-eks.md put on Neuron nodes; the files tolerate it.
NEURON_TAINT = "aws.amazon.com/neuron=true:NoSchedule"
# file → (name, replicas, cores per replica, processes, instance type)
EXAMPLES = {
    "neuroninference.yaml": ("qwen-inf2", 2, 4, 1, "inf2.48xlarge"),
    "inf1-multiprocess.yaml": ("resnet-inf1", 2, 8, 2, "inf1.6xlarge"),
    "trn1-16cores.yaml": ("llama-trn1", 1, 16, 1, "trn1.32xlarge"),
    "spread.yaml": ("qwen-spread", 3, 2, 1, "inf2.48xlarge"),
    "llm-vllm-inf2.yaml": ("llama-inf2", 2, 8, 1, "inf2.48xlarge"),
    "trn2-data-parallel.yaml": ("llama70b-trn2", 2, 32, 1, "trn2.48xlarge"),
}


def test_every_shipped_example_is_covered():
    assert sorted(EXAMPLES) == [path.name for path in example_files()]


@pytest.fixture
def placed_examples(local_cluster, operator, namespace, fleet, wait_for):
    nodes = fleet(FLEET)
    local_cluster.kubectl("taint", "nodes", "-l", f"{POOL_LABEL}={nodes.pool}", NEURON_TAINT)
    types = {
        n["metadata"]["name"]: n["metadata"]["labels"]["node.kubernetes.io/instance-type"]
        for n in json.loads(
            local_cluster.kubectl("get", "nodes", "-l", f"neuronplace.io/pool={nodes.pool}", "-o", "json").stdout
        )["items"]
    }
    apply(local_cluster, namespace, *[obj for file in EXAMPLES for obj in example_objects(file, nodes.pool)])
    for name, replicas, *_ in EXAMPLES.values():
        wait_for(
            lambda name=name, replicas=replicas: placed_and_ready(local_cluster, namespace, name, replicas),
            90,
            f"{name} placed and ready",
        )
    return namespace, types


@pytest.mark.both_bindings
def test_examples_run_with_matching_env_and_annotations(local_cluster, placed_examples):
    namespace, types = placed_examples
    for name, replicas, cores, processes, instance_type in EXAMPLES.values():
        pods = live(pods_of(local_cluster, namespace, name))
        assert [p["metadata"]["name"] for p in pods] == [f"{name}-{i}" for i in range(replicas)]
        for pod in pods:
            node = pod["spec"]["nodeName"]
            assert types[node] == instance_type, f"{pod['metadata']['name']} landed on {types[node]}"
            assert CoreRange.parse(pod["metadata"]["annotations"]["neuronplace.io/cores"]).count == cores
            assert pod["metadata"]["labels"]["neuronplace.io/inference"] == name
            assert pod["metadata"]["labels"]["neuronplace.io/replica"] == pod["metadata"]["name"].rsplit("-", 1)[1]
            (owner,) = pod["metadata"]["ownerReferences"]
            assert owner["kind"] == "NeuronInference" and owner["name"] == name and owner["controller"]
            assert_pod_consistent(pod, CORES_PER_CHIP[instance_type], processes)
    spread_nodes = {p["spec"]["nodeName"] for p in pods_of(local_cluster, namespace, "qwen-spread")}
    assert len(spread_nodes) == 3, "Spread put two replicas on one node while three inf2 nodes were free"
    trn1 = pods_of(local_cluster, namespace, "llama-trn1")[0]
    assert CoreRange.parse(trn1["metadata"]["annotations"]["neuronplace.io/cores"]).start % 16 == 0
    servers = pods_of(local_cluster, namespace, "llama70b-trn2")
    assert len({p["spec"]["nodeName"] for p in servers}) == 1, "the two TP=32 servers share one trn2.48xlarge"
    assert [p["metadata"]["annotations"]["neuronplace.io/cores"] for p in servers] == ["0-31", "32-63"]
    assert_no_shared_cores(local_cluster)


def test_every_object_of_every_file_applies(local_cluster, placed_examples):
    namespace, _ = placed_examples
    objects = [o for file in EXAMPLES for o in example_objects(file, "any") if o["kind"] != "NeuronInference"]
    assert {o["kind"] for o in objects} == {"Service", "PodDisruptionBudget"}
    for obj in objects:
        local_cluster.kubectl("get", obj["kind"].lower(), obj["metadata"]["name"], "-n", namespace)
    budget = json.loads(local_cluster.kubectl("get", "pdb", "llama-inf2", "-n", namespace, "-o", "json").stdout)
    assert budget["status"]["expectedPods"] == 2, "the budget selects the replicas"


@pytest.mark.both_bindings
def test_status_and_printer_columns(local_cluster, placed_examples):
    namespace, _ = placed_examples
    for name, replicas, cores, processes, _ in EXAMPLES.values():
        resource = json.loads(local_cluster.kubectl("get", "ninf", name, "-n", namespace, "-o", "json").stdout)
        status = resource["status"]
        assert status["selector"] == f"neuronplace.io/inference={name}"
        assert status["observedGeneration"] == resource["metadata"]["generation"]
        pods = {p["metadata"]["name"]: p for p in pods_of(local_cluster, namespace, name)}
        assert [p["replica"] for p in status["placements"]] == list(range(replicas))
        for entry in status["placements"]:
            pod = pods[entry["pod"]]
            assert entry["node"] == pod["spec"]["nodeName"]
            assert entry["cores"] == pod["metadata"]["annotations"]["neuronplace.io/cores"]
            assert entry["processCores"] == [str(r) for r in CoreRange.parse(entry["cores"]).split(processes)]
        placed = condition(resource, "Placed")
        assert placed["status"] == "True" and placed["reason"] == "Placed" and placed["lastTransitionTime"]
        table = local_cluster.kubectl("get", "ninf", name, "-n", namespace).stdout.split("\n")
        header, row = table[0].split(), table[1].split()
        assert header == ["NAME", "REPLICAS", "READYREPLICAS", "CORES", "PLACED", "READY", "WAITINGFORCAPACITY", "AGE"]
        # No replica waits for a new node: WaitingForCapacity is absent, its column empty.
        assert (
            row[:6] == [name, str(replicas), str(replicas), str(cores), "Placed", "AllReplicasReady"] and len(row) == 7
        )
        wide = local_cluster.kubectl("get", "ninf", name, "-n", namespace, "-o", "wide").stdout.split("\n")
        strategy = "Spread" if name == "qwen-spread" else "BinPack"
        assert "STRATEGY" in wide[0].split() and strategy in wide[1].split(), wide
    short = local_cluster.kubectl("get", "ninf", "-n", namespace, "-o", "name").stdout.split()
    assert len(short) == len(EXAMPLES)


RUNTIME_PROBE = """
import json, os, torch
from neuronplace.runtime import DataParallel, visible_cores
model = DataParallel(torch.nn.Linear(4, 2))
print(json.dumps({"visible": visible_cores(), "device_ids": list(model.device_ids),
                  "core_ids": list(model.core_ids)}))
"""


@pytest.mark.torch
def test_runtime_reads_what_the_operator_wrote(local_cluster, placed_examples):
    """For every process of every pod: the runtime, given that container's env, addresses exactly
    the pod's cores (after mapping the container's numbering back to node-global ids)."""
    namespace, _types = placed_examples
    for name, _replicas, _cores, _processes, instance_type in EXAMPLES.values():
        for pod in live(pods_of(local_cluster, namespace, name)):
            annotated = parse_core_set(pod["metadata"]["annotations"]["neuronplace.io/cores"])
            # Device-local numbering: the plugin mounts the devices from the range's first chip on.
            offset = (annotated[0] // CORES_PER_CHIP[instance_type]) * CORES_PER_CHIP[instance_type]
            addressed: list[int] = []
            for container in pod["spec"]["containers"]:
                env = env_of(container)
                if "NEURON_RT_VISIBLE_CORES" not in env:
                    continue
                child_env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("NEURON")}
                # Values from a Secret (the examples' HF_TOKEN) are a kubelet's to fill in, not ours.
                child_env.update({name: value for name, value in env.items() if value is not None})
                child_env["NEURONPLACE_BACKEND"] = "cpu"
                result = subprocess.run(
                    [sys.executable, "-c", RUNTIME_PROBE],
                    env=child_env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                assert result.returncode == 0, result.stderr
                seen = json.loads(result.stdout.strip().splitlines()[-1])
                assert seen["device_ids"] == list(range(len(seen["visible"]))), seen
                assert seen["core_ids"] == seen["visible"]
                addressed += [core + offset for core in seen["core_ids"]]
            assert addressed == annotated, (
                f"{pod['metadata']['name']}: runtime addresses {addressed}, pod holds {annotated}"
            )
