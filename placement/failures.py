"""What a replica's failed attempts mean for its next one (pure; clock passed in).

An attempt is one pod of one replica. It fails when the pod ends (``Failed``: the kubelet rejected
it, say ``OutOfcpu``, or its containers exited under ``restartPolicy: Never/OnFailure``;
``Succeeded``: they exited 0) or when kube-scheduler keeps finding it Unschedulable on the node it
is pinned to. Recreating such a pod at once, on the same node and cores, is a create/delete loop
that never ends, so each replica keeps a :class:`ReplicaHistory`:

- the next pod of a replica whose pod ended waits an exponential :class:`Backoff` (by default 10 s,
  doubling up to 5 min, counted from when the end was seen; the operator's settings
  ``failure_backoff_seconds`` and ``max_failure_backoff_seconds``); the ended pod stays until then,
  so a user can still read why it ended;
- a node that refused the pod (a kubelet rejection, or the scheduler's verdict) is avoided by that
  replica for twice the backoff, so the replica goes to another node when one fits; an
  Unschedulable pod already waited ``unschedulable_seconds``, so its replica is placed again at once;
- ten minutes of Running forgive the past: the history is dropped.

A replica whose pod name another pod already has (:func:`name_taken`) fails the same way, with no
node: it waits the backoff, and ``ReplicaFailure`` names that pod and what to do.

The operator keeps the histories in memory; a restarted operator starts each from nothing, so the
backoff restarts at its first step (an ended pod still waits the first step before it is replaced:
there is no tight loop across restarts either).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# The default backoff: the first wait and the longest (``Backoff``).
BACKOFF_FIRST_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 300.0
# A pod Running this long shows the replica works again: its failures are forgotten.
RESET_AFTER_SECONDS = 600.0

# Failure reasons besides the kubelet's own (``pod.status.reason``) and the scheduler's.
EXITED = "ContainersExited"  # Failed without a reason: the containers exited (restartPolicy Never/OnFailure)
COMPLETED = "Completed"  # Succeeded: a server is not meant to exit, so it is recreated too
# Another pod has the replica's name (made before the inference, by hand or by another controller):
# the replica's pod cannot be created until it is gone, so it is tried again with the backoff.
NAME_TAKEN = "NameTaken"


@dataclass(frozen=True)
class Failure:
    """One failed attempt of a replica, as ``replica_pods.decide`` saw it."""

    replica: int
    attempt: str | None  # the pod's creationTimestamp: one attempt is counted once, however often it is seen
    node: str | None
    reason: str  # the kubelet's reason (OutOfcpu), Unschedulable, ContainersExited or Completed
    message: str
    avoid_node: bool  # the node refused the pod: the next attempt goes elsewhere if it can
    wait: bool  # the next attempt waits the backoff (an Unschedulable pod already waited)


@dataclass(frozen=True)
class ReplicaHistory:
    failures: int = 0  # failed attempts since the replica last ran for RESET_AFTER_SECONDS
    last: Failure | None = None
    retry_at: dt.datetime | None = None  # no new pod before this
    avoid: tuple[tuple[str, dt.datetime], ...] = ()  # (node, avoided until)

    def counted(self, failure: Failure) -> bool:
        """Whether ``failure``'s attempt is already in this history."""
        return failure.attempt is not None and self.last is not None and self.last.attempt == failure.attempt

    def avoided(self, now: dt.datetime) -> frozenset[str]:
        return frozenset(node for node, until in self.avoid if until > now)

    def avoided_for(self, now: dt.datetime) -> float | None:
        """Seconds until the first of the nodes avoided now may be used again (None: none is)."""
        ends = [(until - now).total_seconds() for _, until in self.avoid if until > now]
        return min(ends) if ends else None

    def waiting(self, now: dt.datetime) -> float:
        """Seconds before the replica may have a new pod (0: now)."""
        return max((self.retry_at - now).total_seconds(), 0.0) if self.retry_at else 0.0


def name_taken(replica: int, pod: str, inference: str) -> Failure:
    """The failure of a replica whose pod name ``pod`` another pod has."""
    message = (
        f"pod {pod} exists and is not a replica of {inference} (the operator did not create it for this "
        f"NeuronInference); delete or rename that pod, or rename the NeuronInference"
    )
    return Failure(replica, None, None, NAME_TAKEN, message, False, True)


