"""Pod manifests for NeuronInference replicas (pure ``build_pod``; never imports kopf).

Layout of a replica with P processes (decided): the template's FIRST container runs the model and
is repeated once per process, named ``<container>-<i>`` when P > 1 (unchanged when P = 1). Each copy
requests and limits ``aws.amazon.com/neuroncore`` = C/P and gets its own ``NEURON_RT_VISIBLE_CORES``
for its own slice of the replica's range, so no two processes can ever be handed the same cores
(the AWS tooling handed several processes of one pod the same cores) and kubelet accounts every core. Other containers are sidecars: no Neuron resources,
no Neuron env. Processes share the pod's network namespace, so each one is told its index
(``NEURONPLACE_PROCESS_INDEX``) to pick, for example, its own port.

How the pod gets to its node is the binding mode. ``Scheduler``: the pod is created unbound and
pinned to the chosen node by a required node-affinity term on ``metadata.name``, exactly as the
DaemonSet controller pins its pods (:func:`pin_to_node`), so kube-scheduler runs its filters (cpu,
memory, ports, volumes) and binds it. ``Direct``: it is created with ``spec.nodeName``. Never a
``schedulerName``: there is no second scheduler.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from neuronplace.placement.claims import NODE_NAME_FIELD
from neuronplace.placement.names import (
    API_VERSION,
    AWS_NEURON_IDS,
    BINDING_DIRECT,
    BINDING_SCHEDULER,
    BINDINGS,
    CORES_ANNOTATION,
    ENV_DP_DIM,
    ENV_DP_DYNAMIC_BATCHING,
    ENV_DP_NUM_WORKERS,
    ENV_NODE_CORES,
    ENV_PROCESS_COUNT,
    ENV_PROCESS_INDEX,
    ENV_REPLICA,
    ENV_VISIBLE_CORES,
    INFERENCE_LABEL,
    KIND,
    NEURON_ALLOC_TIME,
    NEURON_ALLOCATED,
    NEURON_RESOURCE_TYPE,
    NEURONCORE_RESOURCE,
    NUMBERING_ANNOTATION,
    REPLICA_LABEL,
    RESERVED_ENV,
    TEMPLATE_HASH_ANNOTATION,
)

if TYPE_CHECKING:  # the placement engine's result type; only its attributes are used here
    from neuronplace.placement.request import ReplicaPlacement


def pod_name(inference_name: str, replica: int) -> str:
    return f"{inference_name}-{replica}"


def selector_for(inference_name: str) -> str:
    """The label selector of an inference's pods (status.selector, for the scale subresource)."""
    return f"{INFERENCE_LABEL}={inference_name}"


def template_hash(spec: Mapping[str, Any]) -> str:
    """Hash of everything in the spec that shapes a pod, except the replica count and
    ``placement.unhealthyNodes`` (how replicas leave unhealthy nodes: a change rolls nothing out).

    A pod whose hash differs from the spec's is outdated and is rolled out (one at a time).
    """
    relevant = {key: value for key, value in spec.items() if key != "replicas"}
    placement = relevant.get("placement")
    if isinstance(placement, Mapping) and "unhealthyNodes" in placement:
        relevant["placement"] = {key: value for key, value in placement.items() if key != "unhealthyNodes"}
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return digest[:16]


def data_parallel_env(spec: Mapping[str, Any]) -> list[dict]:
    """``spec.dataParallel`` hints as env entries (only the hints that are set)."""
    hints = spec.get("dataParallel") or {}
    if not isinstance(hints, Mapping):
        return []
    env = []
    if isinstance(hints.get("dim"), int):
        env.append({"name": ENV_DP_DIM, "value": str(hints["dim"])})
    if isinstance(hints.get("dynamicBatching"), bool):
        env.append({"name": ENV_DP_DYNAMIC_BATCHING, "value": "true" if hints["dynamicBatching"] else "false"})
    if isinstance(hints.get("numWorkers"), int):
        env.append({"name": ENV_DP_NUM_WORKERS, "value": str(hints["numWorkers"])})
    return env


def merge_tolerations(*groups) -> list[dict]:
    """Concatenate toleration lists, dropping exact duplicates, keeping order."""
    seen: list[dict] = []
    for group in groups:
        for toleration in group or ():
            if isinstance(toleration, Mapping) and dict(toleration) not in seen:
                seen.append(dict(toleration))
    return seen


def _process_container(
    base: dict,
    index: int,
    processes: int,
    replica: int,
    visible: str,
    node_cores: str,
    cores_each: int,
    dp_env: list[dict],
) -> dict:
    container = copy.deepcopy(base)
    if processes > 1:
        container["name"] = f"{base['name']}-{index}"
    ours = {
        ENV_VISIBLE_CORES: visible,
        ENV_NODE_CORES: node_cores,
        ENV_REPLICA: str(replica),
        ENV_PROCESS_INDEX: str(index),
        ENV_PROCESS_COUNT: str(processes),
    }
    ours.update({entry["name"]: entry["value"] for entry in dp_env})
    # Our values replace any the template set (the CRD rejects the reserved ones; a template that
    # got past it must still not contradict the placement).
    kept = [
        e
        for e in container.get("env") or []
        if isinstance(e, Mapping) and e.get("name") not in ours and e.get("name") not in RESERVED_ENV
    ]
    container["env"] = kept + [{"name": name, "value": value} for name, value in ours.items()]
    resources = container.setdefault("resources", {})
    for kind in ("requests", "limits"):
        amounts = {k: v for k, v in (resources.get(kind) or {}).items() if not k.startswith("aws.amazon.com/neuron")}
        amounts[NEURONCORE_RESOURCE] = str(cores_each)
        resources[kind] = amounts
    return container


