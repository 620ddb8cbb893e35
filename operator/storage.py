"""The storage objects placement reads: PersistentVolumeClaims, PersistentVolumes and
StorageClasses, slimmed (:mod:`.slim`). No I/O; the :class:`~.cache.Cache` holds one
:class:`Storage` behind its lock.

A replica's claims decide which nodes it can use (:mod:`neuronplace.placement.volumes`), so the
operator watches all three.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from neuronplace.operator.slim import slim_claim, slim_class, slim_volume

# The kinds, by their API resource names (also the names the watches and lists use).
CLAIMS = "persistentvolumeclaims"
VOLUMES = "persistentvolumes"
CLASSES = "storageclasses"
KINDS = (CLAIMS, VOLUMES, CLASSES)


_SLIM = {CLAIMS: slim_claim, VOLUMES: slim_volume, CLASSES: slim_class}


def slim(kind: str, body: Mapping[str, Any]) -> dict:
    """One object of ``kind`` slimmed (slimming a slimmed object changes nothing)."""
    return _SLIM[kind](body)


def _key(kind: str, body: Mapping[str, Any]) -> Any:
    meta = body.get("metadata") or {}
    return (meta.get("namespace"), meta.get("name")) if kind == CLAIMS else meta.get("name")


class Storage:
    """The cached claims by (namespace, name), volumes and classes by name (guarded by the cache's lock)."""

    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], dict] = {}
        self.volumes: dict[str, dict] = {}
        self.classes: dict[str, dict] = {}
        self._of = {CLAIMS: self.claims, VOLUMES: self.volumes, CLASSES: self.classes}

    def observe(self, kind: str, body: Mapping[str, Any], deleted: bool = False) -> bool:
        """Fold one object in; True when what placement reads of it changed."""
        objects = self._of[kind]
        key = _key(kind, body)
        before = objects.get(key)
        if deleted:
            objects.pop(key, None)
            return before is not None
        objects[key] = _SLIM[kind](body)
        return objects[key] != before

    def replace(self, kind: str, slimmed: Iterable[dict]) -> None:
        """A full list, slimmed (:func:`slim`): what it lacks is gone, as a watch never reports what
        vanished while it was down. An event the watch delivered while the list was read is
        overwritten by the list's older view until that object changes again or the next full list."""
        objects = self._of[kind]
        objects.clear()
        for body in slimmed:
            objects[_key(kind, body)] = body
