"""The operator's view of the cluster: slimmed copies of what the watches and lists report, and the ledger.

One :class:`Cache` per operator process holds the NeuronInferences, the managed pods, every node,
the core ledger, the capacity requests, the Neuron DRA objects and the storage objects
(:mod:`.storage`), all behind one lock. A ruling (:meth:`Cache.rule`) reads this view and reserves
cores under the same lock, so two inferences reconciled at once can never get the same cores.

The cache does no I/O: watch events (``apply_*``) and full lists (:mod:`.sync`) are folded in by
the same methods, and each returns the inferences it affects so that the caller can queue them.
What it keeps of each object is slimmed (:mod:`.slim`): memory is what shapes it.

This module declares the state and the lock, and holds the NeuronInferences, the scope, node and
storage events and the ruling. The rest of the methods are in mixins, one concept each, that work
on this state under this lock (the pieces share the ledger and the waiting set, so one lock it
stays): :mod:`.pod_cache` (pods, capacity requests, creates under way), :mod:`.dra_cache` (slices
and claims), :mod:`.waiting_room` (PriorityClasses, the waiting order), :mod:`.full_lists` (start-up
and resync lists). The nodes are a part of their own, :class:`~.node_cache.NodeCache`.
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from neuronplace.operator.dra_cache import DraCache
from neuronplace.operator.dra_state import DraState
from neuronplace.operator.full_lists import FullLists
from neuronplace.operator.keys import DELETED, Key
from neuronplace.operator.node_cache import NodeCache
from neuronplace.operator.pod_cache import PodCache
from neuronplace.operator.storage import CLAIMS, Storage
from neuronplace.operator.waiting_room import WaitingRoom
from neuronplace.placement.claims import node_of, pod_key
from neuronplace.placement.failures import ReplicaHistory
from neuronplace.placement.fleet import Fleet
from neuronplace.placement.health import DETECTED, HEALTH_SETTLE_SECONDS
from neuronplace.placement.inventory import NodeInventory
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.ruling import Rules, Ruling, View, rule
from neuronplace.placement.status import Problem
from neuronplace.placement.usage import Usage
from neuronplace.placement.volumes import claim_names
from neuronplace.runtime.coreset import CoreRange

T = TypeVar("T")


def _template_spec(inference: Mapping[str, Any]) -> Mapping[str, Any]:
    return ((inference.get("spec") or {}).get("template") or {}).get("spec") or {}


# ---- the cache -----------------------------------------------------------------------------------


class Cache(PodCache, DraCache, WaitingRoom, FullLists):
    """Caches and ledger of one operator process. Every attribute is guarded by ``_lock``: the
    methods that fold in an event or a list (``apply_*``, ``replace_*``, :mod:`.full_lists`, which
    folds a whole page in under one acquisition), rule, or return a copy take it; the others that
    touch state (``observe_*``, ``remember_inference``, ``forget_inference``, ``fleet``, the pod
    views) expect the caller to hold it."""

    def __init__(
        self,
        namespaces: tuple[str, ...] = (),
        node_selector: str = "",
        unhealthy_conditions: tuple[tuple[str, str], ...] = DETECTED,
        health_settle_seconds: float = HEALTH_SETTLE_SECONDS,
    ) -> None:
        self.namespaces = namespaces  # watched namespaces; empty: all
        self._lock = threading.Lock()
        self.ledger = Ledger()
        self.usage = Usage()  # what the pods on each node request (cpu, memory, ...), beside the cores
        self.inferences: dict[Key, dict] = {}
        self.pods: dict[tuple[str, str], dict] = {}  # managed pods by (namespace, name), slimmed
        self.pods_of: dict[Key, set[str]] = {}  # inference → its pods' names
        # Every node, and the managed ones as placement sees them (their health window included).
        self.node_cache = NodeCache(node_selector, unhealthy_conditions, health_settle_seconds)
        # Where each replica last ran: a deleted or failed pod is recreated on the same cores if free.
        self.last_known: dict[Key, dict[int, tuple[str, CoreRange]]] = {}
        self.inflight: set[str] = set()  # "ns/pod" reserved, create under way
        self.waiting_for_room: set[Key] = set()  # inferences with replicas that did not fit
        self.storage = Storage()  # the claims, volumes and storage classes that decide where volumes go
        self.priority_classes: dict[str, int] = {}  # PriorityClass name → value (cluster-scoped)
        # Capacity-request pods by inference, then pod name; slimmed (what placement.capacity_upkeep reads).
        self.capacity_requests: dict[Key, dict[str, dict]] = {}
        # Managed pods pinned to a node and not bound yet: kube-scheduler does not count them on
        # their node until it binds them, so a capacity request made meanwhile could be bound there.
        self.unbound: set[tuple[str, str]] = set()
        # Pods ("ns/pod") and NeuronInferences ((ns, name)) deleted while a full resync reads its
        # lists (None when none runs): the lists may still show them, and they must not come back
        # as ghosts (a pod holding cores, an inference getting pods).
        self.deleted_during_resync: set[str | Key] | None = None
        # The Neuron DRA driver's slices and the ResourceClaims.
        self.dra = DraState()

    # ---- scope ---------------------------------------------------------------------------------

    def watches(self, namespace: str | None) -> bool:
        return not self.namespaces or namespace in self.namespaces

    # ---- the nodes (lock held) -----------------------------------------------------------------

    @property
    def nodes(self) -> dict[str, dict]:
        """Every node, slimmed."""
        return self.node_cache.nodes

    @property
    def inventories(self) -> dict[str, NodeInventory]:
        """The managed nodes as placement sees them."""
        return self.node_cache.inventories

    def observe_node(self, node: Mapping[str, Any], deleted: bool = False) -> bool:
        """Update the node caches; True when what placement sees has changed."""
        return self.node_cache.observe(node, self.dra.nodes, deleted)

    def fleet(self) -> Fleet:
        """The managed nodes as placement sees them (:meth:`.NodeCache.fleet`)."""
        return self.node_cache.fleet()

    # ---- the NeuronInferences ------------------------------------------------------------------

    def remember_inference(self, body: dict) -> Key:
        """Cache a NeuronInference; from now on the ledger counts its pods as ours. The trust is
        by UID: pods of a deleted namesake stay foreign."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        old_uid = ((self.inferences.get(key) or {}).get("metadata") or {}).get("uid")
        uid = meta.get("uid")
        if old_uid and old_uid != uid:
            self.ledger.distrust(old_uid)
        self.inferences[key] = body
        if uid:
            self.ledger.trust(uid)
        return key

    def forget_inference(self, key: Key, uid: str | None = None) -> None:
        """Drop a NeuronInference (``uid``: the deleted one's, when the cache may not hold it); its
        pods' claims count as foreign from now on."""
        inference = self.inferences.pop(key, None)
        for gone in {uid, ((inference or {}).get("metadata") or {}).get("uid")} - {None}:
            self.ledger.distrust(gone)
        self.last_known.pop(key, None)
        self.waiting_for_room.discard(key)

    def apply_inference(self, kind: str | None, body: Mapping[str, Any]) -> Key | None:
        """A NeuronInference event; returns its key, or None when its namespace is not watched."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if not self.watches(key[0]):
            return None
        with self._lock:
            if kind == DELETED:
                self.forget_inference(key, meta.get("uid"))
                if self.deleted_during_resync is not None:
                    self.deleted_during_resync.add(key)
            else:
                self.remember_inference(copy.deepcopy(dict(body)))
        return key

    def inference_keys(self) -> list[Key]:
        """The keys of every cached NeuronInference."""
        with self._lock:
            return list(self.inferences)

    # ---- watch events (take the lock) ----------------------------------------------------------

    def apply_node(self, kind: str | None, body: Mapping[str, Any]) -> set[Key]:
        """A node event; returns the inferences it affects: those with pods on it when it went away
        or changed readiness or Neuron hardware health, and those waiting for room when what
        placement sees changed."""
        name = (body.get("metadata") or {}).get("name")
        with self._lock:
            was_ready = self.node_cache.ready(name)
            was_unhealthy = self.node_cache.unhealthy(name)
            changed = self.observe_node(body, deleted=kind == DELETED)
            is_ready = self.node_cache.ready(name)
            affected: set[Key] = set()
            if kind == DELETED or was_ready != is_ready or was_unhealthy != self.node_cache.unhealthy(name):
                affected = {
                    key
                    for key, names in self.pods_of.items()
                    for pod in names
                    if node_of(self.pods.get((key[0], pod)) or {}) == name
                }
            if changed:
                affected |= self.waiting_for_room
        return affected

    def apply_storage(self, kind: str, event: str | None, body: Mapping[str, Any]) -> set[Key]:
        """A PersistentVolumeClaim, PersistentVolume or StorageClass event (``kind``: ``storage.KINDS``);
        returns the inferences it may concern when what placement reads changed: those waiting for
        room (all of them; for a claim, those in its namespace) and those naming the claim."""
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace"), meta.get("name")
        if kind == CLAIMS and not self.watches(namespace):
            return set()
        with self._lock:
            if not self.storage.observe(kind, body, deleted=event == DELETED):
                return set()
            if kind != CLAIMS:
                return set(self.waiting_for_room)
            return {key for key in self.waiting_for_room if key[0] == namespace} | {
                key
                for key, inference in self.inferences.items()
                if key[0] == namespace and name in claim_names(_template_spec(inference))
            }

    def read_ledger(self, read: Callable[[Ledger, Mapping[str, NodeInventory]], T]) -> T:
        """``read(ledger, inventories)`` under the lock: a consistent view of the cores (the
        metrics scrape reads the ledger gauges this way, from its own thread)."""
        with self._lock:
            return read(self.ledger, self.inventories)

    # ---- a ruling (takes the lock) ------------------------------------------------------------

    def rule(
        self,
        key: Key,
        rules: Rules,
        now: dt.datetime,
        history: Mapping[int, ReplicaHistory],
        refused: tuple[int | None, Problem] | None,
        excluded: frozenset[str] = frozenset(),
        requests_made: Mapping[int, tuple[float, ...]] | None = None,
    ) -> tuple[dict, Ruling] | None:
        """The ruling for one inference on this view of the cluster, with its replicas reserved
        and marked as being created (:meth:`settle` ends that); None when the inference is gone."""
        with self._lock:
            inference = self.inferences.get(key)
            if inference is None:
                return None
            view = View(
                pods=self.pods_of_inference(key),
                nodes=self.nodes,
                fleet=self.fleet(),
                ledger=self.ledger,
                usage=self.usage,
                claims=self.storage.claims,
                volumes=self.storage.volumes,
                classes=self.storage.classes,
                priority_classes=self.priority_classes,
                requests=self.capacity_requests.get(key, {}),
                requests_on=self._requests_on,
                last_known=self.last_known.get(key, {}),
                history=history,
                refused=refused,
                excluded=excluded,
                requests_made=requests_made or {},
            )
            ruling = rule(inference, view, rules, now)
            self.inflight.update(pod_key(key[0], c.pod["metadata"]["name"]) for c in ruling.creations)
            if ruling.waiting_for_room is True:
                self.waiting_for_room.add(key)
            elif ruling.waiting_for_room is False:
                self.waiting_for_room.discard(key)
            return inference, ruling

    def status_view(self, key: Key, inference: dict) -> tuple[dict, list[dict]]:
        """What a status is built from: the inference as cached now (else ``inference``) and its pods."""
        with self._lock:
            return self.inferences.get(key, inference), self.pods_of_inference(key)
