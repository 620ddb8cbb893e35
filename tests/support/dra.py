"""Foreign DRA objects for cluster tests on the DRA test bed (docs/dra-test-bed.md): a Kubernetes
ResourceClaim for Neuron chips, a pod pinned to a node that uses it, and the chips kube-scheduler
allocated to it."""

from __future__ import annotations

from neuronplace.local.fleet import KWOK_TOLERATION
from neuronplace.placement.neuron_dra import DEVICE_CLASS, TOPOLOGY_GROUP_ATTRIBUTES, chip_of_device, qualified

# The request name inside the claim and the pod's name for the claim.
REQUEST = "chips"


def resource_claim(name: str, count: int, group: int | None = None) -> dict:
    """A ResourceClaim for ``count`` chips; with ``group`` (4 or 8), all of one topology group of that size."""
    exactly = {"deviceClassName": DEVICE_CLASS, "allocationMode": "ExactCount", "count": count}
    devices: dict = {"requests": [{"name": REQUEST, "exactly": exactly}]}
    if group:
        attribute = qualified(TOPOLOGY_GROUP_ATTRIBUTES[group])
        devices["constraints"] = [{"requests": [REQUEST], "matchAttribute": attribute}]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name},
        "spec": {"devices": devices},
    }


def claiming_pod(name: str, node: str, claim_name: str) -> dict:
    """A pod on ``node`` using the claim. Pinned by node affinity, not ``nodeName``: kube-scheduler
    must schedule it, since only kube-scheduler allocates a claim."""
    hostname = {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
    affinity = {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [hostname]}]}
    }
    container = {"name": "main", "image": "example.invalid/model:1", "resources": {"claims": [{"name": REQUEST}]}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "affinity": {"nodeAffinity": affinity},
            "tolerations": [KWOK_TOLERATION],
            "resourceClaims": [{"name": REQUEST, "resourceClaimName": claim_name}],
            "containers": [container],
        },
    }


def allocated_chips(claim: dict) -> list[int]:
    """The chip ids allocated to a ResourceClaim (empty while it is not allocated)."""
    allocation = (claim.get("status") or {}).get("allocation")
    results = allocation["devices"]["results"] if allocation else []
    return [chip for chip in (chip_of_device(r["device"]) for r in results) if chip is not None]
