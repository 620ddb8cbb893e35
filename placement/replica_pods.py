"""The level-driven decision for one NeuronInference: desired spec vs live pods → actions (pure).

``decide()`` never talks to the API and never places anything: it says which pods must go and
which replica ordinals need a pod. The ruling (:mod:`.ruling`) then places the missing ordinals and
builds their pods; the operator creates them, deletes the listed ones and writes the status.

Rules:
- replicas ``0..replicas-1`` each have exactly one pod ``<name>-<ordinal>``; missing ones are created;
- surplus replicas are deleted, highest ordinal first;
- a Failed/Succeeded pod is counted in its replica's :mod:`.failures` history and replaced once its
  backoff is over (on the same cores when still free, on another node when the kubelet refused it);
- a pinned pod kube-scheduler still finds Unschedulable ``unschedulable_seconds`` after its
  creation is deleted and its replica placed again, avoiding that node for a while;
- a pinned pod kube-scheduler has said nothing at all about for ``scheduler_silence_seconds``
  (:data:`SCHEDULER_SILENCE_SECONDS` by default) is reported (``Decision.unheard``) and kept: a scheduler that does not look at pods (stopped, or
  wedged) would not look at a new one either, and it would come back under the same name;
- a pod whose node is gone, or NotReady for longer than the grace period, is deleted and re-placed;
- a pod from an older spec (template hash) is replaced one replica at a time, and only while every
  other replica is available; a not-ready outdated pod may go at once (it serves nothing).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from neuronplace.placement import failures as fl
from neuronplace.placement.claims import cores_of, node_of
from neuronplace.placement.conditions import condition
from neuronplace.placement.names import (
    CONDITION_POD_SCHEDULED,
    CONDITION_READY,
    REASON_UNSCHEDULABLE,
    TEMPLATE_HASH_ANNOTATION,
)
from neuronplace.placement.pods import template_hash
from neuronplace.placement.status import pod_is_ready
from neuronplace.runtime.coreset import CoreRange

# Deletion reasons (also the Event reasons the handlers post).
SURPLUS = "ScaledDown"
FAILED = "PodFailed"
UNSCHEDULABLE = "PodUnschedulable"
NODE_GONE = "NodeGone"
NODE_NOT_READY = "NodeNotReady"
OUTDATED = "RollingUpdate"
STRAY = "StrayPod"


@dataclass(frozen=True)
class Deletion:
    pod: str
    reason: str
    message: str
    force: bool = False  # grace period 0: the node cannot run the pod's shutdown anyway
    cause: str = ""  # a move's (:mod:`.moves`): its node's first detector's words, the metric's label


@dataclass(frozen=True)
class Decision:
    deletions: tuple[Deletion, ...] = ()
    create: tuple[int, ...] = ()  # ordinals that need a pod, in order
    prefer: Mapping[int, tuple[str, CoreRange]] = field(default_factory=dict)  # keep these cores if free
    requeue_after: float | None = None  # look again then even without events
    avoid: Mapping[int, frozenset[str]] = field(default_factory=dict)  # nodes a replica to create must not use
    failures: tuple[fl.Failure, ...] = ()  # attempts that failed since the last look (an Event each)
    # Replica histories as they are after this pass: ordinal → history, or None to forget it.
    history: Mapping[int, fl.ReplicaHistory | None] = field(default_factory=dict)
    # One line per pinned pod kube-scheduler has given no verdict on for scheduler_silence_seconds.
    unheard: tuple[str, ...] = ()


# How long a pinned pod may wait for any word from kube-scheduler before that is reported, by default.
# kube-scheduler looks at a new pod within a second or so, and says so in its PodScheduled condition
# (a bind, or why not). Half a minute of silence (three times the default unschedulable timeout; a
# busy scheduler's queue, its own restart fit in it) means it is not looking at pods at all.
SCHEDULER_SILENCE_SECONDS = 30.0


_ORDINAL = re.compile(r"^(0|[1-9][0-9]*)$")


def ordinal_of(pod: Mapping[str, Any], inference_name: str) -> int | None:
    """The replica ordinal of a pod named ``<name>-<ordinal>``, or None for any other name."""
    name = (pod.get("metadata") or {}).get("name", "")
    prefix = inference_name + "-"
    if not name.startswith(prefix) or not _ORDINAL.match(name[len(prefix) :]):
        return None
    return int(name[len(prefix) :])


def _parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        # RFC 3339 as the API server writes it ("...Z"), or as the client library re-serialises
        # it ("...+00:00"); a stamp without a zone is UTC.
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def node_not_ready_since(node: Mapping[str, Any]) -> dt.datetime | None:
    """When the node's Ready condition last turned False/Unknown; None while it is Ready.

    A node without a Ready condition (just registered) counts as Ready here: the placement engine's
    inventory decides whether new replicas may go there.
    """
    ready = condition(node, CONDITION_READY)
    if not ready or ready.get("status") == "True":
        return None
    return _parse_time(ready.get("lastTransitionTime")) or dt.datetime.min.replace(tzinfo=dt.UTC)


def _owned_by(pod: Mapping[str, Any], uid: str | None) -> bool:
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid") == uid:
            return True
    return False


def decide(
    inference: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, Mapping[str, Any]],
    *,
    now: dt.datetime,
    node_grace_seconds: float,
    last_known: Mapping[int, tuple[str, CoreRange]] | None = None,
    history: Mapping[int, fl.ReplicaHistory] | None = None,
    unschedulable_seconds: float = 10.0,
    scheduler_silence_seconds: float = SCHEDULER_SILENCE_SECONDS,
    failure_backoff: fl.Backoff,
) -> Decision:
    """What to do next for a valid ``inference`` (:func:`.validation.validate` said so) given the
    pods labelled with its name and all known nodes.

    ``last_known`` maps ordinals to the (node, cores) their previous pod held, so a recreated replica
    asks for the same cores. ``history`` holds each replica's failed attempts (:mod:`.failures`);
    the Decision says how it changes, ``failure_backoff`` how long a failed replica waits.
    """
    meta = inference["metadata"]
    spec = inference["spec"]
    name, uid = meta["name"], meta.get("uid")
    # validate() refused anything but a whole number ≥ 0, or no number at all (one replica).
    desired: int = 1 if spec.get("replicas") is None else spec["replicas"]
    cores_per_replica = spec["coresPerReplica"]
    wanted_hash = template_hash(spec)
    histories = dict(history or {})
    updates: dict[int, fl.ReplicaHistory | None] = {}
    failures: list[fl.Failure] = []

    prefer: dict[int, tuple[str, CoreRange]] = {}
    for known_ordinal, (known_node, known_cores) in (last_known or {}).items():
        if known_cores.count == cores_per_replica:
            prefer[known_ordinal] = (known_node, known_cores)

    deletions: list[Deletion] = []
    unheard: list[str] = []
    silence = scheduler_silence_seconds
    occupied: set[int] = set()  # ordinals whose pod name is taken (by any pod, ours or not)
    current: dict[int, Mapping] = {}  # live, kept pods of ours by ordinal
    requeue: float | None = None

    def look_again(seconds: float) -> None:
        nonlocal requeue
        seconds = max(seconds, 0.5)
        requeue = seconds if requeue is None else min(requeue, seconds)

    def fail(failure: fl.Failure) -> fl.ReplicaHistory:
        """Count ``failure`` (once per attempt) and return the replica's history after it."""
        before = histories.get(failure.replica)
        after = fl.record(before, failure, now, failure_backoff)
        if after is not before:
            failures.append(failure)
            histories[failure.replica] = updates[failure.replica] = after
        return after

    for pod in pods:
        pod_meta = pod.get("metadata") or {}
        ordinal = ordinal_of(pod, name)
        if ordinal is not None:
            occupied.add(ordinal)
        if not _owned_by(pod, uid):
            continue  # an older incarnation's pod: garbage collection removes it; its name waits
        if pod_meta.get("deletionTimestamp"):
            continue
        this_pod = pod_meta.get("name", "")
        if ordinal is None:
            deletions.append(Deletion(this_pod, STRAY, f"pod {this_pod} is not named {name}-<ordinal>"))
            continue
        if ordinal >= desired:
            deletions.append(Deletion(this_pod, SURPLUS, f"replica {ordinal} is beyond replicas={desired}"))
            continue
        node_name = node_of(pod)
        cores = cores_of(pod)
        ended = fl.failed_pod(pod, ordinal, node_name)
        if ended is not None:
            # The ended pod stays until the backoff is over (it holds no cores; its status says why).
            after = fail(ended)
            wait = after.waiting(now)
            if wait > 0 and _template_hash_of(pod) != wanted_hash:
                # The spec changed since this attempt: the next one is a different pod, tried now.
                histories[ordinal] = updates[ordinal] = dataclasses.replace(after, retry_at=None)
            elif wait > 0:
                look_again(wait)
                continue
            deletions.append(
                Deletion(this_pod, FAILED, f"pod {this_pod} ended ({ended.reason}: {ended.message}); recreating it")
            )
            if ended.avoid_node:
                prefer.pop(ordinal, None)
            elif node_name and cores and cores.count == cores_per_replica:
                prefer[ordinal] = (node_name, cores)
            continue
        node = nodes.get(node_name) if node_name else None
        if node is None:
            deletions.append(
                Deletion(this_pod, NODE_GONE, f"node {node_name!r} of pod {this_pod} is gone; re-placing", force=True)
            )
            prefer.pop(ordinal, None)
            continue
        since = node_not_ready_since(node)
        if since is not None:
            waited = (now - since).total_seconds()
            if waited >= node_grace_seconds:
                deletions.append(
                    Deletion(
                        this_pod,
                        NODE_NOT_READY,
                        f"node {node_name} NotReady for {int(waited)}s (grace {int(node_grace_seconds)}s); re-placing",
                        force=True,
                    )
                )
                prefer.pop(ordinal, None)
                continue
            look_again(node_grace_seconds - waited)
        if not (pod.get("spec") or {}).get("nodeName"):
            refused = _unschedulable(pod, ordinal, node_name, now, unschedulable_seconds)
            if isinstance(refused, fl.Failure):
                fail(refused)
                deletions.append(
                    Deletion(this_pod, UNSCHEDULABLE, f"pod {this_pod} unschedulable on {node_name}: {refused.message}")
                )
                prefer.pop(ordinal, None)
                continue
            quiet = _silent_for(pod, now)
            if quiet is not None and quiet >= silence:
                # No requeue: whatever kube-scheduler writes next is a pod event.
                unheard.append(
                    f"pod {this_pod} pinned to node {node_name} has not been looked at by kube-scheduler "
                    f"for more than {int(silence)}s"
                )
            elif refused is not None:
                look_again(refused if quiet is None else min(refused, silence - quiet))
        elif histories.get(ordinal) is not None and _ran_long_enough(pod, now):
            histories.pop(ordinal)
            updates[ordinal] = None
        if node_name and cores is not None and cores.count == cores_per_replica:
            prefer[ordinal] = (node_name, cores)
        current[ordinal] = pod

    for ordinal in [i for i in histories if i >= desired]:  # scaled away: nothing left to back off
        histories.pop(ordinal)
        updates[ordinal] = None

    # Surplus goes highest ordinal first.
    deletions.sort(key=lambda d: (d.reason != SURPLUS, -(ordinal_of({"metadata": {"name": d.pod}}, name) or 0)))
    create = []
    avoid: dict[int, frozenset[str]] = {}
    for ordinal in range(desired):
        if ordinal in occupied:
            continue
        replica_history = histories.get(ordinal)
        if replica_history is not None:
            wait = replica_history.waiting(now)
            if wait > 0:
                look_again(wait)
                continue
            if replica_history.avoided(now):
                avoid[ordinal] = replica_history.avoided(now)
                # If the avoided node is the only one that fits, the replica waits for it: look again
                # when it may be used, not at the next resync.
                look_again(replica_history.avoided_for(now) or 0.0)
        create.append(ordinal)

    rollout = _next_rollout(current, desired, wanted_hash)
    if rollout is not None:
        deletions.append(rollout)
    return Decision(
        deletions=tuple(deletions),
        create=tuple(create),
        prefer=prefer,
        requeue_after=requeue,
        avoid=avoid,
        failures=tuple(failures),
        history=updates,
        unheard=tuple(unheard),
    )


