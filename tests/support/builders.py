"""The objects tests feed the operator and the placement engine, as the API server sends them:
NeuronInferences, pods (ours and foreign), nodes, and storage (PVs, PVCs, StorageClasses).

The NeuronInference builder is :func:`neuronplace.local.manifests.inference`, which the reliability
harness and the benchmarks use too; it is re-exported here.

Every builder has defaults a test need not repeat and keyword overrides for what it is about. A key
a builder adds is one any real object may carry; a test that must not see one passes ``None``.
"""

from __future__ import annotations

import yaml

from neuronplace.local.examples import example_file, on_simulated_nodes
from neuronplace.local.fleet import POOL_LABEL, build_node
from neuronplace.local.manifests import inference
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.names import (
    API_VERSION,
    AWS_NEURON_IDS,
    CORES_ANNOTATION,
    ENV_NODE_CORES,
    INFERENCE_LABEL,
    INSTANCE_TYPE_LABEL,
    KIND,
    NEURONCORE_RESOURCE,
)
from neuronplace.placement.topology import topology_for
from neuronplace.placement.volumes import NO_PROVISIONER
from neuronplace.runtime.coreset import CoreRange

__all__ = [
    "example",
    "foreign_pod",
    "inference",
    "inference_uid",
    "kwok_node",
    "managed_pod",
    "node",
    "node_inventory",
    "on_hosts",
    "pv",
    "pvc",
    "storage_class",
    "uses",
]

# ---- NeuronInference ---------------------------------------------------------------------------


def example_objects(file_name: str, pool: str) -> list[dict]:
    """Every object of an example shipped with the package (the repository's examples/), as the demo
    applies it (its NeuronInference also tolerating kwok's taint), the NeuronInference confined to
    the test's node pool."""
    objects = [on_simulated_nodes(d) for d in yaml.safe_load_all(example_file(file_name).read_text()) if d]
    for resource in objects:
        if resource["kind"] == "NeuronInference":
            resource["spec"]["placement"].setdefault("nodeSelector", {})[POOL_LABEL] = pool
    return objects


def example(file_name: str, pool: str) -> dict:
    """The NeuronInference of an example file, as :func:`example_objects` gives it."""
    (resource,) = [r for r in example_objects(file_name, pool) if r["kind"] == "NeuronInference"]
    return resource


# ---- pods ----------------------------------------------------------------------------------------


def inference_uid(inference: str, namespace: str = "default") -> str:
    """The UID the test NeuronInference ``namespace/inference`` has."""
    return f"uid-{namespace}-{inference}"


def managed_pod(name, node, cores, inference="web", namespace="default", phase="Running") -> dict:
    """A live pod of the NeuronInference ``namespace/inference`` holding ``cores`` ("4-7") on ``node``,
    as the operator creates it: controlled by its NeuronInference (UID included), carrying the
    inference label and its node-global range (in its spec's ``NEURONPLACE_NODE_CORES``, the only
    place the ledger trusts, and in its annotations), requesting exactly as many
    ``aws.amazon.com/neuroncore`` as the range has cores, and carrying the device plugin's ids for
    them. Anything less is not counted as ours."""
    core_range = CoreRange.parse(cores)
    amount = {NEURONCORE_RESOURCE: str(core_range.count)}
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {INFERENCE_LABEL: inference},
            "annotations": {CORES_ANNOTATION: cores, AWS_NEURON_IDS: ",".join(map(str, core_range.ids))},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": inference,
                    "uid": inference_uid(inference, namespace),
                    "controller": True,
                }
            ],
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "main", "env": [{"name": ENV_NODE_CORES, "value": cores}], "resources": {"limits": amount}}
            ],
        },
        "status": {"phase": phase},
    }


