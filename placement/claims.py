"""What one pod claims of its node's NeuronCores, read from the pod alone. Pure; never raises on
pod data.

A pod we manage (label ``neuronplace.io/inference``) claims the range in its
``neuronplace.io/cores`` annotation. Any other pod that requests neuron resources claims its
request: exactly the ids in the AWS device plugin's ``AWS_NEURON_IDS`` annotation when it has one
(core ids for ``aws.amazon.com/neuroncore`` requests, device ids for whole-device requests), else
just a count that the ledger places conservatively. Finished pods (Succeeded, Failed) claim
nothing, nor do pods that are neither bound to a node nor pinned to one (:func:`node_of`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from neuronplace.placement.names import (
    AWS_NEURON_IDS,
    CORES_ANNOTATION,
    INFERENCE_LABEL,
    NEURON_DEVICE_RESOURCES,
    NEURONCORE_RESOURCE,
    TERMINAL_PHASES,
)
from neuronplace.runtime.coreset import CoreRange


@dataclass(frozen=True)
class Claim:
    """What a pod says it holds, before it is resolved against the node's topology."""

    node: str
    owner: str
    managed: bool
    group: str | None
    ids: tuple[int, ...] | None  # exact ids, in `ids_unit`
    ids_unit: str  # "core" or "device"
    core_count: int  # requested cores (0 if the pod requests devices)
    device_count: int  # requested devices


def owner_of(pod: Mapping) -> str:
    metadata = pod.get("metadata") or {}
    return f"{metadata.get('namespace') or 'default'}/{metadata.get('name') or ''}"


# The node field a required node-affinity term names to pin a pod to one node (as the DaemonSet
# controller does): ``matchFields: [{key: metadata.name, operator: In, values: [<node>]}]``.
NODE_NAME_FIELD = "metadata.name"


def pinned_node(pod: Mapping) -> str | None:
    """The one node an unbound pod may go to, or None.

    A pod is pinned when every required node-affinity term has a ``matchFields`` expression
    ``metadata.name In [<node>]`` with exactly one value, the same node in every term: then
    kube-scheduler can bind it nowhere else, so its node is known before it is bound.
    """
    spec = pod.get("spec") or {}
    affinity = (spec.get("affinity") or {}).get("nodeAffinity") or {}
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = required.get("nodeSelectorTerms") or []
    nodes = set()
    for term in terms:
        named = [
            tuple(expression.get("values") or ())
            for expression in (term or {}).get("matchFields") or ()
            if isinstance(expression, Mapping)
            and expression.get("key") == NODE_NAME_FIELD
            and expression.get("operator") == "In"
        ]
        if len(named) != 1 or len(named[0]) != 1 or not isinstance(named[0][0], str):
            return None
        nodes.add(named[0][0])
    return nodes.pop() if len(nodes) == 1 else None


def node_of(pod: Mapping) -> str | None:
    """The node a pod runs on (``spec.nodeName``) or is pinned to while it waits to be bound."""
    return (pod.get("spec") or {}).get("nodeName") or pinned_node(pod)


def _whole(value) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return 0


def _container_amount(container: Mapping, resource: str) -> int:
    resources = container.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    # Extended resources must have requests == limits; either may be written alone.
    return _whole(requests.get(resource, limits.get(resource, 0)))


def requested_amount(pod: Mapping, resource: str) -> int:
    """The pod's effective request: max(sum over containers, max over init containers)."""
    spec = pod.get("spec") or {}
    total = sum(_container_amount(c, resource) for c in spec.get("containers") or ())
    init = max((_container_amount(c, resource) for c in spec.get("initContainers") or ()), default=0)
    return max(total, init)


def _parse_ids(text) -> tuple[int, ...] | None:
    if not isinstance(text, str):
        return None
    try:
        ids = sorted({int(item) for item in text.split(",") if item.strip()})
    except ValueError:
        return None
    if not ids or ids[0] < 0:
        return None
    return tuple(ids)


def claim_from_pod(pod: Mapping) -> Claim | None:
    """The claim a live pod makes, or None when it holds no cores."""
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    node = node_of(pod)
    if not node or status.get("phase") in TERMINAL_PHASES:
        return None
    owner = owner_of(pod)
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    core_count = requested_amount(pod, NEURONCORE_RESOURCE)
    device_count = max(requested_amount(pod, resource) for resource in NEURON_DEVICE_RESOURCES)

    if INFERENCE_LABEL in labels:
        group = f"{metadata.get('namespace') or 'default'}/{labels[INFERENCE_LABEL]}"
        try:
            cores = CoreRange.parse(annotations[CORES_ANNOTATION])
        except (KeyError, ValueError):
            cores = None
        if cores is not None:
            return Claim(node, owner, True, group, tuple(cores.ids), "core", cores.count, 0)
        # Untrustworthy managed pod: fall through to the conservative foreign accounting.
    if core_count == 0 and device_count == 0:
        return None
    ids = _parse_ids(annotations.get(AWS_NEURON_IDS))
    unit = "core" if core_count else "device"
    return Claim(node, owner, False, None, ids, unit, core_count, device_count)
