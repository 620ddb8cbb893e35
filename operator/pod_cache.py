"""The pods part of :class:`~.cache.Cache`: the replica pods, the capacity requests and what the ledger holds for them.

A mixin of :class:`~.cache.Cache`, not a cache of its own: every pod (ours or foreign) holds cores
in the ledger the ruling reads, so it works on the state the cache declares, under the cache's one
lock (taken by the public methods here, but for ``observe_pod`` and the views ``knows_pod``,
``labels_of`` and ``pods_of_inference``; the private ones expect it held). Here too: the creates
under way and the reservations a ruling made for them (:meth:`~.cache.Cache.rule` makes them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from neuronplace.operator.keys import DELETED, Key
from neuronplace.operator.slim import slim_pod, slim_request
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
from neuronplace.placement.names import (
    CAPACITY_REQUEST_LABEL,
    CLAIM_ANNOTATION_MISMATCH,
    INFERENCE_LABEL,
    TERMINAL_PHASES,
)
from neuronplace.placement.pods import pod_name
from neuronplace.placement.resource_claims import claims_through_own_claim, resource_claim_key


def _replica_shaped(pod: Mapping[str, Any], inference: str) -> bool:
    """Whether a pod labelled as a replica of ``inference`` was made as one: controlled by it and
    given its cores in its spec (immutable), as only the operator's pods are; its UID is checked
    where it matters (the ledger's trust, the status and the ruling's ownership checks)."""
    controller = controller_inference(pod)
    if controller is None or controller[0] != inference:
        return False
    return spec_cores(pod) is not None or claims_through_own_claim(pod)


class PodCache:
    """Pod events and what the ruling's creates change: the pod caches, the ledger and usage, the capacity requests."""

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

    def apply_pod(self, kind: str | None, body: Mapping[str, Any]) -> tuple[Key | None, list[Key]]:
        """A pod event; returns the key of its NeuronInference (if any) and, when the pod freed
        cores (deleted or finished), the inferences waiting for room, in the order to serve them."""
        deleted = kind == DELETED
        with self._lock:
            key = self.observe_pod(body, deleted=deleted)
            freed = deleted or (body.get("status") or {}).get("phase") in TERMINAL_PHASES
            waiting = self._in_waiting_order(self.waiting_for_room) if freed else []
        return key, waiting

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

    def knows_pod(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.pods or self.ledger.holds(pod_key(namespace, name))

    def labels_of(self, namespace: str, name: str) -> dict:
        cached = self.pods.get((namespace, name))
        return dict((cached or {}).get("metadata", {}).get("labels") or {})

    def pods_of_inference(self, key: Key) -> list[dict]:
        """The cached pods of one NeuronInference."""
        return [self.pods[(key[0], p)] for p in self.pods_of.get(key, ()) if (key[0], p) in self.pods]

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
