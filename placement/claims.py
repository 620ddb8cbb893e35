"""What one pod claims of its node's NeuronCores, read from the pod alone. Pure; never raises on
pod data.

Labels, annotations and ownerReferences can be written by anyone who may edit a pod (the built-in
``edit`` role may), so they decide nothing on their own; the pod's spec cannot change after it is
created. A pod counts as ours (*managed*) only when all of these hold:

- its controller ownerReference is a NeuronInference whose UID the caller trusts (the operator
  trusts the inferences it has seen; the UID tells an inference from a deleted namesake);
- its spec says which cores it holds (:func:`spec_cores`): every container that requests
  ``aws.amazon.com/neuroncore`` names its node-global cores in ``NEURONPLACE_NODE_CORES``, as
  many as it requests, together one range; and it requests no whole devices. A pod that gains an
  ownerReference later has no such env, so it never becomes ours.

What a managed pod holds is the union of its spec's range, its ``neuronplace.io/cores`` range and
its ``AWS_NEURON_IDS``: the device plugin hands a container the ids the annotation lists when it
starts, so an annotation edited before then moves the process, and one edited after moves
nothing; the ledger cannot tell which, so it holds both. A managed pod whose annotations or
inference label disagree with its spec is reported (``CLAIM_ANNOTATION_MISMATCH``).

Every other pod that requests Neuron resources is *foreign* and holds what it requests: the ids
in the AWS device plugin's ``AWS_NEURON_IDS`` annotation (core ids for ``aws.amazon.com/neuroncore``
requests, device ids for whole-device requests) and, when those are fewer than the request (or
absent), as many more as it lacks, which the ledger assumes. Listed ids beyond the request are held
too: they may really be in use. The request is the effective one kube-scheduler counts
(:func:`requested_amount`: sidecar init containers included), and a pod that asks for devices and
cores together holds both. A foreign pod that requests nothing holds nothing, whatever its labels
say. A foreign pod holds only once it can run: bound, or pinned (:func:`pinned_node`) with no
scheduling gates and a request its node's allocatable can hold (the ledger checks that, knowing the
node); kube-scheduler gives any other pod nothing, so it holds nothing and is reported (a
``CLAIM_GATED`` / ``CLAIM_EXCEEDS_NODE`` reason). Finished pods (Succeeded, Failed) claim nothing,
nor do pods that are neither bound to a node nor pinned to one (:func:`node_of`). A capacity request
(:func:`capacity_request`) of a trusted NeuronInference claims nothing either, wherever
kube-scheduler bound it: it only stands in for a replica that fits nowhere, and is deleted before
that replica's pod is made; untrusted, it is foreign like any other pod.

Because trust can change after a pod is read (a pod is often seen before its NeuronInference),
:func:`read_pod` keeps both readings and :meth:`PodClaims.judge` picks one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from neuronplace.placement.names import (
    AWS_NEURON_IDS,
    CAPACITY_REQUEST_LABEL,
    CAPACITY_REQUEST_SUFFIX,
    CLAIM_ANNOTATION_MISMATCH,
    CLAIM_GATED,
    CLAIM_IDS_MISMATCH,
    CLAIM_NOT_OWNED,
    CORES_ANNOTATION,
    ENV_NODE_CORES,
    GROUP,
    INFERENCE_LABEL,
    KIND,
    NEURON_DEVICE_RESOURCES,
    NEURONCORE_RESOURCE,
    TERMINAL_PHASES,
)
from neuronplace.placement.resources import pod_requests
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
    core_count: int  # requested cores
    device_count: int  # requested devices
    bound: bool = True  # bound to its node (``spec.nodeName``), not only pinned to it
    # What an unbound foreign pod requests (resource, amount), which its node's allocatable must hold.
    requests: tuple[tuple[str, int], ...] = ()


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


def requested_amount(pod: Mapping, resource: str) -> int:
    """The pod's effective request of ``resource`` as kube-scheduler counts it
    (:func:`.resources.pod_requests`): sidecar init containers (``restartPolicy: Always``) hold
    theirs for the pod's whole life beside the app containers."""
    return pod_requests(pod.get("spec") or {}).get(resource, 0)


def gated(pod: Mapping) -> bool:
    """Whether an unbound pod has scheduling gates: kube-scheduler does not look at it until they are gone."""
    spec = pod.get("spec") or {}
    return not spec.get("nodeName") and bool(spec.get("schedulingGates"))


def _env_value(container: Mapping, name: str) -> str | None:
    for entry in container.get("env") or ():
        if isinstance(entry, Mapping) and entry.get("name") == name:
            value = entry.get("value")
            return value if isinstance(value, str) else None
    return None


