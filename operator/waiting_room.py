"""The waiting-for-room part of :class:`~.cache.Cache`: the PriorityClasses and the order waiting inferences are served in.

A mixin of :class:`~.cache.Cache`, not a cache of its own: the inferences waiting for room
(``waiting_for_room``, set by :meth:`~.cache.Cache.rule`) and their templates are the cache's, so it
works under the cache's one lock (taken by ``apply_priority_class`` and ``in_waiting_order``; the
others expect it held).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from neuronplace.operator.keys import DELETED, Key
from neuronplace.placement.priority import class_name, waiting_order


class WaitingRoom:
    """PriorityClass events, and the inferences waiting for room in the order to serve them."""

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
