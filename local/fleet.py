"""The simulated Neuron fleet: fleet specs and pure Node manifests that kwok manages.

A fleet spec is ``"inf2.48xlarge=2,trn1.32xlarge=1"`` (instance type = count), each item optionally
ending in how its Neuron devices are managed: ``:dp`` (the Neuron device plugin, the default) or
``:dra`` (the Neuron DRA driver, simulated by :mod:`neuronplace.local.dra_driver`), e.g.
``"inf2.48xlarge=1,trn2.48xlarge=2:dra"``. :func:`build_node`
returns the Node object for one simulated instance: the instance-type and zone labels a real EKS node
carries, capacity and allocatable for ``aws.amazon.com/neuroncore`` (cores) and
``aws.amazon.com/neuron`` (whole devices = chips) from the instance-type table of
:mod:`neuronplace.placement.topology` (none on a DRA node: there the driver's ResourceSlices
publish the chips), plus cpu, memory, ephemeral-storage and pods, with
allocatable below capacity by what an EKS node reserves (:func:`host_resources`). The annotation
``kwok.x-k8s.io/node: fake`` hands the node to kwok (it then keeps the node Ready and runs the pods
bound to it), and kwok's ``NoSchedule`` taint keeps pods that do not tolerate it away.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from neuronplace.placement.names import INSTANCE_TYPE_LABEL, LNC_KEY, NEURON_DEVICE_RESOURCE, NEURONCORE_RESOURCE
from neuronplace.placement.topology import INSTANCE_TOPOLOGIES, Topology, topology_for

ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
# The toleration a pod needs to land on a simulated node.
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake", "effect": "NoSchedule"}
# Nodes a test (or benchmark) made carry this label with a value unique to it; its resources select on it.
POOL_LABEL = "neuronplace.io/pool"

REGION = "us-east-1"
ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")
# kubelet's default --max-pods; EKS derives a per-type limit from ENIs, which a simulation lacks.
DEFAULT_MAX_PODS = 110
# The EKS default root volume, where the kubelet keeps images, logs and emptyDirs.
ROOT_VOLUME_GIB = 20


@dataclass(frozen=True)
class HostShape:
    """The non-Neuron resources of an instance type (AWS instance type specifications)."""

    vcpus: int
    memory_gib: int


HOST_SHAPES: dict[str, HostShape] = {
    "inf1.xlarge": HostShape(4, 8),
    "inf1.2xlarge": HostShape(8, 16),
    "inf1.6xlarge": HostShape(24, 48),
    "inf1.24xlarge": HostShape(96, 192),
    "inf2.xlarge": HostShape(4, 16),
    "inf2.8xlarge": HostShape(32, 128),
    "inf2.24xlarge": HostShape(96, 384),
    "inf2.48xlarge": HostShape(192, 768),
    "trn1.2xlarge": HostShape(8, 32),
    "trn1.32xlarge": HostShape(128, 512),
    "trn1n.32xlarge": HostShape(128, 512),
    "trn2.3xlarge": HostShape(12, 128),
    "trn2.48xlarge": HostShape(192, 2048),
    "trn2u.48xlarge": HostShape(192, 2048),
}


def _reserved_millicpu(vcpus: int) -> int:
    """The EKS AMIs' kube-reserved cpu: 6% of the first core, 1% of the second, 0.5% of the next
    two and 0.25% of every core above four."""
    shares = ((1, 60), (1, 10), (2, 5))
    reserved, left = 0, vcpus
    for cores, per_core in shares:
        taken = min(left, cores)
        reserved += taken * per_core
        left -= taken
    return reserved + left * 5 // 2


def host_resources(instance_type: str) -> tuple[dict[str, str], dict[str, str]]:
    """(capacity, allocatable) of cpu, memory, ephemeral-storage and pods, as an EKS node reports them.

    Allocatable is capacity less the EKS AMIs' kube-reserved (cpu above; 255Mi + 11Mi per pod of
    memory; 1Gi of disk) and the kubelet's hard eviction thresholds (memory.available 100Mi,
    nodefs.available 10%).
    """
    host = HOST_SHAPES[instance_type]
    memory_mi = host.memory_gib * 1024
    disk_mi = ROOT_VOLUME_GIB * 1024
    capacity = {
        "cpu": str(host.vcpus),
        "memory": f"{host.memory_gib}Gi",
        "ephemeral-storage": f"{ROOT_VOLUME_GIB}Gi",
        "pods": str(DEFAULT_MAX_PODS),
    }
    allocatable = {
        "cpu": f"{host.vcpus * 1000 - _reserved_millicpu(host.vcpus)}m",
        "memory": f"{memory_mi - (255 + 11 * DEFAULT_MAX_PODS) - 100}Mi",
        "ephemeral-storage": f"{disk_mi - 1024 - disk_mi // 10}Mi",
        "pods": str(DEFAULT_MAX_PODS),
    }
    return capacity, allocatable


_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_SPEC_ITEM = re.compile(r"^([a-z0-9]+(?:\.[a-z0-9]+)*)=(\d+)(?::([a-z]+))?$")
_ITEM_FORM = "TYPE=COUNT[:dp|:dra] (e.g. inf2.48xlarge=2 or trn2.48xlarge=1:dra)"

# How a fleet item's Neuron devices are managed: the device plugin (extended resources on the Node)
# or the DRA driver (ResourceSlices). Both may run in one cluster, never on one node.
DEVICE_PLUGIN = "dp"
DRA = "dra"
DEVICE_MANAGEMENTS = (DEVICE_PLUGIN, DRA)


@dataclass(frozen=True)
class FleetItem:
    """``count`` simulated instances of ``instance_type`` whose devices ``management`` manages."""

    instance_type: str
    count: int
    management: str = DEVICE_PLUGIN

    @property
    def dra(self) -> bool:
        return self.management == DRA

    def __str__(self) -> str:
        return f"{self.instance_type}={self.count}" + (f":{self.management}" if self.dra else "")


# What every function taking a fleet accepts: a spec string, ``{type: count}`` (device-plugin nodes)
# or parsed items.
FleetSpec = str | Mapping[str, int] | Sequence[FleetItem]


def parse_fleet(spec: str) -> list[FleetItem]:
    """Parse ``"inf2.48xlarge=2,trn2.48xlarge=1:dra"`` into its items, in order.

    Every type must be a known instance type (``neuronplace.placement.topology``), every count an
    integer >= 1, the suffix (if any) ``:dp`` or ``:dra``, and no type may repeat with the same
    management; otherwise ``ValueError`` names the offending item and the expected form.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"fleet spec {spec!r} is empty; expected {_ITEM_FORM}[,...]")
    items: list[FleetItem] = []
    for raw in spec.split(","):
        text = raw.strip()
        match = _SPEC_ITEM.match(text)
        if not match:
            raise ValueError(f"fleet spec item {text!r} is not {_ITEM_FORM} in {spec!r}")
        instance_type, count, management = match.group(1), int(match.group(2)), match.group(3) or DEVICE_PLUGIN
        check_instance_type(instance_type)
        if count < 1:
            raise ValueError(f"fleet spec item {text!r}: count must be >= 1")
        if management not in DEVICE_MANAGEMENTS:
            raise ValueError(
                f"fleet spec item {text!r}: device management must be :dp (device plugin) or :dra (DRA driver)"
            )
        if any(item.instance_type == instance_type and item.management == management for item in items):
            raise ValueError(f"fleet spec {spec!r} names {instance_type}:{management} twice")
        items.append(FleetItem(instance_type, count, management))
    return items


