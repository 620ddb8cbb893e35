"""The operator's promises as one reusable checker: a cluster snapshot in, a list of violations out.

:func:`check` is pure: it reads a :class:`Snapshot` (pods, nodes and NeuronInferences as the API's
JSON dicts) and returns every :class:`Violation` it finds. The invariants, one function each:

- ``exclusive-cores``: on every node, no two live pods hold the same core (replica pods, those a
  NeuronInference controls that name their cores in their spec (:func:`is_replica`) and whose
  range is as long as their request, by their
  ``neuronplace.io/cores`` annotation; any other pod by ``AWS_NEURON_IDS`` when it carries it, and
  never less than it requests), and all the cores held there, foreign pods' bare counts included,
  fit in what the node has (two
  processes driving one NeuronCore, or more cores handed out than exist, is the failure this
  project exists to prevent). Cores are given when a pod's containers start: the device plugin
  reads the annotations then, so a pod that has started holds what its annotations said at that
  moment (``Snapshot.given``, which the monitor records), and a later edit changes nothing on the
  node.
- ``node-resources``: on every node, what the live pods bound there request together (cpu, memory,
  ephemeral-storage, hugepages, extended resources, one pod slot each; counted as kube-scheduler
  counts them, by the oracle's own reading of each pod) stays within the node's allocatable (a real
  kubelet rejects a pod that does not fit, OutOfcpu, and kwok does not, so only this check sees it).
- ``pod-consistency``: every live replica pod's annotation, its process containers'
  ``NEURON_RT_VISIBLE_CORES`` (in the numbering the pod says), their ``aws.amazon.com/neuroncore``
  requests and the device plugin's ``AWS_NEURON_IDS`` all name the same cores, processes split the
  range without overlap, sidecars get none, and the pod is bound without a scheduler (if any of
  these disagree, the Neuron runtime in the pod drives cores other than the ones the ledger holds).
- ``no-orphans``: every pod labelled or owned as a replica, unless already terminating, has a live
  NeuronInference owner with the same uid.
- ``status-matches-pods``: each resource's ``status`` (observedGeneration, replicas, readyReplicas,
  placements, conditions) says what its pods say, and no pod exists beyond ``<name>-<replicas-1>``.
- ``fits-are-placed``: a resource with fewer pods than replicas says why in ``Placed``; when the
  reason is ``Unschedulable``, an oracle written for the tests (``oracle.py``: brute force over
  free runs, independent of the placement engine) must agree that no missing replica fits
  anywhere right now (room that exists gets used).
- ``pod-namespace``: a pod controlled by a NeuronInference lives in that resource's namespace (the
  operator never creates a replica anywhere else; owner references cannot cross namespaces, so such
  a pod would also escape garbage collection).
- ``operator-healthy``: see :func:`operator_health` (the process is alive and its liveness
  endpoint answers 200 with a ready ledger).

:func:`take_snapshot` reads a snapshot from the API; :func:`wait_converged` polls until the checker
finds nothing (returning how long that took) or fails with the violations it last saw.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from neuronplace.local.reliability.oracle import Fit, allocatable_of, first_fit, requested_by
from neuronplace.placement import conditions
from neuronplace.placement.conditions import condition
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.names import (
    AWS_NEURON_IDS,
    CAPACITY_REQUEST_LABEL,
    CONDITION_PLACED,
    CONDITION_READY,
    CORES_ANNOTATION,
    ENV_NODE_CORES,
    ENV_VISIBLE_CORES,
    GROUP,
    INFERENCE_LABEL,
    NEURON_DEVICE_RESOURCE,
    NEURON_RESOURCE_TYPE,
    NEURONCORE_RESOURCE,
    NUMBERING_ANNOTATION,
    PLURAL,
    REASON_INVALID_SPEC,
    REASON_NAMESPACE_NOT_SERVED,
    REASON_POD_REJECTED,
    REASON_UNSCHEDULABLE,
    REASON_VOLUME_NEEDS_SCHEDULER,
    REPLICA_LABEL,
    TERMINAL_PHASES,
    VERSION,
)
from neuronplace.placement.request import placement_request
from neuronplace.placement.resource_claims import claims_through_own_claim
from neuronplace.placement.selectors import selector_matches
from neuronplace.runtime.coreset import CoreRange, parse_core_set

NODE_CORES_ENV = ENV_NODE_CORES

# Reasons a resource may give for missing replicas in a converged cluster (neuronplace.placement.status).
UNSCHEDULABLE = REASON_UNSCHEDULABLE
INVALID_SPEC = REASON_INVALID_SPEC
POD_REJECTED = REASON_POD_REJECTED
EXPLAINED_REASONS = (
    UNSCHEDULABLE,
    INVALID_SPEC,
    POD_REJECTED,
    REASON_NAMESPACE_NOT_SERVED,
    REASON_VOLUME_NEEDS_SCHEDULER,
)

INVARIANTS = (
    "exclusive-cores",
    "node-resources",
    "pod-consistency",
    "no-orphans",
    "status-matches-pods",
    "fits-are-placed",
    "pod-namespace",
    "operator-healthy",
)


@dataclass(frozen=True)
class Violation:
    invariant: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.invariant}] {self.subject}: {self.detail}"


@dataclass(frozen=True)
class Snapshot:
    """What the API said at one moment. ``namespaces`` limits the resource-level invariants (pods
    and nodes of every namespace still count for core exclusivity and for room)."""

    pods: Sequence[Mapping[str, Any]]
    nodes: Sequence[Mapping[str, Any]]
    inferences: Sequence[Mapping[str, Any]]
    namespaces: tuple[str, ...] | None = None
    taken_at: float = field(default_factory=time.monotonic)
    # Pod ("namespace/name") → its annotations when its containers started, as far as known: what
    # the device plugin read then is what the pod holds, whatever they say now.
    given: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


# ---- small readers ---------------------------------------------------------------------------------


def _meta(obj: Mapping) -> Mapping:
    return obj.get("metadata") or {}


def _ref(obj: Mapping) -> str:
    meta = _meta(obj)
    return f"{meta.get('namespace')}/{meta.get('name')}" if meta.get("namespace") else str(meta.get("name"))


def pod_node(pod: Mapping) -> str | None:
    """The node a pod is bound to, or, while unbound, the one node its required node affinity pins
    it to (``matchFields metadata.name In [<node>]`` in every term; Scheduler binding): written
    here from the Kubernetes rules, not taken from the operator, so the checker stays independent."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return spec["nodeName"]
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    named = set()
    for term in required.get("nodeSelectorTerms") or []:
        values = [
            tuple(e.get("values") or ())
            for e in term.get("matchFields") or []
            if e.get("key") == "metadata.name" and e.get("operator") == "In"
        ]
        if len(values) != 1 or len(values[0]) != 1:
            return None
        named.add(values[0][0])
    return named.pop() if len(named) == 1 else None


