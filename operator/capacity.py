"""Capacity requests on the API: create, delete and report them (what to do is ``placement.capacity``).

The cache keeps every capacity-request pod it sees (:func:`slim_request`), by NeuronInference. The
reconciler calls :meth:`CapacityRequests.make_room` before it creates replica pods on nodes (their
own requests go, and those bound to the same nodes that no longer fit there), and
:meth:`CapacityRequests.keep` at the end of every reconcile with the replicas that fit nowhere (an
empty set when the resource is refused, scaled down or placed), which creates and deletes requests
so that exactly those replicas have one.

Every deletion has no grace period: the pod runs only a pause container, and kube-scheduler must
stop counting its NeuronCores before the replica that replaces it is checked. A request the API
server refuses (a missing PriorityClass, a quota) is reported in ``WaitingForCapacity`` and tried
again at the next reconcile (at least every resync), never in a loop.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from neuronplace.operator.settings import OperatorSettings
from neuronplace.operator.writes import Temporary, Writer
from neuronplace.placement import capacity as cp
from neuronplace.placement.claims import requested_amount
from neuronplace.placement.conditions import condition
from neuronplace.placement.names import (
    CAPACITY_REQUEST_LABEL,
    CONDITION_POD_SCHEDULED,
    NEURONCORE_RESOURCE,
    REASON_CAPACITY_REQUESTED,
    REPLICA_LABEL,
    TEMPLATE_HASH_ANNOTATION,
)
from neuronplace.placement.status import Problem

if TYPE_CHECKING:  # the cache imports this module for slim_request
    from neuronplace.operator.cache import Cache, Key
    from neuronplace.placement.request import ReplicaPlacement

log = logging.getLogger("neuronplace.operator")

# How soon to look again when requests wait for replica pods to be bound (kube-scheduler binds a
# pinned pod within a scheduling cycle).
SETTLE_SECONDS = 1.0


def slim_request(pod: Mapping[str, Any]) -> dict:
    """What is read of a capacity request: name, labels, hash, controller, stamps, the node
    kube-scheduler bound it to, its NeuronCores (``cores``) and kube-scheduler's verdict."""
    meta = pod.get("metadata") or {}
    scheduled = condition(pod, CONDITION_POD_SCHEDULED)
    return {
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "labels": {
                k: v for k, v in (meta.get("labels") or {}).items() if k in (CAPACITY_REQUEST_LABEL, REPLICA_LABEL)
            },
            "annotations": {k: v for k, v in (meta.get("annotations") or {}).items() if k == TEMPLATE_HASH_ANNOTATION},
            "ownerReferences": [
                {"controller": True, "uid": ref.get("uid")}
                for ref in meta.get("ownerReferences") or ()
                if ref.get("controller")
            ],
            "creationTimestamp": meta.get("creationTimestamp"),
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "spec": {"nodeName": (pod.get("spec") or {}).get("nodeName")},
        "status": {"conditions": [dict(scheduled)] if scheduled else []},
        "cores": requested_amount(pod, NEURONCORE_RESOURCE),
    }


def _alive(request: Mapping[str, Any]) -> bool:
    return not request["metadata"]["deletionTimestamp"]