def normalize_fleet(fleet: FleetSpec) -> list[FleetItem]:
    """Accept a spec string, a ``{type: count}`` mapping (device-plugin nodes) or items; validate
    them the same way."""
    if isinstance(fleet, str):
        return parse_fleet(fleet)
    if isinstance(fleet, Mapping):
        result: list[FleetItem] = []
        for instance_type, count in fleet.items():
            check_instance_type(instance_type)
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ValueError(f"fleet count for {instance_type} must be an integer >= 1, got {count!r}")
            result.append(FleetItem(instance_type, count))
        return result
    return parse_fleet(",".join(str(item) for item in fleet)) if fleet else []


def describe_fleet(fleet: FleetSpec) -> str:
    """The spec text of a fleet (``inf2.48xlarge=1,trn2.48xlarge=2:dra``), for messages."""
    return ",".join(str(item) for item in normalize_fleet(fleet))


def check_instance_type(instance_type: str) -> None:
    if instance_type not in INSTANCE_TOPOLOGIES or instance_type not in HOST_SHAPES:
        known = ", ".join(sorted(set(INSTANCE_TOPOLOGIES) & set(HOST_SHAPES)))
        raise ValueError(f"unknown instance type {instance_type!r}; known: {known}")


def node_name(prefix: str, instance_type: str, index: int, dra: bool = False) -> str:
    """``np-`` + ``inf2.48xlarge`` + 0 → ``np-inf2-48xlarge-0`` (a valid DNS label); a DRA-managed
    instance is ``np-trn2-48xlarge-dra-0`` (so one fleet may hold a type under both managements)."""
    return f"{prefix}{instance_type.replace('.', '-')}-{'dra-' if dra else ''}{index}"


