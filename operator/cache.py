"""The operator's view of the cluster: slimmed copies of what the watches and lists report, and the ledger.

Over 300 lines because every method is one step of folding objects in or reading them under the
one lock (the lock must not leave this module).

One :class:`Cache` per operator process holds the NeuronInferences, the managed pods, every node,
the core ledger, the capacity requests and the storage objects (:mod:`.storage`), all behind one
lock. A ruling (:meth:`Cache.rule`) reads this view and reserves cores under the same lock, so two
inferences reconciled at once can never get the same cores.

The cache does no I/O: watch events (``apply_*``) and full lists (:mod:`.sync`) are folded in by
the same methods, and each returns the inferences it affects so that the caller can queue them.
What it keeps of each object is slimmed (:mod:`.slim`): memory is what shapes it.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from neuronplace.operator.dra_state import DraState, slim_claim
from neuronplace.operator.node_health import NodeHealth
from neuronplace.operator.slim import slim_node, slim_pod, slim_request
from neuronplace.operator.storage import CLAIMS, Storage
from neuronplace.placement import replica_pods
from neuronplace.placement.claims import (
    capacity_request,
    controller_inference,
    cores_of,
    node_of,
    pinned_node,
    pod_key,
    spec_cores,
)
from neuronplace.placement.failures import ReplicaHistory
from neuronplace.placement.fleet import Fleet
from neuronplace.placement.health import DETECTED, HEALTH_SETTLE_SECONDS, UNHEALTHY
from neuronplace.placement.inventory import NodeInventory, inventory_from_node
from neuronplace.placement.ledger import Holding, Ledger
from neuronplace.placement.names import (
    CAPACITY_REQUEST_LABEL,
    CLAIM_ANNOTATION_MISMATCH,
    INFERENCE_LABEL,
    TERMINAL_PHASES,
)
from neuronplace.placement.pods import pod_name
from neuronplace.placement.priority import class_name, waiting_order
from neuronplace.placement.resource_claims import claims_through_own_claim, reserved_chips, resource_claim_key
from neuronplace.placement.ruling import Rules, Ruling, View, rule
from neuronplace.placement.selectors import selector_matches
from neuronplace.placement.status import Problem
from neuronplace.placement.usage import Usage
from neuronplace.placement.volumes import claim_names
from neuronplace.runtime.coreset import CoreRange

Key = tuple[str, str]  # (namespace, name) of a NeuronInference
T = TypeVar("T")

DELETED = "DELETED"  # the watch event type of a deletion


def _replica_shaped(pod: Mapping[str, Any], inference: str) -> bool:
    """Whether a pod labelled as a replica of ``inference`` was made as one: controlled by it and
    given its cores in its spec (immutable), as only the operator's pods are; its UID is checked
    where it matters (the ledger's trust, the status and the ruling's ownership checks)."""
    controller = controller_inference(pod)
    if controller is None or controller[0] != inference:
        return False
    return spec_cores(pod) is not None or claims_through_own_claim(pod)


def _template_spec(inference: Mapping[str, Any]) -> Mapping[str, Any]:
    return ((inference.get("spec") or {}).get("template") or {}).get("spec") or {}


# ---- the cache -----------------------------------------------------------------------------------


class Cache:
    """Caches and ledger of one operator process. Every attribute is guarded by ``_lock``: the
    public methods under "watch events", "full lists" and "a ruling" take it (a full list folds a
    whole page in under one acquisition); the others that touch state expect the caller to hold it."""

    def __init__(
        self,
        namespaces: tuple[str, ...] = (),
        node_selector: str = "",
        unhealthy_conditions: tuple[tuple[str, str], ...] = DETECTED,
        health_settle_seconds: float = HEALTH_SETTLE_SECONDS,
    ) -> None:
        self.namespaces = namespaces  # watched namespaces; empty: all
        self.node_selector = node_selector  # the nodes this operator manages
        self.unhealthy_conditions = unhealthy_conditions  # (condition type, problem status) pairs
        self.health = NodeHealth(health_settle_seconds)  # when managed nodes turned healthy again
        self._lock = threading.Lock()
        self.ledger = Ledger()
        self.usage = Usage()  # what the pods on each node request (cpu, memory, ...), beside the cores
        self.inferences: dict[Key, dict] = {}
        self.pods: dict[tuple[str, str], dict] = {}  # managed pods by (namespace, name), slimmed
        self.pods_of: dict[Key, set[str]] = {}  # inference → its pods' names
        self.nodes: dict[str, dict] = {}  # every node, slimmed
        self.inventories: dict[str, NodeInventory] = {}  # managed nodes
        self._fleet: Fleet | None = None
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
        # The Neuron DRA driver's slices and the ResourceClaims; the managed nodes' bodies, to look
        # at a node again when its slices change.
        self.dra = DraState()
        self.node_bodies: dict[str, dict] = {}

    # ---- scope ---------------------------------------------------------------------------------

    def watches(self, namespace: str | None) -> bool:
        return not self.namespaces or namespace in self.namespaces

    def manages(self, node: Mapping[str, Any]) -> bool:
        return selector_matches(self.node_selector, (node.get("metadata") or {}).get("labels") or {})

    # ---- folding objects in (lock held) --------------------------------------------------------

    def observe_pod(self, pod: Mapping[str, Any], deleted: bool = False) -> Key | None:
        """Account a pod in the ledger (any pod: foreign ones hold cores too) and, when it is one of
        ours in a watched namespace, in the pod caches; returns its NeuronInference's key."""
        meta = pod.get("metadata") or {}
        namespace, name = meta.get("namespace"), meta.get("name")
        if deleted:
            gone = pod_key(namespace, name)
            self.ledger.forget(gone)
            self.usage.forget(gone)
            if self.deleted_during_resync is not None:
                self.deleted_during_resync.add(gone)
        else:
            self.ledger.observe(dict(pod))
            inventory = self.inventories.get(node_of(pod) or "")
            self.usage.observe(pod, inventory.allocatable if inventory is not None else None)
        self._hold_pending_claim(pod, deleted)
        if capacity_request(pod) and self.watches(namespace):
            return self._observe_request(pod, deleted)
        inference = (meta.get("labels") or {}).get(INFERENCE_LABEL)
        if not inference or not self.watches(namespace):
            return None
        if not deleted and not _replica_shaped(pod, inference):
            return None  # a look-alike: labels prove nothing; it counts nowhere as a replica
        key = (namespace, inference)
        if deleted:
            self.pods.pop((namespace, name), None)
            self.pods_of.get(key, set()).discard(name)
            self.unbound.discard((namespace, name))
        else:
            self.pods[(namespace, name)] = slim_pod(pod)
            live = (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES
            if live and not (pod.get("spec") or {}).get("nodeName") and pinned_node(pod):
                self.unbound.add((namespace, name))
            else:
                self.unbound.discard((namespace, name))
            self.pods_of.setdefault(key, set()).add(name)
            node = node_of(pod)
            ordinal = replica_pods.ordinal_of(pod, inference)
            cores = cores_of(pod)
            if node and cores is not None and ordinal is not None:
                self.last_known.setdefault(key, {})[ordinal] = (node, cores)
        return key

    def _hold_pending_claim(self, pod: Mapping[str, Any], deleted: bool) -> None:
        """A DRA replica's chips are held from its pod's creation: the ruling reserved them under its
        ResourceClaim's key, and kube-scheduler's allocation replaces that. A restarted operator
        rebuilds the reservation from the pod's spec (immutable: its processes' node cores, rounded
        to whole chips) while the claim is unallocated; the pod gone, an unallocated claim holds nothing."""
        meta = pod.get("metadata") or {}
        key = resource_claim_key(meta.get("namespace") or "default", meta.get("name") or "")
        holding = self.ledger.holding_of(key)
        allocated = (
            holding is not None
            and (meta.get("namespace"), meta.get("name")) in self.dra.claims
            and (self.dra.claims[(meta.get("namespace"), meta.get("name"))]["node"] is not None)
        )
        live = not deleted and (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES
        if not live:
            if holding is not None and not allocated:
                self.ledger.forget(key)
            return
        inventory = self.inventories.get(node_of(pod) or "")
        if holding is not None or inventory is None or inventory.topology is None or not claims_through_own_claim(pod):
            return
        cores = reserved_chips(pod, inventory.topology.cores_per_chip)
        if cores is not None:
            controller = controller_inference(pod)
            inference = f"{meta.get('namespace')}/{controller[0]}" if controller is not None else None
            with contextlib.suppress(ValueError):  # held by someone else (or beyond the node): nothing to add
                self.ledger.reserve(inventory.name, cores, key, inference=inference)

    def _observe_request(self, pod: Mapping[str, Any], deleted: bool) -> Key:
        meta = pod.get("metadata") or {}
        key = (meta["namespace"], meta["labels"][CAPACITY_REQUEST_LABEL])
        if deleted:
            self._forget_request(meta["namespace"], meta["name"])
        else:
            self.capacity_requests.setdefault(key, {})[meta["name"]] = slim_request(pod)
        return key

    def forget_request(self, namespace: str, name: str) -> None:
        """A capacity request the operator deleted is gone."""
        with self._lock:
            self._forget_request(namespace, name)

    def _forget_request(self, namespace: str, name: str) -> None:
        for key in [key for key in self.capacity_requests if key[0] == namespace]:
            requests = self.capacity_requests[key]
            if requests.pop(name, None) is not None and not requests:
                del self.capacity_requests[key]

    def _requests_on(self, node: str) -> list[dict]:
        """The capacity requests kube-scheduler bound to ``node`` (lock held)."""
        return [
            request
            for requests in self.capacity_requests.values()
            for request in requests.values()
            if request["spec"]["nodeName"] == node
        ]

    def observe_node(self, node: Mapping[str, Any], deleted: bool = False) -> bool:
        """Update the node caches; True when what placement sees has changed."""
        name = (node.get("metadata") or {}).get("name")
        before = self.inventories.get(name)
        if deleted:
            self.nodes.pop(name, None)
            self.inventories.pop(name, None)
            self.node_bodies.pop(name, None)
            self.health.forget(name)
        else:
            self.nodes[name] = slim_node(node)
            if self.manages(node):
                self.node_bodies[name] = dict(node)
                read = inventory_from_node(dict(node), self.dra.nodes.get(name), self.unhealthy_conditions)
                self.inventories[name] = self.health.observe(read, time.time())
            else:
                self.inventories.pop(name, None)
                self.node_bodies.pop(name, None)
                self.health.forget(name)
        changed = self.inventories.get(name) != before
        if changed:
            self._fleet = None
        return changed

    def apply_resource_slice(self, kind: str | None, body: Mapping[str, Any]) -> set[Key]:
        """A ResourceSlice event; returns the inferences waiting for room when a node's chips changed."""
        with self._lock:
            return self._dra_nodes_changed(self.dra.apply_slice(body, deleted=kind == DELETED))

    def replace_resource_slices(self, bodies: list[Mapping[str, Any]]) -> None:
        """A full list of ResourceSlices replaces the cached ones."""
        with self._lock:
            self._dra_nodes_changed(self.dra.replace_slices(bodies))

    def _dra_nodes_changed(self, names: set[str]) -> set[Key]:
        changed = False
        for name in names & set(self.node_bodies):
            read = inventory_from_node(self.node_bodies[name], self.dra.nodes.get(name), self.unhealthy_conditions)
            self.inventories[name] = self.health.observe(read, time.time())
            changed = True
        if changed:
            self._fleet = None
            return set(self.waiting_for_room)
        return set()

    def apply_resource_claim(self, kind: str | None, body: Mapping[str, Any]) -> set[Key]:
        """A ResourceClaim event (any namespace: a foreign claim holds chips too); returns the
        inference controlling it and, when chips were freed, the inferences waiting for room."""
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace") or "default", meta.get("name") or ""
        with self._lock:
            affected = self._observe_resource_claim(namespace, name, body, deleted=kind == DELETED)
            if kind == DELETED:
                affected |= self.waiting_for_room
        return affected

    def resource_claim_keys(self) -> set[tuple[str, str]]:
        with self._lock:
            return set(self.dra.claims)

    def replace_resource_claims(self, bodies: list[Mapping[str, Any]], known: set[tuple[str, str]]) -> None:
        """A full list of ResourceClaims: those ``known`` before it was read and not in it are gone."""
        with self._lock:
            listed = {
                ((b.get("metadata") or {}).get("namespace"), (b.get("metadata") or {}).get("name")) for b in bodies
            }
            for namespace, name in (known & set(self.dra.claims)) - listed:
                self._observe_resource_claim(namespace, name, {}, deleted=True)
            for body in bodies:
                meta = body.get("metadata") or {}
                self._observe_resource_claim(meta.get("namespace"), meta.get("name"), body, deleted=False)

    def _observe_resource_claim(self, namespace: str, name: str, body: Mapping[str, Any], deleted: bool) -> set[Key]:
        if deleted:
            slim = self.dra.claims.pop((namespace, name), None)
            self.ledger.forget_claim(namespace, name)
        else:
            slim = self.dra.claims[(namespace, name)] = slim_claim(body)
            self.ledger.observe_claim(dict(body))
        controller = (slim or {}).get("controller")
        return (
            {(namespace, controller[0])}
            if controller is not None and (namespace, controller[0]) in self.inferences
            else set()
        )

    def resource_claims_of(self, key: Key) -> dict[str, dict]:
        """The ResourceClaims the NeuronInference ``key`` controls, by name (slimmed)."""
        with self._lock:
            uid = ((self.inferences.get(key) or {}).get("metadata") or {}).get("uid")
            if uid is None:
                return {}
            return {name: self.dra.claims[(key[0], name)] for name in self.dra.claims_of(key[0], uid)}

    def fleet(self) -> Fleet:
        """The managed nodes as placement sees them (rebuilt only after a node changed, or a node
        healthy again ended its settle window)."""
        now = time.time()
        for name in self.health.settled_by(now):
            self.inventories[name] = self.health.seen(name, now)
            self._fleet = None
        if self._fleet is None:
            self._fleet = Fleet(sorted(self.inventories.values(), key=lambda n: n.name))
        return self._fleet

    def knows_pod(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.pods or self.ledger.holds(pod_key(namespace, name))

    def unused_resource_claims(self, key: Key) -> list[str]:
        """The ResourceClaims of the NeuronInference ``key`` that no pod of it uses or is being
        created to use, and that are not being deleted already."""
        with self._lock:
            uid = ((self.inferences.get(key) or {}).get("metadata") or {}).get("uid")
            return [
                name
                for name in (self.dra.claims_of(key[0], uid) if uid else ())
                if not self.dra.claims[(key[0], name)]["deleting"]
                and (key[0], name) not in self.pods
                and pod_key(key[0], name) not in self.inflight
            ]

    def labels_of(self, namespace: str, name: str) -> dict:
        cached = self.pods.get((namespace, name))
        return dict((cached or {}).get("metadata", {}).get("labels") or {})

    def pods_of_inference(self, key: Key) -> list[dict]:
        """The cached pods of one NeuronInference."""
        return [self.pods[(key[0], p)] for p in self.pods_of.get(key, ()) if (key[0], p) in self.pods]

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

    # ---- watch events (take the lock) ----------------------------------------------------------

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

    def observe_priority_class(self, body: Mapping[str, Any], deleted: bool = False) -> str | None:
        """Remember a PriorityClass's value (lock held); returns its name."""
        name = (body.get("metadata") or {}).get("name")
        value = body.get("value")
        if deleted:
            self.priority_classes.pop(name, None)
        elif isinstance(name, str) and isinstance(value, int) and not isinstance(value, bool):
            self.priority_classes[name] = value
        return name

    def in_waiting_order(self, keys, limit: int | None = None) -> list[Key]:
        """``keys`` in the order inferences waiting for room are served
        (:func:`~neuronplace.placement.priority.waiting_order`); with ``limit``, only the first
        ``limit`` of those waiting for room are kept (the others are kept all)."""
        with self._lock:
            ordered = self._in_waiting_order(keys)
            if limit is None:
                return ordered
            kept = set([key for key in ordered if key in self.waiting_for_room][:limit])
            return [key for key in ordered if key in kept or key not in self.waiting_for_room]

    def _in_waiting_order(self, keys) -> list[Key]:
        """``keys`` in the order inferences waiting for room are served (lock held)."""
        return waiting_order({key: self.inferences.get(key) or {} for key in keys}, self.priority_classes)

    def apply_priority_class(self, kind: str | None, body: Mapping[str, Any]) -> list[Key]:
        """A PriorityClass event; returns the inferences whose template names that class."""
        with self._lock:
            name = self.observe_priority_class(body, deleted=kind == DELETED)
            return [key for key, inference in self.inferences.items() if class_name(inference) == name]

    def apply_pod(self, kind: str | None, body: Mapping[str, Any]) -> tuple[Key | None, list[Key]]:
        """A pod event; returns the key of its NeuronInference (if any) and, when the pod freed
        cores (deleted or finished), the inferences waiting for room, in the order to serve them."""
        deleted = kind == DELETED
        with self._lock:
            key = self.observe_pod(body, deleted=deleted)
            freed = deleted or (body.get("status") or {}).get("phase") in TERMINAL_PHASES
            waiting = self._in_waiting_order(self.waiting_for_room) if freed else []
        return key, waiting

    def apply_node(self, kind: str | None, body: Mapping[str, Any]) -> set[Key]:
        """A node event; returns the inferences it affects: those with pods on it when it went away
        or changed readiness or Neuron hardware health, and those waiting for room when what
        placement sees changed."""
        name = (body.get("metadata") or {}).get("name")
        with self._lock:
            was_ready = replica_pods.node_not_ready_since(self.nodes[name]) is None if name in self.nodes else None
            was_unhealthy = self._unhealthy(name)
            changed = self.observe_node(body, deleted=kind == DELETED)
            is_ready = replica_pods.node_not_ready_since(self.nodes[name]) is None if name in self.nodes else None
            affected: set[Key] = set()
            if kind == DELETED or was_ready != is_ready or was_unhealthy != self._unhealthy(name):
                affected = {
                    key
                    for key, names in self.pods_of.items()
                    for pod in names
                    if node_of(self.pods.get((key[0], pod)) or {}) == name
                }
            if changed:
                affected |= self.waiting_for_room
        return affected

    def _unhealthy(self, name: str) -> bool:
        """Whether placement sees the node as unhealthy (or settling) now (lock held)."""
        inventory = self.inventories.get(name)
        return inventory is not None and inventory.problem_kind == UNHEALTHY

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

    def inference_keys(self) -> list[Key]:
        """The keys of every cached NeuronInference."""
        with self._lock:
            return list(self.inferences)

    # ---- full lists (take the lock; each page or step under one acquisition) ----------------------

    def observe_nodes(self, page: Iterable[Mapping[str, Any]]) -> None:
        """Fold in a page of a full node list."""
        with self._lock:
            for node in page:
                self.observe_node(node)

    def observe_pods(self, page: Iterable[Mapping[str, Any]]) -> None:
        """Fold in a page of the start-up pod list (nothing is known yet, so every pod is taken)."""
        with self._lock:
            for pod in page:
                self.observe_pod(pod)

    def replace_storage(self, kind: str, slimmed: list[dict]) -> None:
        """Replace the cached objects of one storage kind with a full list."""
        with self._lock:
            self.storage.replace(kind, slimmed)

    def remember_start_up(self, priority_classes: Iterable[Mapping[str, Any]], inferences: Iterable[dict]) -> None:
        """Fold in the start-up lists of PriorityClasses and NeuronInferences together. The pods
        already folded in are foreign until their NeuronInference is known; each one remembered
        here turns its pods' claims into ours."""
        with self._lock:
            for priority_class in priority_classes:
                self.observe_priority_class(priority_class)
            for inference in inferences:
                self.remember_inference(inference)

    def begin_resync(self) -> set[str]:
        """Start recording what the watches delete while a full resync reads its lists; returns the
        nodes known now (one of them absent from the node list was deleted)."""
        with self._lock:
            self.deleted_during_resync = set()
            return set(self.nodes)

    def end_resync(self) -> None:
        with self._lock:
            self.deleted_during_resync = None

    def forget_nodes(self, names: Iterable[str]) -> None:
        """Drop the nodes a full list no longer shows (those still cached)."""
        with self._lock:
            for name in names:
                if name in self.nodes:
                    self.observe_node({"metadata": {"name": name}}, deleted=True)

    def observe_missed_pods(self, page: Iterable[Mapping[str, Any]]) -> None:
        """Fold in what a page of a resync's pod list shows that the watch missed. Pods already
        known are kept fresh by the watch, and a reservation whose create is under way is not a
        pod to take; never take a pod whose deletion the watch reported after this page was read."""
        with self._lock:
            deleted = self.deleted_during_resync or set()
            for pod in page:
                meta = pod["metadata"]
                key = pod_key(meta["namespace"], meta["name"])
                if (
                    not self.knows_pod(meta["namespace"], meta["name"])
                    and key not in self.inflight
                    and key not in deleted
                ):
                    self.observe_pod(pod)

    def compare_with_lists(
        self, listed_pods: set[str], listed_inferences: Mapping[Key, dict]
    ) -> tuple[list[str], list[Key]]:
        """What a resync's full lists lack: the pods ("ns/pod", sorted) and NeuronInferences cached
        but not listed, to be confirmed gone; the listed NeuronInferences the watch missed (and did
        not see deleted meanwhile) are remembered, in the same acquisition."""
        with self._lock:
            known = self.ledger.pods() | self.usage.pods() | {pod_key(ns, name) for ns, name in self.pods}
            missing_pods = sorted(known - listed_pods - self.inflight)
            missing_inferences = [key for key in self.inferences if key not in listed_inferences]
            deleted = self.deleted_during_resync or set()
            for key, inference in listed_inferences.items():
                if key not in deleted and key not in self.inferences:
                    self.remember_inference(inference)
        return missing_pods, missing_inferences

    def forget_vanished_pod(self, namespace: str, name: str) -> None:
        """Drop a pod confirmed gone that the watch never reported deleted; its cores are free."""
        with self._lock:
            self.observe_pod(
                {"metadata": {"namespace": namespace, "name": name, "labels": self.labels_of(namespace, name)}},
                deleted=True,
            )

    def forget_vanished_inference(self, key: Key) -> None:
        """Drop a NeuronInference confirmed gone that the watch never reported deleted."""
        with self._lock:
            self.forget_inference(key)

    def unreported_foreign(self, reported: set[str]) -> list[Holding]:
        """The foreign holdings whose pod is not in ``reported``, which gets them, in one acquisition:
        each foreign pod is reported once."""
        with self._lock:
            foreign = [h for h in self.ledger.foreign() if h.pod not in reported]
            reported |= {h.pod for h in foreign}
        return foreign

    # ---- a ruling, and what its writes change ------------------------------------------------------

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

    def created(self, pod: Mapping[str, Any]) -> None:
        """A pod the operator created, as the API server returned it (unless its watch event came first)."""
        meta = pod.get("metadata") or {}
        with self._lock:
            if (meta.get("namespace"), meta.get("name")) not in self.pods:
                self.observe_pod(pod)

    def settle(self, key: Key, replicas: Iterable[int]) -> None:
        """The creates of these replicas' pods are over (created or not)."""
        with self._lock:
            for replica in replicas:
                self.inflight.discard(pod_key(key[0], pod_name(key[1], replica)))

    def release(self, key: Key, replicas: Iterable[int]) -> None:
        """Give back the reservations of replicas whose pods were not created."""
        with self._lock:
            for replica in replicas:
                name = pod_name(key[1], replica)
                if (key[0], name) not in self.pods:
                    self.ledger.forget(pod_key(key[0], name))
                    self.usage.forget(pod_key(key[0], name))
                    # A DRA replica's reservation, under its ResourceClaim's key, unless the claim is allocated.
                    holding = self.ledger.holding_of(resource_claim_key(key[0], name))
                    if holding is not None and (key[0], name) not in self.dra.claims:
                        self.ledger.forget(resource_claim_key(key[0], name))

    def settling(self) -> bool:
        """Whether replica pods are being created, or pinned and not bound yet: kube-scheduler does
        not count them on their node until it binds them."""
        with self._lock:
            # Only the pods the ledger holds as ours: a look-alike cannot stop the requests.
            return bool(self.inflight) or any(
                (holding := self.ledger.holding_of(pod_key(*pod))) is not None and holding.managed
                for pod in self.unbound
            )

    def replica_mismatches(self, key: Key) -> list[str]:
        """The inference's replica pods ("ns/pod", sorted) whose annotations or label no longer say
        what their spec says (the ledger holds both)."""
        with self._lock:
            return sorted(
                pod
                for pod in (pod_key(key[0], name) for name in self.pods_of.get(key, ()))
                if self.ledger.problem_of(pod) == CLAIM_ANNOTATION_MISMATCH
            )

    def requests_of(self, key: Key) -> dict[str, dict]:
        """The inference's capacity requests by name, as they are now."""
        with self._lock:
            return dict(self.capacity_requests.get(key, {}))

    def status_view(self, key: Key, inference: dict) -> tuple[dict, list[dict]]:
        """What a status is built from: the inference as cached now (else ``inference``) and its pods."""
        with self._lock:
            return self.inferences.get(key, inference), self.pods_of_inference(key)
