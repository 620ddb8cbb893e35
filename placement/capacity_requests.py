"""Capacity requests: the demand an autoscaler can see for replicas that fit on no node. Pure.

The operator creates a replica's pod only once placement has found it a node and a core range, so
a replica that fits nowhere has no Pending pod, and a cluster autoscaler (Karpenter,
cluster-autoscaler), which adds nodes for Pending pods, would never add one. For each such replica
the operator therefore keeps exactly one *capacity request*: an unbound pod asking kube-scheduler
for what the replica will ask of its node (its NeuronCores, its cpu, memory and other requests as
``resources.replica_requests`` works them out) under the replica's node selector, required node
affinity and tolerations, so that a node made for it can take the replica, and on top of them
where :mod:`.request_limits` lets it go (the operator's managed nodes, none it was bound to in vain).

- It runs a pause container, holds no cores in the ledger and counts in no usage: it only stands in
  for the replica. Once a node with room appears the replica is placed there and its request is
  deleted (with no grace period) before the replica's pod is created, and so are the requests
  kube-scheduler bound to that node that no longer fit beside the cores the ledger now holds
  there (:func:`displaced`), so kube-scheduler never counts more NeuronCores on a node than it
  has. Between that deletion and the replica pod's binding, kube-scheduler (which counts a
  pinned pod on its node only once it binds it) may still bind another Pending request there;
  the replica then preempts it, and waits that long.
- Its PriorityClass (:func:`build_priority_class`) is negative and never preempts: any replica
  preempts it, which covers the moment between two events in which kube-scheduler would still see
  it; and an autoscaler counts it as demand (cluster-autoscaler ignores pods below -10).
- The NeuronCore count is the replica's own, not rounded: kube-scheduler and the autoscaler count
  cores, not ranges, and on a node made for the request any count the replica's shape rule allows
  has a free contiguous range. Counting has a blind spot: a replica kept off an existing node only
  by how that node's free cores lie (no free range of the right shape, though enough cores are
  free) would have its request bound to that node, and no node would be added. Such a replica gets
  no request (:func:`counted_room` finds that node), and its status says so.
- It carries no pinning and no ``matchFields``: Karpenter ignores pods whose node affinity uses
  ``matchFields`` ("node selector term with matchFields is not supported").
- It is labelled :data:`CAPACITY_REQUEST_LABEL` (never the inference label, so it is no replica of
  the inference and no pod count includes it), owned by the NeuronInference (garbage collected with
  it) and named ``<name>-<replica>-capacity``, which no replica pod name can be.

:func:`plan` says which requests to create and delete for the replicas now waiting.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from neuronplace.placement.fleet import Fleet
from neuronplace.placement.names import (
    CAPACITY_PRIORITY_CLASS,
    CAPACITY_REQUEST_LABEL,
    CAPACITY_REQUEST_SUFFIX,
    CONDITION_POD_SCHEDULED,
    NEURONCORE_RESOURCE,
    REPLICA_LABEL,
    TEMPLATE_HASH_ANNOTATION,
)
from neuronplace.placement.pods import controller_reference, merge_tolerations
from neuronplace.placement.request import PlacementRequest
from neuronplace.placement.request_limits import with_expressions
from neuronplace.placement.resources import PODS, check_items, format_amount, replica_requests, shortfall
from neuronplace.placement.usage import Usage

# Below every replica (priority 0 unless the template names a class), at or above
# cluster-autoscaler's default expendable-pods cutoff (-10), so it still scales up for it.
CAPACITY_PRIORITY = -1
T = TypeVar("T")
PAUSE_CONTAINER = "pause"


def request_name(inference_name: str, replica: int) -> str:
    """A capacity request's pod name; it ends in a letter, a replica pod's name in its ordinal."""
    return f"{inference_name}-{replica}{CAPACITY_REQUEST_SUFFIX}"


def build_priority_class(name: str = CAPACITY_PRIORITY_CLASS) -> dict:
    """The PriorityClass capacity requests use (the chart's template says the same)."""
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": name},
        "value": CAPACITY_PRIORITY,
        "preemptionPolicy": "Never",
        "globalDefault": False,
        "description": "neuronplace capacity requests: placeholders that ask the autoscaler for a node; "
        "any replica preempts them",
    }