def _template_hash_of(pod: Mapping[str, Any]) -> str | None:
    return ((pod.get("metadata") or {}).get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION)


def _created(pod: Mapping[str, Any]) -> dt.datetime | None:
    return _parse_time((pod.get("metadata") or {}).get("creationTimestamp"))


def _unschedulable(
    pod: Mapping[str, Any], ordinal: int, node: str | None, now: dt.datetime, timeout: float
) -> fl.Failure | float | None:
    """For a pod not yet bound: the failure when kube-scheduler has found it Unschedulable for
    ``timeout`` seconds since its creation; else the seconds until that could be so (None: never)."""
    scheduled = condition(pod, CONDITION_POD_SCHEDULED)
    created = _created(pod)
    if created is None:
        return None
    left = timeout - (now - created).total_seconds()
    if scheduled.get("status") != "False" or scheduled.get("reason") != REASON_UNSCHEDULABLE:
        return max(left, timeout / 2)  # the scheduler has not said yet: look again then
    if left > 0:
        return left
    message = scheduled.get("message") or "kube-scheduler found no room for it"
    attempt = (pod.get("metadata") or {}).get("creationTimestamp")
    return fl.Failure(ordinal, attempt, node, REASON_UNSCHEDULABLE, message, avoid_node=True, wait=False)


