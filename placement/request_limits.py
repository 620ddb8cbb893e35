"""Where and how often capacity requests may be made, so that they never churn. Pure.

A capacity request (:mod:`.capacity_requests`) asks kube-scheduler for what a replica needs, and
kube-scheduler counts differently from the ledger: a pod the ledger counts on a node and
kube-scheduler does not (one pinned there that it never binds, say) leaves room by kube-scheduler's
count where placement sees none. The request is then bound to that node, found in the way there and
deleted, and a new one would be bound there again: thousands of pod events a minute, for as long as
the disagreement lasts. Three limits make that impossible by construction:

- **Only managed nodes.** A request carries the operator's node selector as required node affinity
  (:func:`node_expressions`): a node the operator may not place on could never take the replica.
- **Exclusions.** A node where one of the inference's requests is bound and goes (the ledger's
  free cores there do not cover it) while a replica still waits is a node where placement refused
  that replica (a waiting replica was refused everywhere): it is excluded (:func:`excluded_nodes`),
  and the inference's requests then ask for a node whose ``kubernetes.io/hostname`` is none of
  those. The exclusions are the operator's memory of the inference; they go when no replica waits
  (the replica was placed: the disagreement is over).
- **A rate bound.** At most :data:`MAX_PER_WINDOW` requests are made for one replica in any
  :data:`WINDOW_SECONDS` (:func:`admit`, the clock passed in), whatever else goes wrong (a node
  without a hostname label cannot be excluded); a replica held back says so and when it is next.

Node affinity by label, not ``matchFields``: Karpenter ignores pods whose node affinity uses
``matchFields``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from neuronplace.placement.fleet import Fleet
from neuronplace.placement.selectors import parse_node_selector

HOSTNAME_LABEL = "kubernetes.io/hostname"
MAX_PER_WINDOW = 3  # requests made for one replica ...
WINDOW_SECONDS = 60.0  # ... in any window this long

_OPERATORS = {"=": "In", "!=": "NotIn", "exists": "Exists", "!exists": "DoesNotExist"}


def node_expressions(node_selector: str, excluded: Collection[str], fleet: Fleet) -> list[dict]:
    """The node-affinity ``matchExpressions`` every request of the inference carries: the
    operator's ``node_selector`` (which nodes it manages), and the ``excluded`` nodes by their
    hostname label (one without that label cannot be excluded this way; the rate bound holds)."""
    expressions: list[dict[str, Any]] = []
    for op, key, value in parse_node_selector(node_selector):
        expression: dict[str, Any] = {"key": key, "operator": _OPERATORS[op]}
        if value is not None:
            expression["values"] = [value]
        expressions.append(expression)
    hostnames = sorted(
        {fleet.by_name[name].labels[HOSTNAME_LABEL] for name in excluded if HOSTNAME_LABEL in _labels(fleet, name)}
    )
    if hostnames:
        expressions.append({"key": HOSTNAME_LABEL, "operator": "NotIn", "values": hostnames})
    return expressions


def _labels(fleet: Fleet, name: str) -> Mapping[str, str]:
    node = fleet.by_name.get(name)
    return node.labels if node is not None else {}


def with_expressions(affinity: Mapping[str, Any] | None, expressions: Sequence[Mapping[str, Any]]) -> dict | None:
    """A pod's ``affinity`` with ``expressions`` required on top: added to every required node
    selector term (the terms are alternatives, so each must carry them), or as the one term."""
    if not expressions:
        return dict(affinity) if affinity else None
    out = {key: value for key, value in (affinity or {}).items() if key != "nodeAffinity"}
    node_affinity = dict((affinity or {}).get("nodeAffinity") or {})
    required = dict(node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or [{}]
    required["nodeSelectorTerms"] = [
        {**term, "matchExpressions": [*(term.get("matchExpressions") or ()), *expressions]} for term in terms
    ]
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = required
    out["nodeAffinity"] = node_affinity
    return out


def excluded_nodes(
    before: Collection[str], bound_to: Iterable[str], waiting: Collection[int], fleet: Fleet
) -> frozenset[str]:
    """The nodes the inference's requests must avoid from now on: none when no replica waits; else
    those ``before`` and every managed node one of its requests goes from (``bound_to``).
    A node not (or no longer) in the ``fleet`` is not kept: placement never refused a replica there
    (the node event may simply not have come yet)."""
    if not waiting:
        return frozenset()
    return frozenset(name for name in (*before, *bound_to) if name in fleet.by_name)


@dataclass(frozen=True)
class Admission:
    """What :func:`admit` allows: the replicas whose request may be made now, and for the others
    why not (the ``WaitingForCapacity`` state) and when to look again."""

    now: tuple[int, ...] = ()
    held: Mapping[int, str] = field(default_factory=dict)
    retry_after: float | None = None


def recent(times: Iterable[float], now: float) -> tuple[float, ...]:
    """The creation times (seconds) still inside the window at ``now``."""
    return tuple(sorted(t for t in times if now - t < WINDOW_SECONDS))


def admit(replicas: Iterable[int], made: Mapping[int, Sequence[float]], now: dt.datetime) -> Admission:
    """Which of ``replicas`` may have a request made at ``now``: those with fewer than
    :data:`MAX_PER_WINDOW` made (``made``: creation times in Unix seconds) in the last
    :data:`WINDOW_SECONDS`."""
    seconds = now.timestamp()
    allowed: list[int] = []
    held: dict[int, str] = {}
    retry: float | None = None
    for replica in replicas:
        times = recent(made.get(replica, ()), seconds)
        if len(times) < MAX_PER_WINDOW:
            allowed.append(replica)
            continue
        wait = times[-MAX_PER_WINDOW] + WINDOW_SECONDS - seconds
        retry = wait if retry is None else min(retry, wait)
        next_at = (now + dt.timedelta(seconds=wait)).strftime("%Y-%m-%dT%H:%M:%SZ")
        held[replica] = (
            f"held back: {len(times)} made for it in the last {WINDOW_SECONDS:.0f}s, at most {MAX_PER_WINDOW} are "
            f"(kube-scheduler keeps binding them where placement finds no room for the replica); next at {next_at}"
        )
    return Admission(now=tuple(allowed), held=held, retry_after=retry)