def _required_node_affinity(pod_spec: Mapping[str, Any]) -> dict | None:
    node_affinity = ((pod_spec.get("affinity") or {}).get("nodeAffinity")) or {}
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}} if required else None


def build_capacity_request(
    inference: Mapping[str, Any],
    replica: int,
    *,
    image: str,
    priority_class: str = CAPACITY_PRIORITY_CLASS,
    where: Sequence[Mapping[str, Any]] = (),
) -> dict:
    """The capacity-request pod for one replica of a (validated) ``inference``; ``where``: node
    affinity ``matchExpressions`` it must meet on top of the replica's own
    (:func:`.request_limits.node_expressions`)."""
    meta = inference["metadata"]
    spec = inference["spec"]
    placement = spec.get("placement") or {}
    pod_spec = (spec.get("template") or {}).get("spec") or {}
    cores = spec["coresPerReplica"]
    wanted = replica_requests(pod_spec, cores, spec.get("processesPerReplica", 1))
    wanted.pop(PODS, None)
    requests = {name: format_amount(name, value) for name, value in sorted(wanted.items())}
    requests[NEURONCORE_RESOURCE] = str(cores)
    selector = {**(pod_spec.get("nodeSelector") or {}), **(placement.get("nodeSelector") or {})}
    request_spec: dict[str, Any] = {
        "priorityClassName": priority_class,
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65535, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": PAUSE_CONTAINER,
                "image": image,
                # Extended resources must be limited as much as they are requested.
                "resources": {"requests": requests, "limits": {NEURONCORE_RESOURCE: str(cores)}},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
    }
    if selector:
        request_spec["nodeSelector"] = selector
    affinity = with_expressions(_required_node_affinity(pod_spec), where)
    if affinity:
        request_spec["affinity"] = affinity
    tolerations = merge_tolerations(pod_spec.get("tolerations"), placement.get("tolerations"))
    if tolerations:
        request_spec["tolerations"] = tolerations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": request_name(meta["name"], replica),
            "namespace": meta["namespace"],
            "labels": {CAPACITY_REQUEST_LABEL: meta["name"], REPLICA_LABEL: str(replica)},
            "annotations": {TEMPLATE_HASH_ANNOTATION: spec_hash(request_spec)},
            "ownerReferences": [controller_reference(meta)],
        },
        "spec": request_spec,
    }


