"""What one pod claims of its node's NeuronCores, read from the pod alone. Pure; never raises on
pod data.

Labels and annotations can be written by anyone who may create a pod, so they decide nothing on
their own. A pod counts as ours (*managed*) only when all of these hold:

- its controller ownerReference is a NeuronInference whose UID the caller trusts (the operator
  trusts the inferences it has seen; the UID tells an inference from a deleted namesake);
- it carries the label ``neuronplace.io/inference`` naming that same inference;
- its ``neuronplace.io/cores`` range parses and has as many cores as the pod requests of
  ``aws.amazon.com/neuroncore``, and it requests no whole devices: the device plugin hands a pod
  what it requests, so a range that disagrees would let two pods get the same cores.

Every other pod that requests Neuron resources is *foreign* and holds what it requests: the ids
in the AWS device plugin's ``AWS_NEURON_IDS`` annotation (core ids for ``aws.amazon.com/neuroncore``
requests, device ids for whole-device requests) and, when those are fewer than the request (or
absent), as many more as it lacks, which the ledger assumes. Listed ids beyond the request are held
too: they may really be in use. A foreign pod that requests nothing holds nothing, whatever its
labels say. Finished pods (Succeeded, Failed) claim nothing, nor do pods that are neither bound to a
node nor pinned to one (:func:`node_of`). A capacity request (:func:`capacity_request`) of a trusted
NeuronInference claims nothing either, wherever kube-scheduler bound it: it only stands in for a
replica that fits nowhere, and is deleted before that replica's pod is made; untrusted, it is
foreign like any other pod.

Because trust can change after a pod is read (a pod is often seen before its NeuronInference),
:func:`read_pod` keeps both readings and :meth:`PodClaims.judge` picks one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from neuronplace.placement.names import (
    AWS_NEURON_IDS,
    CAPACITY_REQUEST_LABEL,
    CLAIM_ANNOTATION_MISMATCH,
    CLAIM_IDS_MISMATCH,
    CLAIM_NOT_OWNED,
    CORES_ANNOTATION,
    GROUP,
    INFERENCE_LABEL,
    KIND,
    NEURON_DEVICE_RESOURCES,
    NEURONCORE_RESOURCE,
    TERMINAL_PHASES,
)
from neuronplace.runtime.coreset import CoreRange


@dataclass(frozen=True)
class Claim:
    """What a pod says it holds, before it is resolved against the node's topology."""

    node: str
    pod: str
    managed: bool
    inference: str | None  # the NeuronInference ("namespace/name") of a managed pod
    ids: tuple[int, ...] | None  # ids known to be held, in `ids_unit`; more are assumed up to the request
    ids_unit: str  # "core" or "device"
    core_count: int  # requested cores (0 if the pod requests devices)
    device_count: int  # requested devices


def pod_key(namespace: str, name: str) -> str:
    """The "namespace/name" a pod is known by in the ledger, the usage and the operator's sets."""
    return f"{namespace}/{name}"


def key_of(pod: Mapping) -> str:
    """The pod key of a pod object (:func:`pod_key`; a pod with no namespace is in "default")."""
    metadata = pod.get("metadata") or {}
    return pod_key(metadata.get("namespace") or "default", metadata.get("name") or "")


def cores_of(pod: Mapping) -> CoreRange | None:
    """The node-global cores a replica pod's ``CORES_ANNOTATION`` names, or None when the pod has no
    such annotation or its value is not a core range: either way the pod says nothing usable."""
    try:
        return CoreRange.parse(((pod.get("metadata") or {}).get("annotations") or {})[CORES_ANNOTATION])
    except (KeyError, ValueError, TypeError):
        return None


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


def controller_inference(pod: Mapping) -> tuple[str, str] | None:
    """(name, UID) of the pod's controller ownerReference when it is a NeuronInference, else None."""
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or ():
        if not isinstance(ref, Mapping) or ref.get("controller") is not True:
            continue
        api_version = ref.get("apiVersion")
        if (
            ref.get("kind") == KIND
            and isinstance(api_version, str)
            and api_version.split("/", 1)[0] == GROUP
            and isinstance(ref.get("uid"), str)
            and isinstance(ref.get("name"), str)
        ):
            return ref["name"], ref["uid"]
        return None  # a pod has one controller
    return None


def capacity_request(pod: Mapping) -> bool:
    """Whether the pod is shaped as a capacity request: labelled with the name of the
    NeuronInference that is its controller (whose UID the caller must still trust), and of a
    negative priority once the API server has resolved it (``spec.priority``), as the operator's
    requests are: a pod made to look like one, to hold what it asks unseen, can then be preempted by
    any replica kube-scheduler finds in its way."""
    controller = controller_inference(pod)
    labels = (pod.get("metadata") or {}).get("labels") or {}
    priority = (pod.get("spec") or {}).get("priority")
    low = priority is None or (isinstance(priority, int) and priority < 0)
    return controller is not None and labels.get(CAPACITY_REQUEST_LABEL) == controller[0] and low


@dataclass(frozen=True)
class PodClaims:
    """Both readings of one live pod on its node: as ours (``ours``, None when the pod fails the
    checks that need no trust) and as foreign (``theirs``, None when it requests nothing)."""

    pod: str
    node: str
    inference_uid: str | None  # the controller NeuronInference's UID, if any
    labelled: bool  # carries the inference label
    ours: Claim | None
    theirs: Claim | None
    ids_agree: bool  # AWS_NEURON_IDS absent, or as many as the request
    capacity_request: bool = False  # holds nothing once its controller is trusted

    def judge(self, trusted: bool) -> tuple[Claim | None, str | None]:
        """The claim that counts when the controller UID is (not) trusted, and the inconsistency
        the pod shows (a ``CLAIM_*`` reason from names, None when consistent)."""
        if trusted and self.capacity_request:
            return None, None
        if trusted and self.ours is not None:
            return self.ours, None
        if self.labelled:
            return self.theirs, CLAIM_ANNOTATION_MISMATCH if trusted else CLAIM_NOT_OWNED
        return self.theirs, None if self.ids_agree else CLAIM_IDS_MISMATCH


def read_pod(pod: Mapping) -> PodClaims | None:
    """Both readings of a live pod, or None when it is finished or on no node."""
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    node = node_of(pod)
    if not node or status.get("phase") in TERMINAL_PHASES:
        return None
    key = key_of(pod)
    namespace = metadata.get("namespace") or "default"
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    core_count = requested_amount(pod, NEURONCORE_RESOURCE)
    device_count = max(requested_amount(pod, resource) for resource in NEURON_DEVICE_RESOURCES)
    controller = controller_inference(pod)
    labelled = INFERENCE_LABEL in labels

    ours = None
    if labelled and controller is not None and labels[INFERENCE_LABEL] == controller[0]:
        cores = cores_of(pod)
        if cores is not None and cores.count == core_count and device_count == 0:
            inference = f"{namespace}/{controller[0]}"
            ours = Claim(node, key, True, inference, tuple(cores.ids), "core", cores.count, 0)

    theirs = None
    ids_agree = True
    if core_count or device_count:
        ids = _parse_ids(annotations.get(AWS_NEURON_IDS))
        unit = "core" if core_count else "device"
        ids_agree = ids is None or len(ids) == (core_count if core_count else device_count)
        theirs = Claim(node, key, False, None, ids, unit, core_count, device_count)
    uid = controller[1] if controller is not None else None
    return PodClaims(key, node, uid, labelled, ours, theirs, ids_agree, capacity_request(pod))