def _silent_for(pod: Mapping[str, Any], now: dt.datetime) -> float | None:
    """Seconds since an unbound pod's creation while kube-scheduler has written no PodScheduled
    condition on it; None once it has (any verdict), or when the creation time is unknown."""
    created = _created(pod)
    if created is None or condition(pod, CONDITION_POD_SCHEDULED):
        return None
    return (now - created).total_seconds()


def _ran_long_enough(pod: Mapping[str, Any], now: dt.datetime) -> bool:
    """Whether a bound pod has been Running long enough to forgive its replica's failures."""
    created = _created(pod)
    running = (pod.get("status") or {}).get("phase") == "Running"
    return running and created is not None and (now - created).total_seconds() >= fl.RESET_AFTER_SECONDS


def _next_rollout(current: Mapping[int, Mapping], desired: int, wanted_hash: str) -> Deletion | None:
    """At most one outdated pod to replace now (one replica at a time).

    Nothing is replaced while any replica in ``0..desired-1`` lacks a live pod (missing, being
    deleted, or deleted in this pass). Then a not-ready outdated pod goes first (it serves nothing);
    otherwise the highest outdated ordinal goes once every replica is ready.
    """
    outdated = [i for i, pod in current.items() if _template_hash_of(pod) != wanted_hash]
    if not outdated or any(i not in current for i in range(desired)):
        return None
    not_ready = [i for i in outdated if not pod_is_ready(current[i])]
    if not_ready:
        chosen = max(not_ready)
    elif all(pod_is_ready(pod) for pod in current.values()):
        chosen = max(outdated)
    else:
        return None
    pod_name = current[chosen]["metadata"]["name"]
    return Deletion(pod_name, OUTDATED, f"pod {pod_name} runs an older spec; replacing it (one replica at a time)")