def spec_hash(request_spec: Mapping[str, Any]) -> str:
    """What a request asks for, hashed: a request whose hash differs asks for the wrong thing."""
    text = json.dumps(request_spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def replica_of(request: Mapping[str, Any]) -> int | None:
    labels = (request.get("metadata") or {}).get("labels") or {}
    text = labels.get(REPLICA_LABEL)
    return int(text) if isinstance(text, str) and text.isdigit() else None


def counted_room(request: PlacementRequest, fleet: Fleet, usage: Usage) -> str | None:
    """A node where kube-scheduler would find room for the replica's capacity request, or None.

    kube-scheduler counts a node's NeuronCores as it counts cpu: allocatable less what the pods
    bound there request (``usage`` counts the same pods, pinned ones included, capacity requests
    excluded). Call it for a replica placement refused: a node named here has the cores by count
    but no free range the replica may use, so its request would be bound there, and no node added.
    """
    items = (*check_items(request.requests), (NEURONCORE_RESOURCE, request.cores_per_replica))
    names, _ = fleet.eligible(request)
    for name in names:
        if shortfall(items, fleet.by_name[name].allocatable, usage.used(name)) is None:
            return name
    return None


def no_request_message(node: str) -> str:
    """Why a replica :func:`counted_room` placed on ``node`` gets no capacity request."""
    return (
        f"no capacity request: kube-scheduler counts enough free NeuronCores on {node}, where no free range "
        "fits the replica, so an autoscaler would add no node for it"
    )


@dataclass(frozen=True)
class Plan:
    create: tuple[int, ...] = ()  # replicas that need a request
    delete: tuple[str, ...] = ()  # request pods to delete
    # Which kept request stands for which waiting replica.
    assigned: Mapping[int, str] = field(default_factory=dict)


def plan(uid: str | None, waiting: Collection[int], existing: Iterable[Mapping[str, Any]], wanted_hash: str) -> Plan:
    """Exactly one request for each replica in ``waiting``, none more.

    ``existing`` are the capacity requests of the inference's name. A request is usable when it is
    controlled by this ``uid``, not being deleted, and asks what ``wanted_hash`` says; other requests
    of this ``uid`` are deleted, those of an older namesake (another UID) left to garbage collection.
    Usable requests ask for the same thing, so any of them stands for any waiting replica: its own
    first, then the others, those kube-scheduler has bound before those still Pending (oldest
    first). A request an autoscaler is making a node for is thus kept when another replica's
    request took the room (a replica placed where another's request was bound), and no second node
    is asked for. What is left over is deleted; replicas left without one get a new request.
    """
    usable: list[Mapping[str, Any]] = []
    delete: list[str] = []
    for request in existing:
        meta = request.get("metadata") or {}
        owned = any(ref.get("controller") and ref.get("uid") == uid for ref in meta.get("ownerReferences") or ())
        if not owned or meta.get("deletionTimestamp"):
            continue
        if (meta.get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION) == wanted_hash:
            usable.append(request)
        else:
            delete.append(meta.get("name") or "")
    usable.sort(key=_keep_order)
    assigned: dict[int, str] = {}
    spare: list[str] = []
    for request in usable:
        replica, name = replica_of(request), (request.get("metadata") or {}).get("name") or ""
        if replica is not None and replica in waiting and replica not in assigned:
            assigned[replica] = name
        else:
            spare.append(name)
    for replica in sorted(set(waiting) - set(assigned)):
        if spare:
            assigned[replica] = spare.pop(0)
    delete.extend(spare)
    return Plan(create=tuple(sorted(set(waiting) - set(assigned))), delete=tuple(delete), assigned=assigned)


def _keep_order(request: Mapping[str, Any]) -> tuple:
    meta = request.get("metadata") or {}
    bound = bool((request.get("spec") or {}).get("nodeName"))
    return (not bound, meta.get("creationTimestamp") or "", meta.get("name") or "")


def displaced(free_cores: int, bound: Sequence[tuple[T, int]]) -> list[T]:
    """Which of the capacity requests kube-scheduler bound to a node must go so that they fit in
    the ``free_cores`` the ledger leaves there: ``bound`` is (request, cores) in the order to keep
    them, and the last go first."""
    total = sum(cores for _, cores in bound)
    out = []
    for name, cores in reversed(bound):
        if total <= free_cores:
            break
        out.append(name)
        total -= cores
    return out


def describe(waiting: Mapping[int, Mapping[str, Any] | str]) -> str:
    """The ``WaitingForCapacity`` message: per waiting replica, where its request stands (a request
    pod, or why none could be made), identical states grouped."""
    by_state: dict[str, list[int]] = {}
    for replica, request in sorted(waiting.items()):
        by_state.setdefault(_state(request), []).append(replica)
    parts = []
    for state, replicas in by_state.items():
        label = f"replica {replicas[0]}" if len(replicas) == 1 else f"replicas {', '.join(map(str, replicas))}"
        parts.append(f"{label}: {state}")
    return "; ".join(parts)


def _state(request: Mapping[str, Any] | str) -> str:
    if isinstance(request, str):
        return f"no capacity request ({request})"
    name = (request.get("metadata") or {}).get("name")
    node = (request.get("spec") or {}).get("nodeName")
    if node:
        return f"capacity request {name} bound to node {node}, not usable for the replica yet"
    for condition in (request.get("status") or {}).get("conditions") or ():
        if condition.get("type") == CONDITION_POD_SCHEDULED and condition.get("status") == "False":
            said = condition.get("message") or "unschedulable"
            return f"waiting for a new node (capacity request {name} Pending: {said})"
    return f"waiting for a new node (capacity request {name} Pending)"
