"""The nodes as the operator sees them: every node slimmed, and the managed ones as placement sees them.

Owns the node caches, the managed nodes' inventories (read from the node and its Neuron DRA
slices, through the health window of :mod:`.node_health`) and the :class:`Fleet` built from them.
Held by :class:`~.cache.Cache` and used only under its lock (this module takes none).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from neuronplace.operator.node_health import NodeHealth
from neuronplace.operator.slim import slim_node
from neuronplace.placement import replica_pods
from neuronplace.placement.dra import DraNode
from neuronplace.placement.fleet import Fleet
from neuronplace.placement.health import UNHEALTHY
from neuronplace.placement.inventory import NodeInventory, inventory_from_node
from neuronplace.placement.selectors import selector_matches


class NodeCache:
    """Every node slimmed; the managed ones' bodies, inventories and health window; the fleet."""

    def __init__(
        self, node_selector: str, unhealthy_conditions: tuple[tuple[str, str], ...], health_settle_seconds: float
    ) -> None:
        self.node_selector = node_selector  # the nodes this operator manages
        self.unhealthy_conditions = unhealthy_conditions  # (condition type, problem status) pairs
        self.health = NodeHealth(health_settle_seconds)  # when managed nodes turned healthy again
        self.nodes: dict[str, dict] = {}  # every node, slimmed
        self.inventories: dict[str, NodeInventory] = {}  # managed nodes
        # The managed nodes' bodies, to look at a node again when its slices change.
        self.bodies: dict[str, dict] = {}
        self._fleet: Fleet | None = None

    def manages(self, node: Mapping[str, Any]) -> bool:
        return selector_matches(self.node_selector, (node.get("metadata") or {}).get("labels") or {})

    def observe(self, node: Mapping[str, Any], dra: Mapping[str, DraNode], deleted: bool = False) -> bool:
        """Update the node caches (``dra``: the DRA nodes by name); True when what placement sees has changed."""
        name = (node.get("metadata") or {}).get("name")
        before = self.inventories.get(name)
        if deleted:
            self.nodes.pop(name, None)
            self.inventories.pop(name, None)
            self.bodies.pop(name, None)
            self.health.forget(name)
        else:
            self.nodes[name] = slim_node(node)
            if self.manages(node):
                self.bodies[name] = dict(node)
                read = inventory_from_node(dict(node), dra.get(name), self.unhealthy_conditions)
                self.inventories[name] = self.health.observe(read, time.time())
            else:
                self.inventories.pop(name, None)
                self.bodies.pop(name, None)
                self.health.forget(name)
        changed = self.inventories.get(name) != before
        if changed:
            self._fleet = None
        return changed

    def reread(self, names: set[str], dra: Mapping[str, DraNode]) -> bool:
        """Read the managed ones of ``names`` again, their DRA view having changed; True when there was one."""
        changed = False
        for name in names & set(self.bodies):
            read = inventory_from_node(self.bodies[name], dra.get(name), self.unhealthy_conditions)
            self.inventories[name] = self.health.observe(read, time.time())
            changed = True
        if changed:
            self._fleet = None
        return changed

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

    def ready(self, name: str) -> bool | None:
        """Whether the node is ready; None when it is not known."""
        return replica_pods.node_not_ready_since(self.nodes[name]) is None if name in self.nodes else None

    def unhealthy(self, name: str) -> bool:
        """Whether placement sees the node as unhealthy (or settling) now."""
        inventory = self.inventories.get(name)
        return inventory is not None and inventory.problem_kind == UNHEALTHY
