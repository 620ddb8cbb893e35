"""Which capacity requests to delete and to create, around a ruling's replica pods (pure).

A capacity request (:mod:`.capacity_requests`) stands for a replica that fits on no node, so that an
autoscaler adds one. Two moments matter:

- **Room** (:func:`make_room`), before replica pods are created on nodes: on each of those nodes
  the requests kube-scheduler bound there that the ledger's free cores no longer cover go (the
  inference's own first: its replicas take their room; then the newest), so kube-scheduler never
  sees the node's NeuronCores over-requested and a replica never waits behind a request but for a
  request bound there before its pod is (it preempts it). For each placed replica that took no
  request's room that way, one of the inference's Pending requests goes too (its own first), before
  kube-scheduler can bind it into room the new pods are about to take.
- **Upkeep** (:func:`upkeep`), then: a request bound where the ledger's free cores no longer cover
  it goes, whoever's it is (under Direct binding a kubelet would otherwise turn one of the two
  away); then exactly the waiting replicas keep one request each (:func:`.capacity_requests.plan`).
- **Settling** (:func:`to_create_now`), after the replica pods' creates: no request is made while
  replica pods are being created or are pinned and not yet bound: kube-scheduler counts them on
  their node only once bound, so a request made then could be bound into their room.

Requests are the slimmed request pods the operator caches: ``metadata``, ``spec.nodeName``,
``status`` and ``cores`` (the NeuronCores they ask for).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from neuronplace.placement import capacity_requests as cp

# How soon to look again when capacity requests wait for replica pods to be bound, by default (the
# operator's ``capacity_settle_seconds``; kube-scheduler binds a pinned pod within a scheduling cycle).
SETTLE_SECONDS = 1.0

T = TypeVar("T")
Request = Mapping[str, Any]
RequestKey = tuple[str, str]  # (namespace, name) of a capacity request pod


def alive(request: Request) -> bool:
    return not request["metadata"]["deletionTimestamp"]


def key_of_request(request: Request) -> RequestKey:
    return request["metadata"]["namespace"], request["metadata"]["name"]


def displaced_on(bound: Iterable[Request], free_cores: int, first: Collection[Request] = ()) -> list[RequestKey]:
    """The requests of ``bound`` (those kube-scheduler bound to one node) that the ``free_cores``
    the ledger leaves there do not cover: those in ``first`` go first, then the newest."""
    ordered = sorted(
        (r for r in bound if alive(r)),
        key=lambda r: (r in first, r["metadata"]["creationTimestamp"] or "", r["metadata"]["name"]),
    )
    ids = {id(r): r for r in ordered}
    return [key_of_request(ids[gone]) for gone in cp.displaced(free_cores, [(id(r), r["cores"]) for r in ordered])]


def make_room(
    mine: Iterable[Request],
    placed: Sequence[tuple[int, str]],
    requests_on: Callable[[str], Iterable[Request]],
    free_cores: Callable[[str], int],
) -> list[RequestKey]:
    """The requests to delete before replica pods are created: ``placed`` is (replica, node) of
    each, ``mine`` the inference's requests, ``requests_on`` the requests bound to a node and
    ``free_cores`` the ledger's free cores there (the new replicas' reserved)."""
    own = [r for r in mine if alive(r)]
    doomed: list[RequestKey] = []
    for node in sorted({node for _, node in placed}):
        doomed.extend(displaced_on(requests_on(node), free_cores(node), first=own))
    taken = sum(1 for r in own if key_of_request(r) in doomed)
    replicas = {replica for replica, _ in placed}
    pending = sorted(
        (r for r in own if not r["spec"]["nodeName"] and key_of_request(r) not in doomed),
        key=lambda r: (cp.replica_of(r) not in replicas, r["metadata"]["name"]),
    )
    doomed.extend(key_of_request(r) for r in pending[: max(len(placed) - taken, 0)])
    return doomed


@dataclass(frozen=True)
class Upkeep:
    """What :func:`upkeep` asks for: requests to delete, replicas that need one (their pods are
    built by the caller), which kept request stands for which waiting replica."""

    delete: tuple[RequestKey, ...] = ()
    create: tuple[int, ...] = ()
    assigned: Mapping[int, str] = field(default_factory=dict)


def upkeep(
    namespace: str,
    uid: str | None,
    waiting: Collection[int],
    mine: Iterable[Request],
    requests_on: Callable[[str], Iterable[Request]],
    free_cores: Callable[[str], int],
    wanted_hash: str,
    gone: Collection[RequestKey] = (),
) -> Upkeep:
    """Requests to delete and replicas to make one for, so that exactly ``waiting`` have one.

    ``mine`` are the requests of the inference (in ``namespace``, controlled by ``uid`` or by an
    older namesake); ``gone`` are requests deleted already in this pass (:func:`make_room`).
    """
    existing = [r for r in mine if key_of_request(r) not in gone]
    crowded = crowded_by(existing, requests_on, free_cores, gone)
    existing = [r for r in existing if key_of_request(r) not in crowded]
    if not waiting and not existing:
        return Upkeep(delete=tuple(crowded))
    todo = cp.plan(uid, waiting, existing, wanted_hash)
    delete = (*crowded, *((namespace, name) for name in todo.delete))
    return Upkeep(delete=delete, create=todo.create, assigned=todo.assigned)


def crowded_by(
    mine: Iterable[Request],
    requests_on: Callable[[str], Iterable[Request]],
    free_cores: Callable[[str], int],
    gone: Collection[RequestKey] = (),
) -> list[RequestKey]:
    """The requests, whoever's, bound where the ledger's free cores no longer cover them, on the
    nodes the live requests of ``mine`` are bound to (``gone``: deleted already)."""
    nodes = sorted({r["spec"]["nodeName"] for r in mine if r["spec"]["nodeName"] and alive(r)})
    return [
        found
        for node in nodes
        for found in displaced_on((r for r in requests_on(node) if key_of_request(r) not in gone), free_cores(node))
    ]


def to_create_now(
    requests: Mapping[int, T], settling: bool, settle_seconds: float = SETTLE_SECONDS
) -> tuple[Mapping[int, T], float | None]:
    """The capacity requests to create now, and when to look again: none while ``settling``
    (replica pods, any inference's, being created or pinned and not bound yet), then after
    ``settle_seconds``."""
    if settling and requests:
        return {}, settle_seconds
    return requests, None


def waiting_states(
    name: str,
    waiting: Collection[int],
    assigned: Mapping[int, str],
    mine: Mapping[str, Request],
    refused: Mapping[int, str],
) -> dict[int, Request | str]:
    """Where each waiting replica's request stands after the writes (:func:`.capacity_requests.describe`):
    ``mine`` are the inference's requests by name as they are now, ``refused`` why a create failed."""
    states: dict[int, Request | str] = {}
    for replica in waiting:
        request = mine.get(assigned.get(replica) or cp.request_name(name, replica))
        states[replica] = refused.get(replica) or request or "asked once the placed replica pods are bound"
    return states
