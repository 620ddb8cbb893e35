"""What the operator keeps of the Neuron DRA driver's ResourceSlices and of ResourceClaims.

Held by :class:`~.cache.Cache` and used only under its lock (this module takes none). The slices
decide which nodes are DRA-managed and their chips (:func:`~neuronplace.placement.dra.dra_nodes`);
the claims are kept slimmed (name, controller, allocation node) so that the reconciler can delete a
replica's claim with it and find claims of ours that lost their pod (an operator killed between
creating a claim and its pod). What a claim holds goes into the ledger, not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from neuronplace.placement.claims import controller_inference
from neuronplace.placement.dra import DraNode, dra_nodes
from neuronplace.placement.neuron_dra import DRIVER
from neuronplace.placement.resource_claims import allocated_node


def slim_slice(body: Mapping[str, Any]) -> dict:
    """What :func:`dra_nodes` reads of a ResourceSlice (the driver, node, pool, device names and attributes)."""
    spec = body.get("spec") or {}
    return {
        "metadata": {"name": (body.get("metadata") or {}).get("name")},
        "spec": {
            "driver": spec.get("driver"),
            "nodeName": spec.get("nodeName"),
            "pool": spec.get("pool"),
            "devices": [
                {"name": d.get("name"), "attributes": d.get("attributes")}
                for d in spec.get("devices") or ()
                if isinstance(d, Mapping)
            ],
        },
    }


def slim_claim(body: Mapping[str, Any]) -> dict:
    """What the reconciler reads of a ResourceClaim: its controller (name, UID) and allocation node."""
    controller = controller_inference(body)
    return {
        "controller": controller,
        "node": allocated_node(body),
        "deleting": bool((body.get("metadata") or {}).get("deletionTimestamp")),
    }


class DraState:
    """The Neuron driver's slices by name, the DRA nodes they make, and the ResourceClaims by (namespace, name)."""

    def __init__(self) -> None:
        self.slices: dict[str, dict] = {}
        self.nodes: dict[str, DraNode] = {}
        self.claims: dict[tuple[str, str], dict] = {}

    def apply_slice(self, body: Mapping[str, Any], deleted: bool) -> set[str]:
        """Fold in a ResourceSlice; returns the nodes whose DRA view changed."""
        name = (body.get("metadata") or {}).get("name") or ""
        if deleted:
            self.slices.pop(name, None)
        elif (body.get("spec") or {}).get("driver") == DRIVER:
            self.slices[name] = slim_slice(body)
        return self._recompute()

    def replace_slices(self, bodies: list[Mapping[str, Any]]) -> set[str]:
        """A full list of slices replaces the cached ones; returns the nodes whose DRA view changed."""
        self.slices = {
            (b.get("metadata") or {}).get("name") or "": slim_slice(b)
            for b in bodies
            if (b.get("spec") or {}).get("driver") == DRIVER
        }
        return self._recompute()

    def _recompute(self) -> set[str]:
        fresh = dra_nodes(self.slices.values())
        changed = {n for n in set(fresh) | set(self.nodes) if fresh.get(n) != self.nodes.get(n)}
        self.nodes = fresh
        return changed

    def claims_of(self, namespace: str, uid: str) -> list[str]:
        """The names of the ResourceClaims in ``namespace`` controlled by the NeuronInference ``uid``."""
        return sorted(
            name
            for (ns, name), slim in self.claims.items()
            if ns == namespace and slim["controller"] is not None and slim["controller"][1] == uid
        )
