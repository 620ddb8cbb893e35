"""What the operator remembers of node health over time: when a node last turned healthy again.

A node does not say since when it is healthy (a detector may drop its condition rather than flip
it), and a node that flaps must not take replicas between flaps: so the operator remembers, per
managed node, the detectors' last words and when the node last turned healthy, and shows placement
the node as unhealthy until ``settle_seconds`` after that (:func:`placement.health.settled`). Lost on
restart: a restarted operator uses a node healthy at its start at once.
"""

from __future__ import annotations

from neuronplace.placement.health import settled
from neuronplace.placement.inventory import NodeInventory


class NodeHealth:
    """Per node: its inventory as read, its last unhealthy words, and when it turned healthy again."""

    def __init__(self, settle_seconds: float) -> None:
        self.settle_seconds = settle_seconds
        self._read: dict[str, NodeInventory] = {}
        self._words: dict[str, str] = {}
        self._healthy_since: dict[str, float] = {}

    def observe(self, inventory: NodeInventory, now: float) -> NodeInventory:
        """Remember ``inventory`` (as read from the node at ``now``); returns it as placement sees it."""
        name = inventory.name
        before = self._read.get(name)
        self._read[name] = inventory
        if inventory.unhealthy is not None:
            self._words[name] = inventory.unhealthy
            self._healthy_since.pop(name, None)
        elif before is not None and before.unhealthy is not None:
            self._healthy_since[name] = now
        return self.seen(name, now)

    def seen(self, name: str, now: float) -> NodeInventory:
        """The node as placement sees it at ``now`` (settling, or as read)."""
        since = self._healthy_since.get(name)
        if since is not None and now >= since + self.settle_seconds:
            del self._healthy_since[name]
            since = None
        return settled(self._read[name], self._words.get(name), since, self.settle_seconds, now)

    def forget(self, name: str) -> None:
        self._read.pop(name, None)
        self._words.pop(name, None)
        self._healthy_since.pop(name, None)

    def settled_by(self, now: float) -> list[str]:
        """The nodes whose settle window has ended by ``now`` (to be seen again)."""
        return [name for name, since in self._healthy_since.items() if now >= since + self.settle_seconds]