@dataclass(frozen=True)
class Backoff:
    """How long a replica waits after failed attempts: ``first`` seconds after the first, doubling
    with each further failure in a row, never more than ``cap``."""

    first: float = BACKOFF_FIRST_SECONDS
    cap: float = BACKOFF_MAX_SECONDS

    def seconds(self, failures: int) -> float:
        """The wait after the ``failures``-th failed attempt in a row."""
        return min(self.first * 2.0 ** min(max(failures - 1, 0), 16), self.cap)


def record(history: ReplicaHistory | None, failure: Failure, now: dt.datetime, backoff: Backoff) -> ReplicaHistory:
    """``history`` with ``failure`` counted (unchanged when that attempt was counted already); the
    next attempt waits ``backoff`` for this many failures in a row."""
    history = history or ReplicaHistory()
    if history.counted(failure):
        return history
    failures = history.failures + 1
    delay = dt.timedelta(seconds=backoff.seconds(failures))
    avoid = tuple((node, until) for node, until in history.avoid if until > now and node != failure.node)
    if failure.avoid_node and failure.node:
        avoid += ((failure.node, now + 2 * delay),)
    return ReplicaHistory(failures, failure, now + delay if failure.wait else now, avoid)


def summarize(histories: Mapping[int, ReplicaHistory], now: dt.datetime) -> tuple[str, str] | None:
    """(reason, message) of the ``ReplicaFailure`` condition, or None when no replica has failed.

    The reason is the latest failure's; the message names every failing replica, where it failed,
    the cause in the kubelet's or scheduler's own words, and when it is tried again.
    """
    failing = sorted((replica, h) for replica, h in histories.items() if h.failures and h.last is not None)
    if not failing:
        return None
    parts = []
    for replica, history in failing:
        last = history.last
        assert last is not None
        where = f" on {last.node}" if last.node else ""
        text = f"replica {replica}: {last.reason}{where}: {last.message} ({history.failures} failed attempt"
        text += "" if history.failures == 1 else "s"
        if history.retry_at is not None and history.retry_at > now:  # a stamp, so the message stays put
            text += f"; next attempt at {history.retry_at.astimezone(dt.UTC).strftime('%H:%M:%SZ')}"
        parts.append(text + ")")
    latest = max(failing, key=lambda item: item[1].retry_at or now)[1].last
    assert latest is not None
    return latest.reason, "; ".join(parts)


def failed_pod(pod: Mapping, replica: int, node: str | None) -> Failure | None:
    """The failure an ended pod (``Failed`` or ``Succeeded``) stands for; None for any other pod.

    A Failed pod with ``status.reason`` whose containers never started was refused by the kubelet
    (OutOfcpu, OutOfmemory, NodeAffinity, UnexpectedAdmissionError...): that node is avoided.
    """
    status = pod.get("status") or {}
    phase = status.get("phase")
    attempt = (pod.get("metadata") or {}).get("creationTimestamp")
    if phase == "Succeeded":
        return Failure(replica, attempt, node, COMPLETED, "the pod's containers exited 0", False, True)
    if phase != "Failed":
        return None
    reason = status.get("reason")
    # A cached (slimmed) pod carries the verdict as "started"; a full one its container statuses.
    ran = status["started"] if "started" in status else started(status.get("containerStatuses"))
    if reason and not ran:
        message = status.get("message") or f"the kubelet rejected the pod ({reason})"
        return Failure(replica, attempt, node, reason, message, True, True)
    message = status.get("message") or "the pod's containers exited (restartPolicy Never or OnFailure)"
    return Failure(replica, attempt, node, reason or EXITED, message, False, True)


def started(container_statuses: Iterable[Mapping] | None) -> bool:
    """Whether any container of a pod ever started (a rejected pod's never did)."""
    for container in container_statuses or ():
        state = (container or {}).get("state") or {}
        last = (container or {}).get("lastState") or {}
        if "running" in state or (state.get("terminated") or {}).get("startedAt") or last.get("terminated"):
            return True
    return False
