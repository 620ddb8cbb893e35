"""Slimming: what the operator keeps of each object it caches, and nothing else.

Memory is what shapes the cache. With 10,000 managed pods a cached pod must be small, so only what
rulings and status read is kept (:func:`slim_pod`, about 1 KB), with repeated strings interned and
the parts many pods share stored once. Cached objects stay in the API's own shape (so the pure code
reads a cached object as it would a fetched one) and are read-only. Storage objects are slimmed the
same way: a cluster may hold thousands of claims and volumes. Measured as JSON on the local control
plane, a bound claim is 961 bytes as the API sends it and 278 slimmed, a local volume 1,454 and 440,
a storage class 726 and 222. Slimming a slimmed object changes nothing.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from typing import Any

from neuronplace.placement.claims import pinned_node, requested_amount
from neuronplace.placement.conditions import condition
from neuronplace.placement.failures import started
from neuronplace.placement.names import (
    CAPACITY_REQUEST_LABEL,
    CONDITION_POD_SCHEDULED,
    CONDITION_READY,
    CORES_ANNOTATION,
    INFERENCE_LABEL,
    NEURONCORE_RESOURCE,
    REPLICA_LABEL,
    TEMPLATE_HASH_ANNOTATION,
    TERMINAL_PHASES,
)
from neuronplace.placement.pods import pin_to_node
from neuronplace.placement.volumes import DEFAULT_CLASS_ANNOTATION


def _intern(text: Any) -> Any:
    return sys.intern(text) if type(text) is str else text


def slim_pod(pod: Mapping[str, Any]) -> dict:
    """What reconcile and status read of a managed pod, and nothing else: name, our labels and
    annotations, controller owner, creation and deletion stamps, node (bound, or pinned while
    kube-scheduler has yet to bind it), phase and Ready condition; while unbound, kube-scheduler's
    PodScheduled verdict; once ended, why (reason, message, whether a container ever started)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    status = pod.get("status") or {}
    ready = condition(pod, CONDITION_READY).get("status")
    controller = next((ref.get("uid") for ref in meta.get("ownerReferences") or () if ref.get("controller")), None)
    bound = (pod.get("spec") or {}).get("nodeName")
    slim_status = _pod_status(_intern(status.get("phase")), _intern(ready))
    if not bound:
        scheduled = condition(pod, CONDITION_POD_SCHEDULED)
        if scheduled:
            slim_status = {**slim_status, "conditions": [*slim_status["conditions"], _scheduled(scheduled)]}
    if status.get("phase") in TERMINAL_PHASES:
        slim_status = {
            **slim_status,
            "reason": status.get("reason"),
            "message": status.get("message"),
            "started": started(status.get("containerStatuses")),
        }
    return {
        "metadata": {
            "name": meta.get("name"),
            "namespace": _intern(meta.get("namespace")),
            "labels": {key: _intern(labels[key]) for key in (INFERENCE_LABEL, REPLICA_LABEL) if key in labels},
            "annotations": {
                key: annotations[key] for key in (CORES_ANNOTATION, TEMPLATE_HASH_ANNOTATION) if key in annotations
            },
            "ownerReferences": _controller_reference(controller),
            "creationTimestamp": meta.get("creationTimestamp"),
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "spec": _with_claims(
            _pod_spec(_intern(bound), None if bound else _intern(pinned_node(pod))),
            (pod.get("spec") or {}).get("resourceClaims"),
        ),
        "status": slim_status,
    }


def _scheduled(scheduled: Mapping[str, Any]) -> dict:
    return {
        "type": CONDITION_POD_SCHEDULED,
        "status": _intern(scheduled.get("status")),
        "reason": _intern(scheduled.get("reason")),
        "message": scheduled.get("message"),
    }


def _with_claims(spec: dict, claims: Any) -> dict:
    """A DRA replica's spec keeps the ResourceClaim it takes its chips through (the status names it)."""
    if not claims:
        return spec
    return {**spec, "resourceClaims": [{"resourceClaimName": c.get("resourceClaimName")} for c in claims]}


@functools.lru_cache(maxsize=1024)
def _controller_reference(uid: str | None) -> list:
    return [] if uid is None else [{"controller": True, "uid": uid}]


@functools.lru_cache(maxsize=8192)
def _pod_spec(node: str | None, pinned: str | None) -> dict:
    """A bound pod's node, or the affinity that pins an unbound one (``claims.node_of`` reads both)."""
    if pinned is None:
        return {"nodeName": node}
    return {"nodeName": None, "affinity": pin_to_node(None, pinned)}


@functools.lru_cache(maxsize=64)
def _pod_status(phase: str | None, ready: str | None) -> dict:
    return {"phase": phase, "conditions": [] if ready is None else [{"type": CONDITION_READY, "status": ready}]}


def slim_node(node: Mapping[str, Any]) -> dict:
    """What reconcile reads of a node: its name and Ready condition (readiness and since when)."""
    ready = condition(node, CONDITION_READY)
    return {
        "metadata": {"name": _intern((node.get("metadata") or {}).get("name"))},
        "status": {
            "conditions": [
                {
                    "type": CONDITION_READY,
                    "status": _intern(ready.get("status")),
                    "lastTransitionTime": ready.get("lastTransitionTime"),
                }
            ]
            if ready
            else []
        },
    }


def slim_request(pod: Mapping[str, Any]) -> dict:
    """What is read of a capacity request: name, labels, hash, controller, stamps, the node
    kube-scheduler bound it to, its NeuronCores (``cores``) and kube-scheduler's verdict."""
    meta = pod.get("metadata") or {}
    scheduled = condition(pod, CONDITION_POD_SCHEDULED)
    return {
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "labels": {
                k: v for k, v in (meta.get("labels") or {}).items() if k in (CAPACITY_REQUEST_LABEL, REPLICA_LABEL)
            },
            "annotations": {k: v for k, v in (meta.get("annotations") or {}).items() if k == TEMPLATE_HASH_ANNOTATION},
            "ownerReferences": [
                {"controller": True, "uid": ref.get("uid")}
                for ref in meta.get("ownerReferences") or ()
                if ref.get("controller")
            ],
            "creationTimestamp": meta.get("creationTimestamp"),
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "spec": {"nodeName": (pod.get("spec") or {}).get("nodeName")},
        "status": {"conditions": [dict(scheduled)] if scheduled else []},
        "cores": requested_amount(pod, NEURONCORE_RESOURCE),
    }


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