def pin_to_node(affinity: Mapping | None, node: str) -> dict:
    """``affinity`` with the pod's required node affinity narrowed to ``node`` alone.

    As the DaemonSet controller does: each required nodeSelectorTerm keeps its matchExpressions and
    gets ``matchFields`` = ``[metadata.name In [node]]`` (terms are ORed, so every one must name the
    node); with no required terms, that is the one term. Placement already chose a node that
    satisfies the template's own terms, so replacing their matchFields (only metadata.name exists)
    loses nothing. Preferred terms and pod (anti-)affinity are kept as they are.
    """
    pinned = copy.deepcopy(dict(affinity or {}))
    node_affinity = dict(pinned.get("nodeAffinity") or {})
    required = dict(node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    field = [{"key": NODE_NAME_FIELD, "operator": "In", "values": [node]}]
    terms = [
        {**term, "matchFields": copy.deepcopy(field)}
        for term in required.get("nodeSelectorTerms") or ()
        if isinstance(term, Mapping)
    ]
    required["nodeSelectorTerms"] = terms or [{"matchFields": field}]
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = required
    pinned["nodeAffinity"] = node_affinity
    return pinned


def _strip_neuron(container: Mapping) -> dict:
    """A sidecar: keeps everything except Neuron resources and Neuron env."""
    out = copy.deepcopy(dict(container))
    resources = out.get("resources") or {}
    for kind in ("requests", "limits"):
        if isinstance(resources.get(kind), Mapping):
            resources[kind] = {k: v for k, v in resources[kind].items() if not k.startswith("aws.amazon.com/neuron")}
    if out.get("env"):
        out["env"] = [e for e in out["env"] if not (isinstance(e, Mapping) and e.get("name") in RESERVED_ENV)]
    return out


def build_pod(
    inference: Mapping[str, Any],
    placement: ReplicaPlacement,
    *,
    numbering: str = "device-local",
    binding: str = BINDING_SCHEDULER,
    now_ns: int,
) -> dict:
    """The pod for one placed replica of ``inference`` (the API's JSON dict of the inference), bound
    (``Direct``) or pinned (``Scheduler``) to the placement's node. ``now_ns`` (Unix nanoseconds,
    from the caller's clock) is its NEURON_ALLOC_TIME."""
    if binding not in BINDINGS:
        raise ValueError(f"binding {binding!r} is not one of {', '.join(BINDINGS)}")
    meta = inference["metadata"]
    spec = inference["spec"]
    name = meta["name"]
    template = copy.deepcopy(spec.get("template") or {})
    template_meta = template.get("metadata") or {}
    pod_spec = template.get("spec") or {}
    containers = pod_spec.get("containers") or []
    if not containers:
        raise ValueError(f"NeuronInference {meta.get('namespace')}/{name}: template.spec.containers is empty")
    processes = len(placement.process_cores)
    cores = placement.cores
    cores_each = cores.count // processes
    dp_env = data_parallel_env(spec)

    process_containers = [
        _process_container(
            containers[0],
            index,
            processes,
            placement.replica,
            placement.visible_cores[index],
            str(placement.process_cores[index]),
            cores_each,
            dp_env,
        )
        for index in range(processes)
    ]
    pod_spec["containers"] = process_containers + [_strip_neuron(c) for c in containers[1:]]
    if pod_spec.get("initContainers"):
        pod_spec["initContainers"] = [_strip_neuron(c) for c in pod_spec["initContainers"]]
    pod_spec.pop("schedulerName", None)
    if binding == BINDING_DIRECT:
        pod_spec["nodeName"] = placement.node
    else:
        pod_spec.pop("nodeName", None)
        pod_spec["affinity"] = pin_to_node(pod_spec.get("affinity"), placement.node)
    placement_spec = spec.get("placement") or {}
    tolerations = merge_tolerations(pod_spec.get("tolerations"), placement_spec.get("tolerations"))
    if tolerations:
        pod_spec["tolerations"] = tolerations

    labels = dict(template_meta.get("labels") or {})
    labels[INFERENCE_LABEL] = name
    labels[REPLICA_LABEL] = str(placement.replica)
    annotations = dict(template_meta.get("annotations") or {})
    annotations.update(
        {
            CORES_ANNOTATION: str(cores),
            TEMPLATE_HASH_ANNOTATION: template_hash(spec),
            NUMBERING_ANNOTATION: numbering,
            AWS_NEURON_IDS: ",".join(str(i) for i in cores.ids),
            NEURON_RESOURCE_TYPE: NEURONCORE_RESOURCE,
            NEURON_ALLOCATED: "false",
            NEURON_ALLOC_TIME: str(now_ns),
        }
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(name, placement.replica),
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [controller_reference(meta)],
        },
        "spec": pod_spec,
    }


def controller_reference(meta: Mapping[str, Any]) -> dict:
    """The ownerReference that makes the NeuronInference of ``meta`` the controller of what it owns
    (replica pods, capacity requests, ResourceClaims): the garbage collector removes them with it,
    and the ledger knows ours by it (the spec's ownerReferences cannot be changed)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
