"""Kubernetes ResourceClaims (``resource.k8s.io/v1``) for replicas on DRA-managed nodes. Pure.

Words: a *ResourceClaim* is the Kubernetes object that asks the DRA allocator for devices; a
:class:`~.claims.Claim` is our own word for what one holder (a pod, or a ResourceClaim) holds of a
node's cores in the ledger. A ResourceClaim's ledger key is ``resourceclaim:<namespace>/<name>``
(:func:`resource_claim_key`), never a pod key.

The operator makes one ResourceClaim per replica on a DRA node (:func:`build_resource_claim`): named
after the replica pod, controlled by the NeuronInference, for the whole chips the replica needs, with
a ``matchAttribute`` constraint on the chips' connected group for 4, 8 or 16 chips where the node's
slices have one, and the node's LNC as the driver's opaque config. The pod references it
(:func:`claim_pod`) and stays pinned to the chosen node; kube-scheduler allocates the chips.

What a ResourceClaim holds (:func:`read_resource_claim`) is what cannot change: its
``status.allocation``, which only the scheduler writes (a tenant may create a claim, not allocate
one). Its node is the allocation's node selector; its chips are the results of the Neuron driver.
A claim nobody allocated yet holds nothing by itself: the operator reserves its chips in the ledger
under the claim's key when it places the replica (:mod:`.ruling`), and the allocation replaces that
reservation. A ResourceClaim counts as ours only when the NeuronInference that controls it is
trusted (the trust index, :mod:`.trust`) and it is shaped as the operator builds them (named after a
replica, asking only our device class); every other allocated claim is foreign and holds its chips.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from neuronplace.placement.claims import NODE_NAME_FIELD, Claim, PodClaims, controller_inference
from neuronplace.placement.dra import DraNode
from neuronplace.placement.names import ENV_NODE_CORES, ENV_VISIBLE_CORES
from neuronplace.placement.neuron_dra import CONFIG_KIND, CONFIG_LNC_FIELD, DEVICE_CLASS, DRIVER, chip_of_device
from neuronplace.placement.pods import controller_reference
from neuronplace.runtime.coreset import CoreRange

RESOURCE_API_VERSION = "resource.k8s.io/v1"
# The opaque config's apiVersion. The driver's documentation shows the kind (NeuronConfig) and the
# field (logicalNeuronCore) but, as read here, no version string this code could be checked
# against; the driver's group with the first stable version is the form every DRA driver's config
# takes (the NVIDIA driver's ``resource.nvidia.com/v1beta1``). Only this constant changes if it differs.
CONFIG_API_VERSION = f"{DRIVER}/v1"
# The name of the one request in our claims, and of the pod's reference to its claim.
REQUEST_NAME = "neuron"
KEY_PREFIX = "resourceclaim:"


def resource_claim_key(namespace: str, name: str) -> str:
    """The ledger key of the ResourceClaim ``namespace/name`` (never a pod's key)."""
    return f"{KEY_PREFIX}{namespace}/{name}"


def is_resource_claim_key(key: str) -> bool:
    return key.startswith(KEY_PREFIX)


def build_resource_claim(inference: Mapping[str, Any], pod: str, chips: int, dra: DraNode, lnc: int | None) -> dict:
    """The ResourceClaim for the replica pod named ``pod`` of ``inference``: ``chips`` whole chips of
    the Neuron device class, kept in one connected group where ``dra`` has one of that size, with
    ``lnc`` (None: the driver's default) as the driver's config."""
    meta = inference["metadata"]
    devices: dict[str, Any] = {
        "requests": [
            {
                "name": REQUEST_NAME,
                "exactly": {"deviceClassName": DEVICE_CLASS, "allocationMode": "ExactCount", "count": chips},
            }
        ]
    }
    group = dra.group_attribute(chips)
    if group is not None:
        devices["constraints"] = [{"requests": [REQUEST_NAME], "matchAttribute": group}]
    if lnc is not None:
        parameters = {"apiVersion": CONFIG_API_VERSION, "kind": CONFIG_KIND, CONFIG_LNC_FIELD: lnc}
        devices["config"] = [{"requests": [REQUEST_NAME], "opaque": {"driver": DRIVER, "parameters": parameters}}]
    return {
        "apiVersion": RESOURCE_API_VERSION,
        "kind": "ResourceClaim",
        "metadata": {
            "name": pod,
            "namespace": meta["namespace"],
            "ownerReferences": [controller_reference(meta)],
        },
        "spec": {"devices": devices},
    }


def claim_pod(pod: dict, claim: str) -> dict:
    """``pod`` (a built replica pod) taking its chips through the ResourceClaim ``claim``: the pod
    lists it and every container that runs a process uses it (those that carry the replica's env)."""
    spec = pod["spec"]
    spec["resourceClaims"] = [{"name": REQUEST_NAME, "resourceClaimName": claim}]
    for container in spec.get("containers") or ():
        if any(e.get("name") == ENV_VISIBLE_CORES for e in container.get("env") or ()):
            container.setdefault("resources", {})["claims"] = [{"name": REQUEST_NAME}]
    return pod


def claims_through_own_claim(pod: Mapping[str, Any]) -> bool:
    """Whether a pod takes its chips as the operator's DRA replicas do (its spec, immutable, says
    so): through one ResourceClaim named after the pod itself, with the processes' node-global
    cores in their env."""
    spec = pod.get("spec") or {}
    name = (pod.get("metadata") or {}).get("name")
    claims = list(spec.get("resourceClaims") or ())
    if len(claims) != 1 or not isinstance(claims[0], Mapping) or claims[0].get("resourceClaimName") != name:
        return False
    return any(
        isinstance(e, Mapping) and e.get("name") == ENV_NODE_CORES
        for c in spec.get("containers") or ()
        if isinstance(c, Mapping)
        for e in c.get("env") or ()
    )


def reserved_chips(pod: Mapping[str, Any], cores_per_chip: int) -> CoreRange | None:
    """The whole chips a DRA replica pod's processes use, as node cores (from its spec's
    ``NEURONPLACE_NODE_CORES``, immutable), or None when they are not one run."""
    ranges = []
    for container in (pod.get("spec") or {}).get("containers") or ():
        for entry in (container or {}).get("env") or ():
            if isinstance(entry, Mapping) and entry.get("name") == ENV_NODE_CORES:
                try:
                    ranges.append(CoreRange.parse(str(entry.get("value"))))
                except ValueError:
                    return None
    ids = sorted(i for r in ranges for i in r.ids)
    if not ids or ids != list(range(ids[0], ids[0] + len(ids))):
        return None
    first, last = ids[0] // cores_per_chip, ids[-1] // cores_per_chip
    return CoreRange(first * cores_per_chip, (last - first + 1) * cores_per_chip)


def allocated_node(claim: Mapping[str, Any]) -> str | None:
    """The node a claim's allocation is on: its node selector's one ``metadata.name`` (as the
    scheduler writes it for node-local devices), None when unallocated or not one node."""
    allocation = (claim.get("status") or {}).get("allocation") or {}
    terms = (allocation.get("nodeSelector") or {}).get("nodeSelectorTerms") or ()
    nodes = {
        value
        for term in terms
        for field in (term or {}).get("matchFields") or ()
        if field.get("key") == NODE_NAME_FIELD and field.get("operator") == "In"
        for value in field.get("values") or ()
    }
    return nodes.pop() if len(nodes) == 1 else None


def allocated_chips(claim: Mapping[str, Any]) -> tuple[int, ...]:
    """The chip ids of the Neuron driver's devices in a claim's allocation (sorted)."""
    results = (((claim.get("status") or {}).get("allocation") or {}).get("devices") or {}).get("results") or ()
    chips = {
        chip_of_device(str(r.get("device") or ""))
        for r in results
        if isinstance(r, Mapping) and r.get("driver") == DRIVER
    }
    return tuple(sorted(chip for chip in chips if chip is not None))


def _shaped_as_ours(claim: Mapping[str, Any], inference: str) -> bool:
    """Named ``<inference>-<ordinal>`` and asking only the Neuron device class (as built above)."""
    name = (claim.get("metadata") or {}).get("name") or ""
    ordinal = name[len(inference) + 1 :] if name.startswith(inference + "-") else ""
    requests = ((claim.get("spec") or {}).get("devices") or {}).get("requests") or ()
    classes = {((r or {}).get("exactly") or {}).get("deviceClassName") for r in requests}
    return ordinal.isascii() and ordinal.isdigit() and classes == {DEVICE_CLASS}


def read_resource_claim(claim: Mapping[str, Any]) -> Claim | None:
    """What an allocated ResourceClaim holds on its node (its Neuron chips, as devices), or None when
    it holds none. ``managed`` says it is shaped as ours and controlled by a NeuronInference; the
    ledger still asks the trust index whether that NeuronInference is trusted (:func:`readings`)."""
    node = allocated_node(claim)
    chips = allocated_chips(claim)
    if node is None or not chips:
        return None
    meta = claim.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    key = resource_claim_key(namespace, meta.get("name") or "")
    controller = controller_inference(claim)
    if controller is not None and _shaped_as_ours(claim, controller[0]):
        return Claim(node, key, True, f"{namespace}/{controller[0]}", chips, "device", 0, len(chips))
    return Claim(node, key, False, None, chips, "device", 0, len(chips))


def readings(claim: Mapping[str, Any]) -> PodClaims | None:
    """Both readings of an allocated ResourceClaim for the trust index: as ours (when shaped as ours)
    and as foreign; the chips are held either way."""
    read = read_resource_claim(claim)
    if read is None:
        return None
    theirs = Claim(read.node, read.pod, False, None, read.ids, "device", 0, read.device_count)
    controller = controller_inference(claim) if read.managed else None
    uid = controller[1] if controller is not None else None
    return PodClaims(read.pod, read.node, uid, False, read if read.managed else None, theirs, True)
