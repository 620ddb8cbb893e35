"""Moving replicas off nodes with unhealthy Neuron hardware, a few at a time (pure).

``spec.placement.unhealthyNodes`` says what happens to a replica whose pod is on an unhealthy node
(:mod:`.health`; a node in its settle window counts as unhealthy): ``action: Move`` (the default)
deletes the pod, and the next ruling places the replica again on a healthy node (a replica's pod
name is ``<name>-<ordinal>``, so the replacement cannot exist before the old pod is gone);
``Keep`` leaves it. ``maxUnavailable`` (a count, or a percent of ``replicas`` rounded down, at
least 1; default 1) bounds the replicas down at once: a ready pod is moved only while fewer
replicas than that are down (missing, not ready, or going in this ruling for any reason), as a
rollout's one-at-a-time rule. A pod that is not ready serves nothing and is moved at once.

A pod is moved only when its replica has room elsewhere now (checked by placing it as a missing
replica is placed: the same paths, so a DRA replica only on DRA nodes, on chips in one connected
group; the reservation given back at once); otherwise it stays, and the ``Healthy`` condition says
why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neuronplace.placement.claims import node_of
from neuronplace.placement.fleet import Fleet
from neuronplace.placement.health import reason_label
from neuronplace.placement.names import (
    ACTION_KEEP,
    ACTION_MOVE,
    REASON_KEPT_ON_UNHEALTHY_NODES,
    REASON_MOVING_REPLICAS,
    REASON_NO_ROOM_TO_MOVE,
)
from neuronplace.placement.replica_pods import Deletion, _owned_by, ordinal_of
from neuronplace.placement.status import Problem, pod_is_ready

MOVED = "UnhealthyNode"  # the Deletion (and Event) reason of a move
DEFAULT_MAX_UNAVAILABLE = 1


@dataclass(frozen=True)
class MovePolicy:
    action: str = ACTION_MOVE
    max_unavailable: int | str = DEFAULT_MAX_UNAVAILABLE


def move_policy(spec: Mapping[str, Any]) -> MovePolicy:
    """``spec.placement.unhealthyNodes`` of a valid spec, defaults filled in."""
    given = ((spec.get("placement") or {}).get("unhealthyNodes")) or {}
    return MovePolicy(given.get("action", ACTION_MOVE), given.get("maxUnavailable", DEFAULT_MAX_UNAVAILABLE))


def max_unavailable_error(value: Any) -> str | None:
    """Why ``maxUnavailable`` is invalid (the CRD's rule, for objects that got past it), or None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return None
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit() and 1 <= int(value[:-1]) <= 100:
        return None
    return f"spec.placement.unhealthyNodes.maxUnavailable must be an integer >= 1 or a percent 1%-100%, got {value!r}"


def budget(max_unavailable: int | str, desired: int) -> int:
    """How many replicas may be down at once: a count, or a percent of ``desired`` rounded down, at least 1."""
    if isinstance(max_unavailable, str):
        return max(1, desired * int(max_unavailable.rstrip("%")) // 100)
    return max(1, max_unavailable)


@dataclass(frozen=True)
class Moves:
    deletions: tuple[Deletion, ...] = ()
    health: Problem | None = None  # the Healthy condition's reason while replicas are on unhealthy nodes
    waiting_for_room: bool = False  # a replica stays for lack of room: look again when room frees


def plan_moves(
    name: str,
    uid: str | None,
    desired: int,
    pods: Sequence[Mapping[str, Any]],
    going: Sequence[Deletion],
    policy: MovePolicy,
    fleet: Fleet,
    trial: Callable[[int], str | None],
) -> Moves:
    """Which of the inference's live replica pods (``pods``; ``going``: deleted in this ruling
    already) to move off unhealthy nodes now, and what the ``Healthy`` condition says.

    ``trial(replica)`` places the replica as a missing one would be placed, by the same paths and
    checks, and keeps that room reserved until the caller gives it back after this returns (so two
    moves never count the same room): None, or why it has no room."""
    bad = fleet.unhealthy
    if not bad:
        return Moves()
    gone = {deletion.pod for deletion in going}
    live: dict[int, Mapping[str, Any]] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        ordinal = ordinal_of(pod, name)
        if ordinal is None or ordinal >= desired or meta.get("deletionTimestamp") or meta.get("name") in gone:
            continue
        if not _owned_by(pod, uid):
            continue
        live[ordinal] = pod
    on_bad = {i: node for i, pod in live.items() if (node := node_of(pod)) in bad}
    if not on_bad:
        return Moves()
    if policy.action == ACTION_KEEP:
        lines = [f"replica {i} on {node} ({bad[node]})" for i, node in sorted(on_bad.items())]
        message = "; ".join(lines) + f"; kept there (unhealthyNodes.action {ACTION_KEEP})"
        return Moves(health=Problem(REASON_KEPT_ON_UNHEALTHY_NODES, message))
    down = sum(1 for i in range(desired) if i not in live or not pod_is_ready(live[i]))
    most = budget(policy.max_unavailable, desired)
    allowed = most - down
    deletions: list[Deletion] = []
    waiting: list[int] = []
    no_room: list[str] = []
    # Not-ready pods first: they are down already and cost nothing of the budget.
    for i in sorted(on_bad, key=lambda i: (pod_is_ready(live[i]), i)):
        ready = pod_is_ready(live[i])
        if ready and allowed <= 0:
            waiting.append(i)
            continue
        # Is there room elsewhere now?
        why = trial(i)
        if why is not None:
            no_room.append(f"replica {i} on {on_bad[i]} ({bad[on_bad[i]]}) stays: {why}")
            continue
        allowed -= ready
        pod = live[i]["metadata"]["name"]
        words = bad[on_bad[i]]
        message = f"replica {i} (pod {pod}) on node {on_bad[i]}: {words}; moving it to a healthy node"
        deletions.append(Deletion(pod, MOVED, message, cause=reason_label(fleet.by_name[on_bad[i]])))
    lines = [d.message for d in deletions]
    if waiting:
        lines.append(
            f"replica{'s' if len(waiting) > 1 else ''} {', '.join(map(str, waiting))} on unhealthy nodes wait "
            f"(maxUnavailable {policy.max_unavailable}: {most - allowed} of {desired} down)"
        )
    reason = REASON_NO_ROOM_TO_MOVE if no_room else REASON_MOVING_REPLICAS
    health = Problem(reason, "; ".join(no_room + lines))
    return Moves(tuple(deletions), health, bool(no_room))
