"""The simulated Neuron DRA driver: the DeviceClass and per-node ResourceSlices it publishes.

The real driver (Neuron 2.28 and later) runs a kubelet plugin on each node that publishes the node's
chips and prepares them for containers. kwok has no kubelet, so here the local cluster publishes what
the plugin would (:func:`publish`), and kube-scheduler allocates ResourceClaims against it as it
would on EKS; nothing prepares devices (no NodePrepareResources, no CDI): a container sees nothing.

What is published (names from :mod:`neuronplace.placement.neuron_dra`): one ResourceSlice per node
(pool = node name, generation 1, one slice, ``spec.nodeName`` set, owned by the Node so that deleting
the node deletes it, as the kubelet plugin's slices are), one device ``neurondevice<chip>`` per chip
with ``deviceId``, ``instanceType``, ``neuronDriverVersion``, ``draDriverVersion``,
``resourceType`` and ``networkNodeLayer1..3``. On non-UltraServer Trainium with more than one chip
(the 4x4 torus of trn1/trn1n/trn2.48xlarge) also ``topology_x = chip // 4``, ``topology_y = chip % 4``,
``topology4_id = chip // 4`` and ``topology8_id = chip // 8``: a group of 4 is one ring of the torus
(same x) and a group of 8 two neighbouring rings, and each group is a run of contiguous chip ids, so
a core range aligned to a group and the group's chips agree (``Topology.devices_of``). With ``efa``,
``resource.aws.com/devicegroup{1,4,8,16}_id`` name the same groups (strings, as the driver's are).
Values the simulation cannot know (versions, network nodes, group hashes) are fixed or derived from
the node name, so a bed is reproducible.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from typing import Protocol

from neuronplace.local.fleet import check_instance_type
from neuronplace.placement.neuron_dra import (
    DEVICE_CLASS,
    DEVICE_GROUP_ATTRIBUTES,
    DEVICE_ID,
    DRA_DRIVER_VERSION,
    DRIVER,
    INSTANCE_TYPE,
    NETWORK_NODE_LAYERS,
    NEURON_DRIVER_VERSION,
    RESOURCE_TYPE,
    RESOURCE_TYPE_DEVICE,
    TOPOLOGY_GROUP_ATTRIBUTES,
    TOPOLOGY_X,
    TOPOLOGY_Y,
    device_name,
)
from neuronplace.placement.topology import topology_for

API_VERSION = "resource.k8s.io/v1"
# The simulated versions: a four-part Neuron driver version is not semver, so the driver publishes
# both versions as strings (AWS's examples compare ``neuronDriverVersion == '2.25.4.0'``).
SIMULATED_NEURON_DRIVER_VERSION = "2.25.4.0"
SIMULATED_DRA_DRIVER_VERSION = "1.5.0"
# Chips per row of the trn1/trn2 torus (16 chips = 4 x 4).
TORUS_WIDTH = 4
# Trainium families whose nodes publish torus coordinates; trn2u (UltraServer) publishes none.
_TORUS_FAMILIES = ("trn1", "trn1n", "trn2")


class Kubectl(Protocol):
    """What publishing needs from a cluster: :class:`neuronplace.local.cluster.LocalCluster` has it."""

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess: ...


def device_class() -> dict:
    """The DeviceClass the driver installs: every device of the driver."""
    return {
        "apiVersion": API_VERSION,
        "kind": "DeviceClass",
        "metadata": {"name": DEVICE_CLASS},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
    }


def _hex(*parts: object, length: int = 16) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:length]


def _attributes(node_name: str, instance_type: str, chip: int, chips: int, efa: bool) -> dict[str, dict]:
    attributes: dict[str, dict] = {
        DEVICE_ID: {"int": chip},
        INSTANCE_TYPE: {"string": instance_type},
        NEURON_DRIVER_VERSION: {"string": SIMULATED_NEURON_DRIVER_VERSION},
        DRA_DRIVER_VERSION: {"string": SIMULATED_DRA_DRIVER_VERSION},
        RESOURCE_TYPE: {"string": RESOURCE_TYPE_DEVICE},
    }
    # EC2 network nodes, farthest first: one spine for the whole bed, the rest per instance.
    for layer, attribute in enumerate(NETWORK_NODE_LAYERS, start=1):
        attributes[attribute] = {
            "string": f"nn-{_hex('network', layer, 'bed' if layer == 1 else node_name, length=17)}"
        }
    if instance_type.split(".", maxsplit=1)[0] in _TORUS_FAMILIES and chips > 1:
        attributes[TOPOLOGY_X] = {"int": chip // TORUS_WIDTH}
        attributes[TOPOLOGY_Y] = {"int": chip % TORUS_WIDTH}
        for size, attribute in TOPOLOGY_GROUP_ATTRIBUTES.items():
            attributes[attribute] = {"int": chip // size}
    if efa:
        for size, attribute in DEVICE_GROUP_ATTRIBUTES.items():
            # A chip alone is named by its PCI address; a group by a hash (the driver's are opaque).
            value = f"{0x10 + chip:02x}:00.0" if size == 1 else _hex(node_name, size, chip // size)
            attributes[attribute] = {"string": value}
    return attributes


def resource_slices(node_name: str, instance_type: str, *, lnc: int | None = None, efa: bool = False) -> list[dict]:
    """The ResourceSlices the driver publishes for one node (pure; one slice, named by the API server).

    ``lnc`` is checked as :func:`~neuronplace.local.fleet.build_node` checks it (trn2: 1 or 2; other
    families ignore it) and changes nothing published: a claim chooses its chips' LNC
    (``NeuronConfig.logicalNeuronCore``), not the node.
    """
    check_instance_type(instance_type)
    topology = topology_for(instance_type, lnc)
    devices = [
        {"name": device_name(chip), "attributes": _attributes(node_name, instance_type, chip, topology.chips, efa)}
        for chip in range(topology.chips)
    ]
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "ResourceSlice",
            # As the kubelet plugin names them: the node, the driver, a random suffix.
            "metadata": {"generateName": f"{node_name}-{DRIVER}-"},
            "spec": {
                "driver": DRIVER,
                "nodeName": node_name,
                "pool": {"name": node_name, "generation": 1, "resourceSliceCount": 1},
                "devices": devices,
            },
        }
    ]


def install(kube: Kubectl) -> None:
    """Install the DeviceClass unless it is there (safe when several callers race)."""
    result = kube.kubectl("create", "-f", "-", input=json.dumps(device_class()), check=False)
    if result.returncode != 0 and "AlreadyExists" not in result.stderr:
        raise RuntimeError(f"cannot create DeviceClass {DEVICE_CLASS}: {result.stderr.strip()[-500:]}")


def _selector(node_name: str) -> str:
    return f"spec.driver={DRIVER},spec.nodeName={node_name}"


def _slices(kube: Kubectl, node_name: str | None) -> list[dict]:
    selector = _selector(node_name) if node_name else f"spec.driver={DRIVER}"
    result = kube.kubectl("get", "resourceslices", "--field-selector", selector, "-o", "json")
    return json.loads(result.stdout)["items"]


def published(kube: Kubectl, node_name: str | None = None) -> dict[str, list[str]]:
    """Node name → names of the driver's ResourceSlices for it (all nodes, or just ``node_name``)."""
    slices: dict[str, list[str]] = {}
    for item in _slices(kube, node_name):
        slices.setdefault(item["spec"].get("nodeName", ""), []).append(item["metadata"]["name"])
    return slices