def is_live(pod: Mapping) -> bool:
    """Bound, or pinned and waiting to be bound, and not finished: such a pod holds its cores (a
    pinned pod from its creation, since kube-scheduler can put it nowhere else)."""
    return pod_node(pod) is not None and (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES


def is_running_there(pod: Mapping) -> bool:
    """Bound and not finished: the kubelet counts its requests against the node's allocatable."""
    bound = bool((pod.get("spec") or {}).get("nodeName"))
    return bound and (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES


def started(pod: Mapping) -> bool:
    """Whether the pod's containers have started (the device plugin handed it its cores then)."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Running", *TERMINAL_PHASES):
        return True
    for container in [*(status.get("containerStatuses") or []), *(status.get("initContainerStatuses") or [])]:
        if {"running", "terminated"} & set(container.get("state") or {}) or "terminated" in (
            container.get("lastState") or {}
        ):
            return True
    return False


def is_terminating(obj: Mapping) -> bool:
    return bool(_meta(obj).get("deletionTimestamp"))


def is_managed(pod: Mapping) -> bool:
    return INFERENCE_LABEL in (_meta(pod).get("labels") or {})


def is_replica(pod: Mapping) -> bool:
    """A replica pod as the operator creates it: controlled by a NeuronInference and naming its
    cores in its spec (a container's ``NEURONPLACE_NODE_CORES``). Labels can be edited by any
    tenant and a look-alike can carry them; the spec cannot change after creation."""
    controller = controller_of(pod) or {}
    if controller.get("kind") != "NeuronInference" or not str(controller.get("apiVersion", "")).startswith(f"{GROUP}/"):
        return False
    return any(ENV_NODE_CORES in _env(c) for c in (pod.get("spec") or {}).get("containers") or [])


def is_ready(pod: Mapping) -> bool:
    """Ready and not being deleted (a terminating pod no longer counts as a ready replica)."""
    return not is_terminating(pod) and conditions.is_ready(pod)


def _whole(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def container_amount(container: Mapping, resource: str) -> tuple[int | None, int | None]:
    resources = container.get("resources") or {}
    return (
        _whole((resources.get("requests") or {}).get(resource)),
        _whole((resources.get("limits") or {}).get(resource)),
    )


def pod_amount(pod: Mapping, resource: str) -> int:
    """What a pod asks of ``resource`` (its containers' requests, or limits when requests are unset)."""
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        request, limit = container_amount(container, resource)
        total += request if request is not None else (limit or 0)
    return total


def _env(container: Mapping) -> dict[str, str]:
    return {e.get("name"): e.get("value") for e in container.get("env") or [] if isinstance(e, Mapping)}


def node_capacity(node: Mapping) -> tuple[int, int | None]:
    """(usable cores, cores per chip): the smaller of the topology and what is allocatable."""
    inventory = inventory_from_node(dict(node))
    topology = inventory.topology
    allocatable = _whole(((node.get("status") or {}).get("allocatable") or {}).get(NEURONCORE_RESOURCE))
    if topology is None:
        return (allocatable or 0), None
    cores = topology.cores if allocatable is None else min(topology.cores, allocatable)
    return cores, topology.cores_per_chip


def controller_of(obj: Mapping) -> Mapping | None:
    """The object's controller ownerReference, or None."""
    for ref in _meta(obj).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def _in_scope(obj: Mapping, namespaces: tuple[str, ...] | None) -> bool:
    return namespaces is None or _meta(obj).get("namespace") in namespaces


# ---- the invariants ------------------------------------------------------------------------------


def is_capacity_request(pod: Mapping) -> bool:
    return CAPACITY_REQUEST_LABEL in (_meta(pod).get("labels") or {})


def check_exclusive_cores(snapshot: Snapshot) -> list[Violation]:
    """No core has two holders and no node has more held than it has, in two views:

    - **bound**: the pods the kubelet runs (capacity requests included: the device plugin gives
      them cores too). kube-scheduler counts only these.
    - **reserved**: the operator's view: our replica pods bound or pinned (a pinned pod's cores
      are promised from its creation) and every other bound pod, except capacity requests. A
      request kube-scheduler binds into room a pinned replica already took is not counted here:
      the replica preempts it before it is bound, so the two never run together.
    """
    nodes = {_meta(n).get("name"): n for n in snapshot.nodes}
    bound: dict[str, list[Mapping]] = {}
    reserved: dict[str, list[Mapping]] = {}
    for pod in snapshot.pods:
        if is_running_there(pod):
            bound.setdefault(pod["spec"]["nodeName"], []).append(pod)
        # Pinned and not bound yet: only our replicas hold from creation. Anyone else's pod pinned
        # there holds nothing until kube-scheduler binds it (one with scheduling gates, or asking
        # for more than the node has, never is).
        if is_live(pod) and not is_capacity_request(pod) and (is_running_there(pod) or is_replica(pod)):
            reserved.setdefault(pod_node(pod), []).append(pod)
    violations: list[Violation] = []
    for view in (bound, reserved):
        for node_name, pods in sorted(view.items()):
            node = nodes.get(node_name)
            if node is None:
                continue  # the node is gone: its pods hold nothing anywhere (pod GC removes them)
            for violation in _holders_on(node, node_name, pods, snapshot.given):
                if violation not in violations:
                    violations.append(violation)
    return violations


def _holders_on(
    node: Mapping, node_name: str, pods: Sequence[Mapping], given: Mapping[str, Mapping[str, str]]
) -> list[Violation]:
    violations: list[Violation] = []
    capacity, per_chip = node_capacity(node)
    holder_of: dict[int, str] = {}
    counted = 0
    for pod in pods:
        meta = _meta(pod)
        annotations = given[_ref(pod)] if _ref(pod) in given else meta.get("annotations") or {}
        ids: list[int] | None = None
        asked = pod_amount(pod, NEURONCORE_RESOURCE) + pod_amount(pod, NEURON_DEVICE_RESOURCE) * (per_chip or 1)
        if is_replica(pod):
            try:
                ids = list(CoreRange.parse(annotations.get(CORES_ANNOTATION, "")).ids)
            except (ValueError, TypeError):
                ids = None  # reported by pod-consistency; counted by request below
            if ids is not None and len(ids) != asked:
                ids = None  # a range that disagrees with the request holds the request, as in the ledger
        if ids is None and annotations.get(AWS_NEURON_IDS):
            try:
                raw = [int(x) for x in str(annotations[AWS_NEURON_IDS]).split(",")]
            except ValueError:
                raw = None
            if raw is not None and pod_amount(pod, NEURONCORE_RESOURCE):
                ids = raw
            elif raw is not None and per_chip and pod_amount(pod, NEURON_DEVICE_RESOURCE):
                ids = [d * per_chip + c for d in raw for c in range(per_chip)]
        if ids is None:
            counted += asked  # a labelled pod nobody controls and that asks nothing holds nothing
            continue
        counted += max(len(ids), asked)  # listed ids short of the request hold the request
        for core in ids:
            if core >= capacity:
                violations.append(
                    Violation(
                        "exclusive-cores",
                        _ref(pod),
                        f"holds core {core} but node {node_name} has only {capacity} usable cores",
                    )
                )
            if core in holder_of:
                violations.append(
                    Violation(
                        "exclusive-cores",
                        f"node {node_name} core {core}",
                        f"held by both {holder_of[core]} and {_ref(pod)}",
                    )
                )
            else:
                holder_of[core] = _ref(pod)
    if counted > capacity:
        violations.append(
            Violation(
                "exclusive-cores",
                f"node {node_name}",
                f"live pods hold {counted} cores but the node has {capacity}",
            )
        )
    return violations


def check_node_resources(snapshot: Snapshot) -> list[Violation]:
    violations: list[Violation] = []
    nodes = {_meta(n).get("name"): n for n in snapshot.nodes}
    by_node: dict[str, list[Mapping]] = {}
    for pod in snapshot.pods:
        if is_running_there(pod):
            by_node.setdefault(pod["spec"]["nodeName"], []).append(pod)
    for node_name, pods in sorted(by_node.items()):
        node = nodes.get(node_name)
        if node is None:
            continue  # the node is gone: its pods run nowhere (pod GC removes them)
        allocatable = allocatable_of(node)
        for resource, requested in sorted(requested_by(pods).items()):
            if requested > allocatable.get(resource, 0):
                violations.append(
                    Violation(
                        "node-resources",
                        f"node {node_name}",
                        f"live pods request {requested} {resource} but {allocatable.get(resource, 0)} is allocatable",
                    )
                )
    return violations


def check_pod(pod: Mapping, nodes: Mapping[str, Mapping]) -> list[Violation]:
    """``pod-consistency`` for one live replica pod."""
    out: list[Violation] = []
    ref = _ref(pod)

    def bad(detail: str) -> None:
        out.append(Violation("pod-consistency", ref, detail))

    meta = _meta(pod)
    annotations = meta.get("annotations") or {}
    spec = pod.get("spec") or {}
    if claims_through_own_claim(pod):
        _check_dra_pod(pod, bad)
        return out
    try:
        cores = CoreRange.parse(annotations.get(CORES_ANNOTATION, ""))
    except (ValueError, TypeError) as error:
        bad(f"annotation {CORES_ANNOTATION}={annotations.get(CORES_ANNOTATION)!r} is not a core range: {error}")
        return out
    ids = ",".join(str(i) for i in cores.ids)
    if annotations.get(AWS_NEURON_IDS) != ids:
        bad(f"{AWS_NEURON_IDS}={annotations.get(AWS_NEURON_IDS)!r} but {CORES_ANNOTATION}={cores} (expected {ids!r})")
    if annotations.get(NEURON_RESOURCE_TYPE) != NEURONCORE_RESOURCE:
        bad(f"{NEURON_RESOURCE_TYPE}={annotations.get(NEURON_RESOURCE_TYPE)!r}, expected {NEURONCORE_RESOURCE!r}")
    if spec.get("schedulerName") not in (None, "default-scheduler"):
        bad(f"schedulerName {spec.get('schedulerName')!r}: the operator binds pods itself")
    numbering = annotations.get(NUMBERING_ANNOTATION, "device-local")
    node = nodes.get(pod_node(pod))
    per_chip = node_capacity(node)[1] if node is not None else None
    if numbering == "global":
        offset = 0
    elif per_chip:
        offset = (cores.start // per_chip) * per_chip
    else:
        offset = None  # node gone or of unknown topology: the device-local shift cannot be checked

    process_ranges: list[CoreRange] = []
    for container in spec.get("containers") or []:
        env = _env(container)
        request, limit = container_amount(container, NEURONCORE_RESOURCE)
        if ENV_VISIBLE_CORES not in env:
            if request or limit:
                bad(f"container {container.get('name')} requests {NEURONCORE_RESOURCE} without {ENV_VISIBLE_CORES}")
            continue
        try:
            visible = parse_core_set(env[ENV_VISIBLE_CORES])
            node_range = CoreRange.parse(env.get(NODE_CORES_ENV, ""))
        except ValueError as error:
            bad(f"container {container.get('name')}: {error}")
            continue
        process_ranges.append(node_range)
        if request != node_range.count or limit != node_range.count:
            bad(
                f"container {container.get('name')} requests/limits {request}/{limit} {NEURONCORE_RESOURCE} "
                f"for {node_range.count} cores ({node_range})"
            )
        if offset is not None and visible != [i - offset for i in node_range.ids]:
            bad(
                f"container {container.get('name')}: {ENV_VISIBLE_CORES}={env[ENV_VISIBLE_CORES]!r} is not node cores "
                f"{node_range} in {numbering} numbering (offset {offset})"
            )
    for container in spec.get("initContainers") or []:
        if ENV_VISIBLE_CORES in _env(container) or any(container_amount(container, NEURONCORE_RESOURCE)):
            bad(f"init container {container.get('name')} was given Neuron cores")
    if not process_ranges:
        bad("no container has NEURON_RT_VISIBLE_CORES")
        return out
    ordered = sorted(process_ranges)
    tiled = [i for r in ordered for i in r.ids]
    if tiled != list(cores.ids):
        bad(f"process ranges {', '.join(map(str, process_ranges))} do not split {cores} exactly once")
    if len({r.count for r in ordered}) != 1:
        bad(f"process ranges {', '.join(map(str, process_ranges))} are not the same size")
    return out


def _check_dra_pod(pod: Mapping, bad: Callable[[str], None]) -> None:
    """``pod-consistency`` for a replica taking whole chips through its ResourceClaim: no Neuron
    extended resources (the node has none), and the processes' ``NEURON_RT_VISIBLE_CORES`` split
    one run from 0 within the claimed chips (the container sees only those), equally, each process
    its own. Which chips the claim holds is kube-scheduler's allocation (checked on the claims)."""
    visible: list[list[int]] = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        if any(a for r in (NEURONCORE_RESOURCE, NEURON_DEVICE_RESOURCE) for a in container_amount(container, r)):
            bad(f"container {container.get('name')} requests Neuron extended resources beside its ResourceClaim")
        if ENV_VISIBLE_CORES in _env(container):
            try:
                visible.append(parse_core_set(_env(container)[ENV_VISIBLE_CORES]))
            except ValueError as error:
                bad(f"container {container.get('name')}: {error}")
    tiled = sorted(i for ids in visible for i in ids)
    if not visible:
        bad("no container has NEURON_RT_VISIBLE_CORES")
    elif tiled != list(range(len(tiled))) or len({len(ids) for ids in visible}) != 1:
        bad(f"process cores {visible} do not split one run from 0 equally")


def check_pod_consistency(snapshot: Snapshot) -> list[Violation]:
    nodes = {_meta(n).get("name"): n for n in snapshot.nodes}
    out: list[Violation] = []
    for pod in snapshot.pods:
        if is_replica(pod) and is_live(pod) and _in_scope(pod, snapshot.namespaces):
            out += check_pod(pod, nodes)
    return out


def check_no_orphans(snapshot: Snapshot) -> list[Violation]:
    inferences = {(_meta(i).get("namespace"), _meta(i).get("name")): i for i in snapshot.inferences}
    out: list[Violation] = []
    for pod in snapshot.pods:
        if not _in_scope(pod, snapshot.namespaces) or is_terminating(pod):
            continue  # a terminating pod is on its way out (garbage collection deletes dependents so)
        controller = controller_of(pod)
        labelled = is_managed(pod)
        if not labelled and not (controller and controller.get("kind") == "NeuronInference"):
            continue
        if controller is None or controller.get("kind") != "NeuronInference":
            out.append(
                Violation("no-orphans", _ref(pod), "labelled as a replica but has no NeuronInference controller")
            )
            continue
        inference = inferences.get((_meta(pod).get("namespace"), controller.get("name")))
        if inference is None or _meta(inference).get("uid") != controller.get("uid"):
            out.append(
                Violation(
                    "no-orphans",
                    _ref(pod),
                    f"its owner NeuronInference {controller.get('name')} (uid {controller.get('uid')}) is gone",
                )
            )
    return out


def check_pod_namespace(pod: Mapping, inference_namespaces: Mapping[str, str]) -> list[Violation]:
    """``pod-namespace`` for one pod, given the namespace of every NeuronInference by uid. A pod whose
    owner is not known (yet, or any more) says nothing here; ``no-orphans`` covers that."""
    controller = controller_of(pod)
    if controller is None or controller.get("kind") != "NeuronInference":
        return []
    home = inference_namespaces.get(controller.get("uid"))
    if home is None or home == _meta(pod).get("namespace"):
        return []
    return [
        Violation(
            "pod-namespace",
            _ref(pod),
            f"controlled by NeuronInference {home}/{controller.get('name')} (uid {controller.get('uid')}) of another namespace",
        )
    ]


def check_pod_namespaces(snapshot: Snapshot) -> list[Violation]:
    homes = {_meta(i).get("uid"): _meta(i).get("namespace") for i in snapshot.inferences}
    return [v for pod in snapshot.pods if _in_scope(pod, snapshot.namespaces) for v in check_pod_namespace(pod, homes)]


def _own_pods(inference: Mapping, pods: Iterable[Mapping]) -> list[Mapping]:
    """The resource's replica pods: controlled by it, and not its capacity requests (placeholders
    that ask an autoscaler for a node, no replicas)."""
    meta = _meta(inference)
    return [
        p
        for p in pods
        if _meta(p).get("namespace") == meta.get("namespace")
        and (controller_of(p) or {}).get("uid") == meta.get("uid")
        and CAPACITY_REQUEST_LABEL not in (_meta(p).get("labels") or {})
    ]


def _desired(inference: Mapping) -> int:
    replicas = (inference.get("spec") or {}).get("replicas", 1)
    return replicas if isinstance(replicas, int) and not isinstance(replicas, bool) else 0


def check_status(snapshot: Snapshot) -> list[Violation]:
    out: list[Violation] = []
    for inference in snapshot.inferences:
        if not _in_scope(inference, snapshot.namespaces) or is_terminating(inference):
            continue
        ref = _ref(inference)

        def bad(detail: str, ref: str = ref) -> None:
            out.append(Violation("status-matches-pods", ref, detail))

        meta = _meta(inference)
        status = inference.get("status") or {}
        pods = [p for p in _own_pods(inference, snapshot.pods) if not is_terminating(p)]
        if status.get("observedGeneration") != meta.get("generation"):
            bad(f"observedGeneration {status.get('observedGeneration')} != generation {meta.get('generation')}")
        if status.get("replicas", 0) != len(pods):
            bad(f"status.replicas={status.get('replicas')} but {len(pods)} pods exist")
        ready = sum(1 for p in pods if is_ready(p))
        if status.get("readyReplicas", 0) != ready:
            bad(f"status.readyReplicas={status.get('readyReplicas')} but {ready} pods are Ready")
        said = sorted(
            (p.get("replica"), p.get("pod"), p.get("node"), p.get("cores")) for p in status.get("placements") or []
        )
        actual = sorted(
            (
                _whole((_meta(p).get("labels") or {}).get(REPLICA_LABEL)),
                _meta(p).get("name"),
                pod_node(p),
                (_meta(p).get("annotations") or {}).get(CORES_ANNOTATION),
            )
            for p in pods
        )
        if said != actual:
            bad(f"status.placements {said} != pods {actual}")
        placed = condition(inference, CONDITION_PLACED)
        desired = _desired(inference)
        wanted = {f"{meta.get('name')}-{i}" for i in range(desired)}
        surplus = sorted(_meta(p).get("name") for p in pods if _meta(p).get("name") not in wanted)
        if surplus:
            bad(f"pods {surplus} exceed replicas={desired}")
        all_placed = wanted <= {_meta(p).get("name") for p in pods}
        if placed.get("status") != ("True" if all_placed else "False"):
            bad(f"Placed={placed.get('status')} ({placed.get('reason')}) but {len(pods)}/{desired} replicas have pods")
        all_ready = all_placed and ready >= desired
        ready_status = condition(inference, CONDITION_READY).get("status")
        if ready_status != ("True" if all_ready else "False"):
            bad(f"Ready={ready_status} but {ready}/{desired} replicas are Ready")
    return out


def _placeable_now(
    inference: Mapping, missing: Sequence[int], snapshot: Snapshot, node_selector: str
) -> tuple[int, Fit] | None:
    """(a missing replica, where it would fit now) by the independent oracle (``oracle.py``: a
    brute-force search written for the tests, not the engine), or ``None``."""
    if not missing:
        return None
    managed = [n for n in snapshot.nodes if selector_matches(node_selector, _meta(n).get("labels") or {})]
    fit = first_fit(placement_request(inference, "global"), managed, snapshot.pods)
    return None if fit is None else (missing[0], fit)


def check_fits_are_placed(snapshot: Snapshot, node_selector: str = "") -> list[Violation]:
    out: list[Violation] = []
    for inference in snapshot.inferences:
        if not _in_scope(inference, snapshot.namespaces) or is_terminating(inference):
            continue
        ref = _ref(inference)
        name = _meta(inference).get("name")
        pods = _own_pods(inference, snapshot.pods)
        held = {_meta(p).get("name") for p in pods}
        missing = [i for i in range(_desired(inference)) if f"{name}-{i}" not in held]
        placed = condition(inference, CONDITION_PLACED)
        if placed.get("reason") == INVALID_SPEC and pods:
            out.append(
                Violation(
                    "fits-are-placed", ref, f"spec is invalid ({placed.get('message')}) yet {len(pods)} pods exist"
                )
            )
        if not missing:
            continue
        if placed.get("status") != "False" or placed.get("reason") not in EXPLAINED_REASONS:
            out.append(
                Violation(
                    "fits-are-placed",
                    ref,
                    f"replicas {missing} have no pod and Placed is "
                    f"{placed.get('status')}/{placed.get('reason')} "
                    f"({placed.get('message')!r}), not one of {', '.join(EXPLAINED_REASONS)}",
                )
            )
            continue
        if not placed.get("message"):
            out.append(Violation("fits-are-placed", ref, f"Placed={placed.get('reason')} without a message"))
        if placed.get("reason") == UNSCHEDULABLE:
            try:
                fits = _placeable_now(inference, missing, snapshot, node_selector)
            except ValueError as error:  # a request the engine refuses: the operator should have said InvalidSpec
                out.append(Violation("fits-are-placed", ref, f"Unschedulable, but the request is malformed: {error}"))
                continue
            if fits is not None:
                replica, fit = fits
                out.append(
                    Violation(
                        "fits-are-placed",
                        ref,
                        f"says Unschedulable ({placed.get('message')!r}) but replica {replica} fits "
                        f"on {fit.node} cores {fit.cores} now",
                    )
                )
    return out


def check(snapshot: Snapshot, node_selector: str = "") -> list[Violation]:
    """Every snapshot invariant (all but operator-healthy, which needs the process)."""
    return (
        check_exclusive_cores(snapshot)
        + check_node_resources(snapshot)
        + check_pod_consistency(snapshot)
        + check_no_orphans(snapshot)
        + check_status(snapshot)
        + check_fits_are_placed(snapshot, node_selector)
        + check_pod_namespaces(snapshot)
    )


def operator_health(liveness_url: str, alive: bool, timeout: float = 5) -> list[Violation]:
    """``operator-healthy``: the process runs and its liveness endpoint answers 200 with a ready ledger."""
    if not alive:
        return [Violation("operator-healthy", "operator", "the operator process is not running")]
    try:
        with urllib.request.urlopen(liveness_url, timeout=timeout) as response:
            body = json.loads(response.read() or b"{}")
            if response.status != 200:
                return [Violation("operator-healthy", "operator", f"liveness answered {response.status}")]
    except (OSError, ValueError) as error:
        return [Violation("operator-healthy", "operator", f"liveness endpoint {liveness_url} failed: {error}")]
    if not (body.get("ledger") or {}).get("ready"):
        return [Violation("operator-healthy", "operator", f"ledger probe not ready: {body}")]
    return []


# ---- reading the cluster -------------------------------------------------------------------------


def take_snapshot(api_client, namespaces: Sequence[str] | None = None) -> Snapshot:
    """List pods, nodes and NeuronInferences (all namespaces; ``namespaces`` scopes the checks)."""
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(api_client)
    custom = k8s.CustomObjectsApi(api_client)
    timeout = (3, 10)
    pods = api_client.sanitize_for_serialization(core.list_pod_for_all_namespaces(_request_timeout=timeout))["items"]
    nodes = api_client.sanitize_for_serialization(core.list_node(_request_timeout=timeout))["items"]
    inferences = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=timeout)["items"]
    return Snapshot(pods, nodes, inferences, tuple(namespaces) if namespaces is not None else None)


class NotConverged(AssertionError):
    """The cluster did not reach a state without violations in time."""


def wait_converged(
    snapshot_fn: Callable[[], Snapshot],
    timeout: float,
    *,
    node_selector: str = "",
    extra: Callable[[Snapshot], list[Violation]] | None = None,
    interval: float = 0.25,
) -> tuple[float, Snapshot]:
    """Poll until :func:`check` (plus ``extra``, e.g. scenario expectations) finds nothing.

    Returns (seconds it took, the clean snapshot). Raises :class:`NotConverged` listing the last
    violations (or the last API error) after ``timeout`` seconds.
    """
    start = time.monotonic()
    last: list[Violation] | None = None
    last_error: Exception | None = None
    while True:
        try:
            snapshot = snapshot_fn()
            last = check(snapshot, node_selector) + (extra(snapshot) if extra else [])
            last_error = None
            if not last:
                return time.monotonic() - start, snapshot
        except Exception as error:  # the API may be down during a fault; keep polling
            last_error = error
        if time.monotonic() - start > timeout:
            lines = [str(v) for v in last or []][:40]
            raise NotConverged(
                f"not converged after {timeout:.0f}s"
                + (f"; last API error: {last_error}" if last_error else "")
                + ("".join(f"\n  {line}" for line in lines))
            )
        time.sleep(interval)  # the poll interval: what is awaited is a clean snapshot
