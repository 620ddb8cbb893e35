"""The storage objects placement reads, slimmed: PersistentVolumeClaims, PersistentVolumes and
StorageClasses. No I/O; the :class:`~.cache.Cache` holds one :class:`Storage` behind its lock.

A replica's claims decide which nodes it can use (:mod:`neuronplace.placement.volumes`), so the
operator watches all three. Only what that decision reads is kept, in the API's own shape (so the
pure code reads a cached object as it would a fetched one): a cluster may hold thousands of claims
and volumes. Measured as JSON on the local control plane, a bound claim is 961 bytes as the API
sends it and 278 slimmed, a local volume 1,454 and 440, a storage class 726 and 222.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

from neuronplace.placement.volumes import DEFAULT_CLASS_ANNOTATION, VolumeConstraint, volume_constraint

# The kinds, by their API resource names (also the names the watches and lists use).
CLAIMS = "persistentvolumeclaims"
VOLUMES = "persistentvolumes"
CLASSES = "storageclasses"
KINDS = (CLAIMS, VOLUMES, CLASSES)


def _intern(text: Any) -> Any:
    return sys.intern(text) if type(text) is str else text


def _storage(resources: Mapping[str, Any] | None, key: str) -> dict:
    value = (resources or {}).get(key) or {}
    return {"storage": value["storage"]} if "storage" in value else {}


def slim_claim(claim: Mapping[str, Any]) -> dict:
    """Name, deletion stamp, class (unset and "" differ), access and volume modes, requested
    storage, the volume it names, phase."""
    meta = claim.get("metadata") or {}
    spec = claim.get("spec") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "namespace": _intern(meta.get("namespace")),
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "spec": {
            "storageClassName": _intern(spec.get("storageClassName")),
            "accessModes": [_intern(mode) for mode in spec.get("accessModes") or ()],
            "volumeMode": _intern(spec.get("volumeMode")),
            "resources": {"requests": _storage(spec.get("resources"), "requests")},
            "volumeName": spec.get("volumeName"),
        },
        "status": {"phase": _intern((claim.get("status") or {}).get("phase"))},
    }


def slim_volume(volume: Mapping[str, Any]) -> dict:
    """Name, deletion stamp, class, capacity, access and volume modes, the claim it is kept for,
    required node affinity, phase."""
    meta = volume.get("metadata") or {}
    spec = volume.get("spec") or {}
    reference = spec.get("claimRef") or {}
    return {
        "metadata": {"name": meta.get("name"), "deletionTimestamp": meta.get("deletionTimestamp")},
        "spec": {
            "storageClassName": _intern(spec.get("storageClassName")),
            "capacity": _storage(spec, "capacity"),
            "accessModes": [_intern(mode) for mode in spec.get("accessModes") or ()],
            "volumeMode": _intern(spec.get("volumeMode")),
            "claimRef": {"namespace": reference.get("namespace"), "name": reference.get("name")} if reference else None,
            "nodeAffinity": spec.get("nodeAffinity"),
        },
        "status": {"phase": _intern((volume.get("status") or {}).get("phase"))},
    }


def slim_class(storage_class: Mapping[str, Any]) -> dict:
    """Name, whether it is the default class, provisioner, binding mode, allowed topologies."""
    meta = storage_class.get("metadata") or {}
    default = (meta.get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION)
    return {
        "metadata": {
            "name": meta.get("name"),
            "annotations": {DEFAULT_CLASS_ANNOTATION: default} if default is not None else {},
        },
        "provisioner": _intern(storage_class.get("provisioner")),
        "volumeBindingMode": _intern(storage_class.get("volumeBindingMode")),
        "allowedTopologies": storage_class.get("allowedTopologies"),
    }


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

    def constraint(self, pod_spec: Mapping[str, Any], namespace: str, binding: str) -> VolumeConstraint:
        """What a pod spec's volumes ask of its node (:func:`~neuronplace.placement.volumes.volume_constraint`)."""
        return volume_constraint(pod_spec, namespace, self.claims, self.volumes, self.classes, binding=binding)
