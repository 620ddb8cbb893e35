"""Status and conditions of a NeuronInference (pure builders; never imports kopf).

Conventions (Kubernetes API conventions): ``observedGeneration`` at the top and in each condition;
conditions with ``type``, ``status`` True/False/Unknown, a CamelCase ``reason``, a human ``message``
and a ``lastTransitionTime`` that only moves when the status flips. No ``phase``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neuronplace.placement.claims import cores_of, node_of
from neuronplace.placement.conditions import is_ready
from neuronplace.placement.names import (
    CONDITION_HEALTHY,
    CONDITION_PLACED,
    CONDITION_READY,
    CONDITION_REPLICA_FAILURE,
    CONDITION_WAITING_FOR_CAPACITY,
    DEVICE_MANAGEMENT_DEVICE_PLUGIN,
    DEVICE_MANAGEMENT_DRA,
    REASON_NO_UNHEALTHY_NODES,
    REASON_NOT_READY,
    REASON_PENDING,
    REASON_PLACED,
    REASON_READY,
    REASON_SCHEDULER_NOT_RESPONDING,
    REPLICA_LABEL,
)
from neuronplace.placement.pods import pod_name, selector_for


@dataclass(frozen=True)
class Problem:
    """Why replicas lack pods: ``reason`` is a condition reason, ``message`` the explanation."""

    reason: str
    message: str


def now_rfc3339(clock: dt.datetime) -> str:
    """``clock`` (an aware time the caller read) as Kubernetes writes times; placement reads no clock."""
    return clock.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return is_ready(pod)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def set_condition(
    conditions: Sequence[Mapping], type_: str, status: str, reason: str, message: str, generation: int | None, now: str
) -> list[dict]:
    """Return ``conditions`` with ``type_`` set; ``lastTransitionTime`` kept unless the status changes."""
    out: list[dict] = []
    previous = None
    for condition in conditions or ():
        if isinstance(condition, Mapping) and condition.get("type") == type_:
            previous = condition
        elif isinstance(condition, Mapping):
            out.append(dict(condition))
    transition = previous.get("lastTransitionTime") if previous and previous.get("status") == status else None
    new = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition or now,
    }
    if generation is not None:
        new["observedGeneration"] = generation
    out.append(new)
    return sorted(out, key=lambda c: str(c.get("type")))


def placement_entry(pod: Mapping[str, Any], processes: int) -> dict | None:
    """``status.placements`` entry for a pod, read back from what the pod itself says."""
    meta = pod.get("metadata") or {}
    try:
        replica = int((meta.get("labels") or {})[REPLICA_LABEL])
    except (KeyError, ValueError, TypeError):
        return None
    cores = cores_of(pod)
    if cores is None:
        return None
    try:
        process_cores = [str(r) for r in cores.split(processes)]
    except ValueError:
        process_cores = [str(cores)]
    return {
        "replica": replica,
        "pod": meta.get("name", ""),
        "node": node_of(pod) or "",  # bound, or pinned there and waiting for kube-scheduler
        "cores": str(cores),
        "processCores": process_cores,
        **_device_path(pod),
    }


def _device_path(pod: Mapping[str, Any]) -> dict:
    """How the replica takes its cores: the device plugin, or the DRA driver through its claim."""
    claims = (pod.get("spec") or {}).get("resourceClaims") or ()
    named = [c.get("resourceClaimName") for c in claims if isinstance(c, Mapping) and c.get("resourceClaimName")]
    if named:
        return {"deviceManagement": DEVICE_MANAGEMENT_DRA, "resourceClaim": named[0]}
    return {"deviceManagement": DEVICE_MANAGEMENT_DEVICE_PLUGIN}


def summarize_unplaceable(unplaceable: Iterable[tuple[int, str]]) -> str:
    """One message for the replicas that could not be placed, grouping identical messages."""
    by_message: dict[str, list[int]] = {}
    for replica, message in unplaceable:
        by_message.setdefault(message, []).append(replica)
    parts = []
    for message, replicas in by_message.items():
        label = f"replica {replicas[0]}" if len(replicas) == 1 else f"replicas {', '.join(map(str, sorted(replicas)))}"
        parts.append(f"{label}: {message}")
    return "; ".join(parts)


def scheduler_silence(unheard: Sequence[str]) -> Problem | None:
    """Why replicas are not ready when kube-scheduler has said nothing about their pinned pods
    (``replica_pods.Decision.unheard``); None when it has spoken about all of them."""
    if not unheard:
        return None
    return Problem(REASON_SCHEDULER_NOT_RESPONDING, "; ".join(unheard) + "; is kube-scheduler running?")


def _controlled_by(pod: Mapping[str, Any], uid: str) -> bool:
    references = (pod.get("metadata") or {}).get("ownerReferences") or ()
    return any(isinstance(ref, Mapping) and ref.get("controller") and ref.get("uid") == uid for ref in references)


def build_status(
    inference: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    *,
    problem: Problem | None = None,
    replica_failure: Problem | None = None,
    waiting_for_capacity: Problem | None = None,
    not_ready: Problem | None = None,
    binding: str | None = None,
    unhealthy: Problem | None = None,
    now: str,
) -> dict:
    """The full ``status`` for ``inference`` given its live pods and what keeps the rest from existing.

    ``pods`` are the inference's own pods (terminating ones included: they still hold cores).
    ``replica_failure`` is why replica pods keep failing: the ``ReplicaFailure`` condition is there
    while it is given and gone once they stop failing (as a Deployment's). ``waiting_for_capacity``
    says which replicas that fit nowhere have asked the autoscaler for a node (capacity requests): the
    ``WaitingForCapacity`` condition is there while it is given, so a replica waiting for a node
    being made is told apart from one nothing is done for (``Placed`` keeps the engine's reason).
    ``not_ready`` is why replicas are not ready when the operator knows better than the pods do
    (:func:`scheduler_silence`): while Ready is False it gives Ready's reason and ends its message.
    ``unhealthy`` is why replicas are on nodes with unhealthy Neuron hardware (:mod:`.moves`):
    ``Healthy`` is False with it while given, True once it is gone (absent until first needed).
    ``binding`` is the mode in effect. ``now`` (:func:`now_rfc3339` of the caller's clock) stamps
    the conditions whose status changes.
    """
    meta = inference.get("metadata") or {}
    spec = _mapping(inference.get("spec"))
    previous = _mapping(inference.get("status"))
    generation = meta.get("generation")
    name = meta.get("name", "")
    desired = spec.get("replicas", 1) if isinstance(spec.get("replicas", 1), int) else 0
    processes = spec.get("processesPerReplica", 1) if isinstance(spec.get("processesPerReplica", 1), int) else 1

    # Labels prove nothing (anyone who may create a pod can copy them): once the inference has a UID,
    # only the pods it controls are its replicas.
    uid = meta.get("uid")
    live = [
        p
        for p in pods
        if not (p.get("metadata") or {}).get("deletionTimestamp") and (uid is None or _controlled_by(p, uid))
    ]
    placements = sorted(
        (entry for entry in (placement_entry(p, max(processes, 1)) for p in live) if entry is not None),
        key=lambda e: e["replica"],
    )
    ready = sum(1 for p in live if pod_is_ready(p))
    wanted_names = {pod_name(name, i) for i in range(max(desired, 0))}
    placed = sum(1 for p in live if (p.get("metadata") or {}).get("name") in wanted_names)

    conditions = previous.get("conditions") or []
    if problem is not None:
        conditions = set_condition(
            conditions, CONDITION_PLACED, "False", problem.reason, problem.message, generation, now
        )
    elif placed >= desired:
        conditions = set_condition(
            conditions, CONDITION_PLACED, "True", REASON_PLACED, f"{placed}/{desired} replicas placed", generation, now
        )
    else:
        conditions = set_condition(
            conditions,
            CONDITION_PLACED,
            "False",
            REASON_PENDING,
            f"{placed}/{desired} replicas placed; waiting for old pods to go",
            generation,
            now,
        )
    if ready >= desired and placed >= desired:
        conditions = set_condition(
            conditions, CONDITION_READY, "True", REASON_READY, f"{ready}/{desired} replicas ready", generation, now
        )
    else:
        reason, message = REASON_NOT_READY, f"{ready}/{desired} replicas ready"
        if not_ready is not None:
            reason, message = not_ready.reason, f"{message}; {not_ready.message}"
        conditions = set_condition(conditions, CONDITION_READY, "False", reason, message, generation, now)
    if replica_failure is None:
        conditions = [c for c in conditions if c.get("type") != CONDITION_REPLICA_FAILURE]
    else:
        conditions = set_condition(
            conditions,
            CONDITION_REPLICA_FAILURE,
            "True",
            replica_failure.reason,
            replica_failure.message,
            generation,
            now,
        )
    if waiting_for_capacity is None:
        conditions = [c for c in conditions if c.get("type") != CONDITION_WAITING_FOR_CAPACITY]
    else:
        conditions = set_condition(
            conditions,
            CONDITION_WAITING_FOR_CAPACITY,
            "True",
            waiting_for_capacity.reason,
            waiting_for_capacity.message,
            generation,
            now,
        )
    if unhealthy is not None:
        conditions = set_condition(
            conditions, CONDITION_HEALTHY, "False", unhealthy.reason, unhealthy.message, generation, now
        )
    elif any(c.get("type") == CONDITION_HEALTHY for c in conditions):
        message = "no replica is on a node with unhealthy Neuron hardware"
        conditions = set_condition(
            conditions, CONDITION_HEALTHY, "True", REASON_NO_UNHEALTHY_NODES, message, generation, now
        )
    status = {
        "observedGeneration": generation,
        "replicas": len(live),
        "readyReplicas": ready,
        "selector": selector_for(name),
        "placements": placements,
        "conditions": conditions,
    }
    if binding is not None:
        status["binding"] = binding
    return status


def status_differs(current: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    """Whether writing ``wanted`` would change anything (avoids status writes that only echo)."""
    current = current or {}
    return any(current.get(key) != value for key, value in wanted.items())