def publish(
    kube: Kubectl,
    node_name: str,
    instance_type: str,
    *,
    lnc: int | None = None,
    efa: bool = False,
    node_uid: str | None = None,
) -> list[str]:
    """Install the DeviceClass if needed and publish ``node_name``'s slices; return their names.

    The node must exist (its slices are owned by it; ``node_uid`` saves looking it up). Refuses a
    node that already has the driver's slices: a second pool of the same name would make
    kube-scheduler refuse to allocate from either. Slices left by an earlier node of the same name
    (the garbage collector has not deleted them yet) are deleted first.
    """
    slices = resource_slices(node_name, instance_type, lnc=lnc, efa=efa)
    install(kube)
    if node_uid is None:
        found = kube.kubectl("get", "node", node_name, "-o", "jsonpath={.metadata.uid}", check=False)
        if found.returncode != 0:
            raise RuntimeError(f"cannot publish slices for node {node_name}: {found.stderr.strip()[-300:]}")
        node_uid = found.stdout.strip()
    existing = _slices(kube, node_name)
    stale = [i["metadata"]["name"] for i in existing if _owner_uids(i) and node_uid not in _owner_uids(i)]
    if len(stale) < len(existing):
        raise RuntimeError(f"node {node_name} already has {DRIVER} ResourceSlices; unpublish them first")
    if stale:
        kube.kubectl("delete", "resourceslices", *stale, "--ignore-not-found")
    owner = {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid, "controller": True}
    for item in slices:
        item["metadata"]["ownerReferences"] = [owner]
    created = kube.kubectl(
        "create",
        "-o",
        'jsonpath={.metadata.name}{"\\n"}',  # one line per slice created
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": slices}),
    )
    return created.stdout.split()


def _owner_uids(item: dict) -> set[str]:
    return {owner.get("uid", "") for owner in item["metadata"].get("ownerReferences") or ()}


def unpublish(kube: Kubectl, node_name: str) -> list[str]:
    """Delete ``node_name``'s slices of the driver (as when the driver leaves the node); return their names."""
    names = published(kube, node_name).get(node_name, [])
    if names:
        kube.kubectl("delete", "resourceslices", *names, "--ignore-not-found")
    return names