def foreign_pod(name, node, cores=0, devices=0, ids=None, init_cores=0, phase="Running", namespace="other") -> dict:
    """A pod someone else made, bound to ``node``, with limits of ``cores`` NeuronCores and
    ``devices`` Neuron devices (each left out when 0), an init container requesting ``init_cores``,
    and the device plugin's ``AWS_NEURON_IDS`` annotation when ``ids`` is given."""
    resources = {}
    if cores:
        resources[NEURONCORE_RESOURCE] = str(cores)
    if devices:
        resources["aws.amazon.com/neuron"] = str(devices)
    pod = {
        "metadata": {"name": name, "namespace": namespace, "labels": {}, "annotations": {}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"limits": resources}}]},
        "status": {"phase": phase},
    }
    if init_cores:
        pod["spec"]["initContainers"] = [
            {"name": "i", "resources": {"requests": {NEURONCORE_RESOURCE: str(init_cores)}}}
        ]
    if ids is not None:
        pod["metadata"]["annotations"][AWS_NEURON_IDS] = ids
    return pod


# ---- nodes ---------------------------------------------------------------------------------------


def node(name, instance_type="inf2.48xlarge", cores=None, labels=None, taints=None, ready=True, **spec) -> dict:
    """A Neuron node as placement reads it: its instance type, ``cores`` allocatable NeuronCores
    (default: what the instance type has), ``taints`` and the Ready condition."""
    total = cores if cores is not None else topology_for(instance_type).cores
    return {
        "metadata": {"name": name, "labels": {INSTANCE_TYPE_LABEL: instance_type, **(labels or {})}},
        "spec": {"taints": taints or [], **spec},
        "status": {
            "allocatable": {NEURONCORE_RESOURCE: str(total)},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def node_inventory(name, instance_type="inf2.48xlarge", cores=None, **kwargs):
    """The :class:`~neuronplace.placement.inventory.NodeInventory` of :func:`node` (same arguments)."""
    return inventory_from_node(node(name, instance_type, cores, **kwargs))


def kwok_node(name, instance_type="inf2.xlarge") -> dict:
    """A simulated node as ``neuronplace local`` makes it (CPU, memory and pods allocatable, the
    kwok taint), reporting Ready."""
    built = build_node(name, instance_type)
    built.setdefault("status", {})["conditions"] = [{"type": "Ready", "status": "True"}]
    return built


# ---- storage -------------------------------------------------------------------------------------


def on_hosts(*hosts):
    """A PV node affinity: the volume lives on these hosts (label kubernetes.io/hostname)."""
    return {
        "required": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": list(hosts)}]}
            ]
        }
    }


def pv(name, *, affinity=None, phase="Available", storage_class="local", size="10Gi", modes=("ReadWriteOnce",), **spec):
    body = {"storageClassName": storage_class, "capacity": {"storage": size}, "accessModes": list(modes), **spec}
    if affinity is not None:
        body["nodeAffinity"] = affinity
    return {"metadata": {"name": name}, "spec": body, "status": {"phase": phase}}


def pvc(
    name, *, namespace="default", storage_class="local", size="5Gi", modes=("ReadWriteOnce",), bound_to=None, **meta
):
    """A claim; ``storage_class`` None leaves the class out (the cluster's default class applies),
    ``namespace`` None leaves the namespace to ``kubectl -n``."""
    spec = {"accessModes": list(modes), "resources": {"requests": {"storage": size}}}
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    if bound_to:
        spec["volumeName"] = bound_to
    metadata = {"name": name, **({"namespace": namespace} if namespace else {}), **meta}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata,
        "spec": spec,
        "status": {"phase": "Bound" if bound_to else "Pending"},
    }


def storage_class(name, *, provisioner=NO_PROVISIONER, mode="WaitForFirstConsumer", default=False, **extra):
    annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if default else {}
    return {
        "metadata": {"name": name, "annotations": annotations},
        "provisioner": provisioner,
        "volumeBindingMode": mode,
        **extra,
    }


def uses(*claims, ephemeral=None):
    """A pod template spec mounting the claims ``claims`` (and a generic ephemeral volume)."""
    volumes = [{"name": f"v{i}", "persistentVolumeClaim": {"claimName": c}} for i, c in enumerate(claims)]
    if ephemeral is not None:
        volumes.append({"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": ephemeral}}})
    return {"containers": [{"name": "model", "image": "m"}], "volumes": volumes}