def build_node(
    name: str,
    instance_type: str,
    zone: str = ZONES[0],
    labels: Mapping[str, str] | None = None,
    lnc: int | None = None,
    dra: bool = False,
) -> dict:
    """The Node manifest of one simulated instance (pure; the API's JSON form).

    ``lnc`` (trn2 only) sets the logical-core grouping and is recorded as the label
    ``neuronplace.io/lnc``; other families ignore it. Extra ``labels`` are added last (they may not
    override the instance-type label, which would make the node lie about its hardware). A ``dra``
    node has the same labels but no Neuron capacity or allocatable: the Neuron DRA driver publishes
    its chips as ResourceSlices instead (:mod:`neuronplace.local.dra_driver`).
    """
    check_instance_type(instance_type)
    if not _NODE_NAME.match(name) or len(name) > 253:
        raise ValueError(f"node name {name!r} is not a DNS subdomain (lowercase letters, digits, '-', '.')")
    topology: Topology = topology_for(instance_type, lnc)
    extra = dict(labels or {})
    if extra.get(INSTANCE_TYPE_LABEL, instance_type) != instance_type:
        raise ValueError(
            f"label {INSTANCE_TYPE_LABEL}={extra[INSTANCE_TYPE_LABEL]!r} contradicts instance type {instance_type}"
        )
    node_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        INSTANCE_TYPE_LABEL: instance_type,
        ZONE_LABEL: zone,
        REGION_LABEL: REGION,
        "type": "kwok",
    }
    if lnc is not None and instance_type.startswith("trn2"):
        node_labels[LNC_KEY] = str(lnc)
    node_labels.update(extra)
    neuron = {} if dra else {NEURONCORE_RESOURCE: str(topology.cores), NEURON_DEVICE_RESOURCE: str(topology.chips)}
    capacity, allocatable = host_resources(instance_type)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": node_labels,
            "annotations": {KWOK_ANNOTATION: "fake"},
        },
        "spec": {"taints": [dict(KWOK_TAINT)]},
        "status": {
            "capacity": {**capacity, **neuron},
            "allocatable": {**allocatable, **neuron},
            "phase": "Running",
        },
    }


@dataclass(frozen=True)
class Instance:
    """One simulated instance of a fleet: its node's name, type, zone and device management."""

    name: str
    instance_type: str
    zone: str
    dra: bool


def fleet_instances(fleet: FleetSpec, prefix: str = "np-", zones: tuple[str, ...] = ZONES) -> list[Instance]:
    """The instances of a fleet, in spec order; instances of each item are spread over ``zones`` in turn."""
    return [
        Instance(
            node_name(prefix, item.instance_type, index, item.dra),
            item.instance_type,
            zones[index % len(zones)],
            item.dra,
        )
        for item in normalize_fleet(fleet)
        for index in range(item.count)
    ]


def build_fleet(
    fleet: FleetSpec,
    prefix: str = "np-",
    labels: Mapping[str, str] | None = None,
    zones: tuple[str, ...] = ZONES,
) -> list[dict]:
    """Node manifests for a whole fleet (:func:`fleet_instances`)."""
    return [
        build_node(instance.name, instance.instance_type, instance.zone, labels, dra=instance.dra)
        for instance in fleet_instances(fleet, prefix, zones)
    ]
