"""What the API server's answers to a ruling's pod creates mean for the inference (pure).

The operator creates a ruling's replica pods concurrently and hands each answer here as an
:class:`Answer`; :func:`judge` says which reservations go back, the ``Placed`` condition's
problem, the Events, and whether to look again or raise:

- a pod created: counted, one ``Placed`` Event names every replica placed;
- 409 (the name is still taken: the operator's cache is behind): the reservation is kept (the watch
  event for that pod replaces it with what the pod really holds) and the inference looked at again
  shortly;
- a refused pod (400/422) is a problem of this generation of the spec: remembered, reported in
  ``Placed`` and an Event, and no pod is created again until the generation changes;
- 403 (quota, a terminating namespace, RBAC) is reported the same way but retried slowly;
- anything else (429 first) is temporary: raised to the work queue, which retries it;
- otherwise the replicas that fit nowhere are the problem (``Unschedulable``).

Every failed create gives its reservation back but a 409 and one with no HTTP answer at all (a
timeout, a dropped connection): such a create may have succeeded on the server, and its pod would
then hold those cores before its watch event says so. The next ruling places the replica on the
same reservation again (a 409 then, if the pod exists); a reservation whose pod never appears is
dropped by the next full resync.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from neuronplace.placement.events import WARNING, Event
from neuronplace.placement.names import REASON_PLACED, REASON_POD_FORBIDDEN, REASON_POD_REJECTED
from neuronplace.placement.pods import pod_name
from neuronplace.placement.request import ReplicaPlacement
from neuronplace.placement.ruling import Ruling
from neuronplace.placement.status import Problem


@dataclass(frozen=True)
class Answer:
    """The API server's answer to one replica pod's create."""

    replica: int
    failed: bool = False
    status: int | None = None  # the HTTP status of a failure; None: no HTTP answer (or not an API error)
    message: str = ""
    permanent: bool = False  # the pod itself was refused (400, 422): this spec's pod is never admitted


@dataclass(frozen=True)
class Judgement:
    """What the answers mean. ``raise_answer``: the index of the answer whose error goes to the
    work queue (a temporary failure it retries); then nothing after the creates is carried out."""

    problem: Problem | None = None  # the Placed condition's reason and message; None: all placed
    generation_problem: bool = False  # ``problem`` holds until the spec's generation changes
    release: tuple[int, ...] = ()  # replicas whose reservation goes back
    retry: float | None = None
    raise_answer: int | None = None
    events: tuple[Event, ...] = ()
    all_placed: bool = False  # nothing is wrong any more: forget the last Warning posted


def judge(
    name: str, ruling: Ruling, answers: Sequence[Answer], *, conflict_retry: float, forbidden_retry: float
) -> Judgement:
    """The meaning of ``answers`` (one per ``ruling.creations``, in order) for inference ``name``."""
    placements = {c.placement.replica: c.placement for c in ruling.creations}
    created = [placements[a.replica] for a in answers if not a.failed]
    events: list[Event] = []
    if created:
        events.append(Event(REASON_PLACED, "; ".join(describe(name, p) for p in created)))
    retry = conflict_retry if any(a.failed and a.status == 409 for a in answers) else None
    failed = [(i, a) for i, a in enumerate(answers) if a.failed and a.status != 409]
    release = tuple(a.replica for _, a in failed if a.status is not None)
    rejected = [a for _, a in failed if a.permanent]
    if rejected:
        problem = Problem(
            REASON_POD_REJECTED,
            f"the API server refused pod {pod_name(name, rejected[0].replica)}: {rejected[0].message}",
        )
        events.append(Event(REASON_POD_REJECTED, problem.message, WARNING))
        return Judgement(problem, True, release, retry, events=tuple(events))
    throttled = [i for i, a in failed if a.status == 429]
    if throttled:
        return Judgement(release=release, raise_answer=throttled[0], events=tuple(events))
    forbidden = [a for _, a in failed if a.status == 403]
    if forbidden:  # quota, a terminating namespace, or RBAC: report it and retry slowly
        problem = Problem(REASON_POD_REJECTED, f"pod creation forbidden: {forbidden[0].message}")
        events.append(Event(REASON_POD_FORBIDDEN, problem.message, WARNING, once=True))
        return Judgement(problem, False, release, forbidden_retry, events=tuple(events))
    if failed:
        return Judgement(release=release, raise_answer=failed[0][0], events=tuple(events))
    if ruling.unplaceable:
        assert ruling.problem is not None, "a ruling with unplaceable replicas says why"
        events.append(Event(ruling.problem.reason, ruling.problem.message, WARNING, once=True))
        return Judgement(ruling.problem, False, release, retry, events=tuple(events))
    return Judgement(None, False, release, retry, events=tuple(events), all_placed=True)


def describe(name: str, placement: ReplicaPlacement) -> str:
    """One replica placed, as the ``Placed`` Event says it."""
    text = (
        f"replica {placement.replica} → {pod_name(name, placement.replica)} on {placement.node} cores {placement.cores}"
    )
    if len(placement.process_cores) > 1:
        text += " (processes " + ", ".join(str(r) for r in placement.process_cores) + ")"
    return text
