"""The Neuron DRA part of :class:`~.cache.Cache`: folding ResourceSlices and ResourceClaims in.

A mixin of :class:`~.cache.Cache`, not a cache of its own: a slice changes a node's inventory and a
claim changes the ledger, so it works on the state the cache declares, under the cache's one lock
(taken by the public methods here; the private ones expect it held). What it keeps of the DRA
objects themselves is :class:`~.dra_state.DraState` (``self.dra``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from neuronplace.operator.dra_state import slim_claim
from neuronplace.operator.keys import DELETED, Key
from neuronplace.placement.claims import controller_inference, node_of, pod_key
from neuronplace.placement.names import TERMINAL_PHASES
from neuronplace.placement.resource_claims import claims_through_own_claim, reserved_chips, resource_claim_key


class DraCache:
    """ResourceSlice and ResourceClaim events and full lists, what they change, and the claims' views."""

    def apply_resource_slice(self, kind: str | None, body: Mapping[str, Any]) -> set[Key]:
        """A ResourceSlice event; returns the inferences waiting for room when a node's chips changed."""
        with self._lock:
            return self._dra_nodes_changed(self.dra.apply_slice(body, deleted=kind == DELETED))

    def replace_resource_slices(self, bodies: list[Mapping[str, Any]]) -> None:
        """A full list of ResourceSlices replaces the cached ones."""
        with self._lock:
            self._dra_nodes_changed(self.dra.replace_slices(bodies))

    def _dra_nodes_changed(self, names: set[str]) -> set[Key]:
        if self.node_cache.reread(names, self.dra.nodes):
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