def spec_cores(pod: Mapping) -> CoreRange | None:
    """The node-global range a replica pod's spec gives it, or None when the spec gives none.

    Every container that requests ``aws.amazon.com/neuroncore`` must name its own cores in
    ``NEURONPLACE_NODE_CORES`` (a literal value, as many cores as it requests), and together they
    must be one range; init containers must request none (the operator strips them). The spec is
    immutable, so this is what the pod was created holding, whoever edits its metadata since.
    """
    spec = pod.get("spec") or {}
    if any(_requests_neuron(c) for c in spec.get("initContainers") or ()):
        return None
    ids: set[int] = set()
    count = 0
    for container in spec.get("containers") or ():
        if not isinstance(container, Mapping):
            return None
        wanted = pod_requests({"containers": [container]}).get(NEURONCORE_RESOURCE, 0)
        if not wanted:
            continue
        try:
            cores = CoreRange.parse(_env_value(container, ENV_NODE_CORES) or "")
        except ValueError:
            return None
        if cores.count != wanted or ids & set(cores.ids):
            return None
        ids |= set(cores.ids)
        count += cores.count
    if not ids:
        return None
    low, high = min(ids), max(ids)
    return CoreRange(low, count) if high - low + 1 == count else None


def _requests_neuron(container) -> bool:
    if not isinstance(container, Mapping):
        return False
    requested = pod_requests({"containers": [container]})
    return any(requested.get(r, 0) for r in (NEURONCORE_RESOURCE, *NEURON_DEVICE_RESOURCES))


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
    """Whether the pod is shaped as a capacity request: controlled by a NeuronInference (whose UID
    the caller must still trust), named ``<inference>-<replica>-capacity`` after it (a name is
    immutable; a label is not, and a template could carry one), labelled with its name, and of a
    negative priority once the API server has resolved it (``spec.priority``), as the operator's
    requests are: a pod made to look like one, to hold what it asks unseen, can then be preempted by
    any replica kube-scheduler finds in its way."""
    controller = controller_inference(pod)
    if controller is None:
        return False
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    priority = (pod.get("spec") or {}).get("priority")
    low = priority is None or (isinstance(priority, int) and priority < 0)
    name = metadata.get("name") or ""
    prefix = controller[0] + "-"
    ordinal = name[len(prefix) : -len(CAPACITY_REQUEST_SUFFIX)] if name.endswith(CAPACITY_REQUEST_SUFFIX) else ""
    named = name.startswith(prefix) and ordinal.isascii() and ordinal.isdigit()
    return named and labels.get(CAPACITY_REQUEST_LABEL) == controller[0] and low


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
    agrees: bool = True  # as ours: its annotations and inference label say what its spec says
    idle: str | None = None  # as foreign: why it holds nothing though it requests something

    def judge(self, trusted: bool) -> tuple[Claim | None, str | None]:
        """The claim that counts when the controller UID is (not) trusted, and the inconsistency
        the pod shows (a ``CLAIM_*`` reason from names, None when consistent)."""
        if trusted and self.capacity_request:
            return None, None
        if trusted and self.ours is not None:
            return self.ours, None if self.agrees else CLAIM_ANNOTATION_MISMATCH
        if self.idle is not None:
            return None, self.idle
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
    spec = pod.get("spec") or {}
    requests = pod_requests(spec)
    core_count = requests.get(NEURONCORE_RESOURCE, 0)
    device_count = max(requests.get(resource, 0) for resource in NEURON_DEVICE_RESOURCES)
    bound = bool(spec.get("nodeName"))
    controller = controller_inference(pod)
    labelled = INFERENCE_LABEL in labels
    listed = _parse_ids(annotations.get(AWS_NEURON_IDS))
    given = spec_cores(pod) if core_count else None  # what the operator's env says, ours or once ours
    given_ids = set(given.ids) if given is not None else set()

    ours = None
    agrees = True
    if controller is not None and given is not None and given.count == core_count and device_count == 0:
        annotated = cores_of(pod)
        held = given_ids | set(annotated.ids if annotated is not None else ()) | set(listed or ())
        inference = f"{namespace}/{controller[0]}"
        ours = Claim(node, key, True, inference, tuple(sorted(held)), "core", core_count, 0, bound)
        agrees = labels.get(INFERENCE_LABEL) == controller[0] and annotated == given and listed == tuple(given.ids)

    theirs = None
    ids_agree = True
    idle = None
    if core_count or device_count:
        unit = "core" if core_count else "device"
        ids_agree = listed is None or len(listed) == (core_count if core_count else device_count)
        ids = listed if unit == "device" or not given_ids else tuple(sorted(given_ids | set(listed or ())))
        wanted = () if bound else tuple(sorted(requests.items()))
        theirs = Claim(node, key, False, None, ids, unit, core_count, device_count, bound, wanted)
        idle = CLAIM_GATED if gated(pod) else None
    uid = controller[1] if controller is not None else None
    return PodClaims(key, node, uid, labelled, ours, theirs, ids_agree, capacity_request(pod), agrees, idle)