class CapacityRequests:
    """Keeps one capacity request per replica that fits nowhere (several threads at once, one
    resource each: the work queue never reconciles a resource twice at the same time)."""

    def __init__(self, settings: OperatorSettings, cache: Cache, writer: Writer) -> None:
        self.settings = settings
        self.cache = cache
        self.writer = writer

    def make_room(self, inference: Mapping[str, Any], placed: Sequence[ReplicaPlacement]) -> None:
        """Before the pods of ``placed`` are created, delete the requests they make unneeded.

        On each node they go to, the requests kube-scheduler bound there that the ledger's free cores
        no longer cover go (this resource's first: its replicas take their room; then the newest),
        so kube-scheduler never sees the node's NeuronCores over-requested and a replica never waits
        behind a request but for a request bound there before its pod is (it preempts it). For each placed replica that took no request's room that way, one
        of the resource's Pending requests goes too (its own first), before kube-scheduler can bind it
        into room the new pods are about to take. :meth:`keep` then settles who keeps which."""
        namespace, name = inference["metadata"]["namespace"], inference["metadata"]["name"]
        doomed: list[tuple[str, str]] = []
        with self.cache.lock:
            mine = [r for r in self.cache.capacity_requests.get((namespace, name), {}).values() if _alive(r)]
            for node in sorted({p.node for p in placed}):
                doomed.extend(self._displaced_on(node, first=mine))
            taken = sum(1 for r in mine if (namespace, r["metadata"]["name"]) in doomed)
            replicas = {p.replica for p in placed}
            pending = sorted(
                (r for r in mine if not r["spec"]["nodeName"] and (namespace, r["metadata"]["name"]) not in doomed),
                key=lambda r: (cp.replica_of(r) not in replicas, r["metadata"]["name"]),
            )
            doomed.extend((namespace, r["metadata"]["name"]) for r in pending[: max(len(placed) - taken, 0)])
        for request_namespace, request in doomed:
            try:
                self._delete(request_namespace, request)
            except Temporary as error:
                # The replicas are reserved already and must still be created (or given back) by
                # the caller; kube-scheduler preempts a request left in the way (lower priority).
                log.warning("capacity request %s/%s not deleted: %s", request_namespace, request, error)

    def keep(self, inference: Mapping[str, Any], waiting: Collection[int]) -> tuple[Problem | None, float | None]:
        """Create and delete requests so that exactly the replicas in ``waiting`` have one (none when
        the setting is off); returns the ``WaitingForCapacity`` condition's reason and message, and
        when to look again (requests not made yet while replica pods settle on their nodes)."""
        meta = inference["metadata"]
        key: Key = (meta["namespace"], meta["name"])
        if not self.settings.capacity_requests:
            waiting = ()
        with self.cache.lock:
            existing = list(self.cache.capacity_requests.get(key, {}).values())
            # A request kube-scheduler bound where the ledger's free cores no longer cover it (bound
            # while a replica pod there was being created or not yet bound) goes now, whoever's it
            # is: under Direct binding the kubelet would otherwise turn one of the two away.
            crowded = [
                gone
                for node in sorted({r["spec"]["nodeName"] for r in existing if r["spec"]["nodeName"] and _alive(r)})
                for gone in self._displaced_on(node)
            ]
        for request_namespace, request in crowded:
            self._delete(request_namespace, request)
        if crowded:
            with self.cache.lock:
                existing = list(self.cache.capacity_requests.get(key, {}).values())
        if not waiting and not existing:
            return None, None
        wanted = {replica: self._build(inference, replica) for replica in waiting}
        wanted_hash = next(iter(wanted.values()))["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] if wanted else ""
        todo = cp.plan(meta.get("uid"), waiting, existing, wanted_hash)
        for name in todo.delete:
            self._delete(key[0], name)
        with self.cache.lock:
            # Replica pods being created, or pinned and not bound yet, are not counted on their
            # node by kube-scheduler: a request made now could be bound into the room they take.
            settling = bool(self.cache.inflight or self.cache.unbound)
        retry = SETTLE_SECONDS if settling and todo.create else None
        refused: dict[int, str] = {}
        for replica in () if settling else todo.create:
            error = self._create(wanted[replica])
            if error is not None:
                refused[replica] = error
        if not waiting:
            return None, None
        with self.cache.lock:
            mine = self.cache.capacity_requests.get(key, {})
            states: dict[int, Mapping[str, Any] | str] = {}
            for replica in waiting:
                request = mine.get(todo.assigned.get(replica) or cp.request_name(meta["name"], replica))
                states[replica] = refused.get(replica) or request or "asked once the placed replica pods are bound"
        return Problem(REASON_CAPACITY_REQUESTED, cp.describe(states)), retry

    def _displaced_on(self, node: str, first: Collection[Mapping[str, Any]] = ()) -> list[tuple[str, str]]:
        """(namespace, name) of the requests bound to ``node`` that the ledger's free cores there do
        not cover (lock held): those in ``first`` go first, then the newest."""
        bound = sorted(
            (r for r in self.cache.requests_on(node) if _alive(r)),
            key=lambda r: (r in first, r["metadata"]["creationTimestamp"] or "", r["metadata"]["name"]),
        )
        ids = {id(r): r for r in bound}
        free = self.cache.ledger.free_count(node)
        return [
            (ids[gone]["metadata"]["namespace"], ids[gone]["metadata"]["name"])
            for gone in cp.displaced(free, [(id(r), r["cores"]) for r in bound])
        ]

    def _build(self, inference: Mapping[str, Any], replica: int) -> dict:
        return cp.build_capacity_request(
            inference,
            replica,
            image=self.settings.capacity_request_image,
            priority_class=self.settings.capacity_priority_class,
        )

    def _create(self, pod: dict) -> str | None:
        """Create one request; None when it exists now, else why not."""
        namespace = pod["metadata"]["namespace"]
        try:
            created = self.writer.create_pod(namespace, pod)
        except Exception as error:  # Temporary or Permanent: reported, tried again next reconcile
            if getattr(error, "status", None) == 409:
                return None  # made before; its watch event brings it
            log.warning("capacity request %s/%s not created: %s", namespace, pod["metadata"]["name"], error)
            return f"capacity request refused: {getattr(error, 'message', None) or error}"
        with self.cache.lock:
            self.cache.observe_pod(created)
        return None

    def _delete(self, namespace: str, name: str) -> None:
        self.writer.delete_pod(namespace, name, force=True)
        with self.cache.lock:
            self.cache.forget_request(namespace, name)
