"""Node objects (API dicts) → what placement needs to know about each node. Pure.

A node is described by its name, labels, taints, topology and usable core count, plus ``problem``:
``None`` when the node may take pods at all, otherwise the reason it never can (cordoned,
NotReady, being deleted, unknown instance type, no NeuronCores allocatable). Taints, node
selectors and node affinity depend on the request, so placement checks them per request.

Usable cores are ``min(topology cores, allocatable aws.amazon.com/neuroncore)``: when the device
plugin advertises fewer cores than the hardware has, the highest ids are the ones we leave alone.
Without a ``neuroncore`` figure the ``aws.amazon.com/neuron`` device count times the cores per chip
is used. A node the Neuron DRA driver manages (:mod:`.dra`: its ResourceSlices name it) has no Neuron
allocatable: its usable cores are its published chips times the cores per chip, and ``dra`` says
which chips and groups it has. A node with both the device plugin's allocatable and the driver's
slices is refused (``BOTH_DEVICE_MANAGERS``): the two would hand out the same chips ("silent
oversubscription", the driver's documentation). ``allocatable`` keeps every resource the scheduler checks (:mod:`.resources`), so that is used. ``unhealthy`` and ``degraded`` are the node's Neuron hardware health (:mod:`.health`); an
unhealthy node takes no new replica (its problem kind is ``health.UNHEALTHY``). ``allocatable`` keeps every resource the scheduler checks (:mod:`.resources`), so that
placement can tell whether a replica's cpu, memory and the rest fit beside the pods already there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from neuronplace.placement.conditions import is_ready
from neuronplace.placement.dra import DraNode, usable_chips
from neuronplace.placement.health import DETECTED, UNHEALTHY, degraded_words, unhealthy_words
from neuronplace.placement.names import (
    INSTANCE_TYPE_LABEL,
    LEGACY_INSTANCE_TYPE_LABEL,
    LNC_KEY,
    NEURON_DEVICE_RESOURCES,
    NEURONCORE_RESOURCE,
    TOPOLOGY_OVERRIDE_KEY,
)
from neuronplace.placement.resources import node_allocatable
from neuronplace.placement.topology import Topology, parse_topology_override, topology_for

# Problem kinds, used to count excluded nodes in a placement failure reason.
CORDONED = "cordoned"
NOT_READY = "NotReady"
BEING_DELETED = "being deleted"
UNKNOWN_TOPOLOGY = "unknown topology"
NO_CORES = "no NeuronCores"
BOTH_DEVICE_MANAGERS = "device plugin and DRA"


@dataclass(frozen=True)
class NodeInventory:
    """One node as placement sees it. ``problem`` is ``None`` when eligible in principle."""

    name: str
    instance_type: str | None
    topology: Topology | None
    cores: int
    labels: Mapping[str, str]
    taints: tuple[Mapping, ...]
    problem: str | None
    problem_kind: str | None = None
    """One of the kinds above when ``problem`` is set (for counting excluded nodes)."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    allocatable: Mapping[str, int] = field(default_factory=dict)
    """``status.allocatable`` as :func:`resources.node_allocatable` reads it (absent means 0)."""
    dra: DraNode | None = None
    """The Neuron DRA driver's chips and groups on a DRA-managed node (None: device plugin)."""
    unhealthy: str | None = None
    """The detectors' words when a health condition says the Neuron hardware has a problem."""
    degraded: str | None = None
    """Why a device-plugin node advertises less than its instance type has, if it does."""
    settles_at: float | None = None
    """When a node healthy again is used again (Unix seconds; :func:`.health.settled`)."""


def _int_quantity(value) -> int | None:
    """Extended resources are whole numbers; anything else is treated as missing."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _topology(labels: Mapping[str, str], annotations: Mapping[str, str], instance_type: str | None):
    """(topology, problem): the override wins over the instance-type table."""
    override = labels.get(TOPOLOGY_OVERRIDE_KEY) or annotations.get(TOPOLOGY_OVERRIDE_KEY)
    if override:
        try:
            return parse_topology_override(override), None
        except ValueError as error:
            return None, str(error)
    if not instance_type:
        return None, f"no {INSTANCE_TYPE_LABEL} label (set label {TOPOLOGY_OVERRIDE_KEY}, e.g. '12x2')"
    lnc_text = labels.get(LNC_KEY) or annotations.get(LNC_KEY)
    lnc = None
    if lnc_text is not None:
        if lnc_text.strip() not in ("1", "2"):
            return None, f"{LNC_KEY} {lnc_text!r} must be '1' or '2'"
        lnc = int(lnc_text)
    topology = topology_for(instance_type, lnc)
    if topology is None:
        return None, f"unknown instance type {instance_type!r} (set label {TOPOLOGY_OVERRIDE_KEY}, e.g. '12x2')"
    return topology, None


def inventory_from_node(
    node: dict, dra: DraNode | None = None, unhealthy_conditions: tuple[tuple[str, str], ...] = DETECTED
) -> NodeInventory:
    """Build the inventory of one Node (the API's JSON dict, camelCase keys), with ``dra`` what the
    Neuron DRA driver's ResourceSlices say of it (:func:`.dra.dra_nodes`). Never raises on node data.
    ``unhealthy_conditions``: the (condition type, problem status) pairs that make it unhealthy."""
    metadata = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    name = metadata.get("name") or ""
    labels = dict(metadata.get("labels") or {})
    annotations = dict(metadata.get("annotations") or {})
    taints = tuple(MappingProxyType(dict(taint)) for taint in spec.get("taints") or ())
    instance_type = labels.get(INSTANCE_TYPE_LABEL) or labels.get(LEGACY_INSTANCE_TYPE_LABEL)

    topology, topology_problem = _topology(labels, annotations, instance_type)
    cores = 0
    cores_problem = None
    both = None
    if topology is not None and dra is not None:
        cores = usable_chips(dra, topology.chips) * topology.cores_per_chip
        cores_problem = None if cores else f"the Neuron DRA driver publishes no chip 0 ({len(dra.chips)} devices)"
    if topology is not None:
        allocatable = status.get("allocatable") or {}
        advertised = _int_quantity(allocatable.get(NEURONCORE_RESOURCE))
        if advertised is None:
            devices = next(
                (d for d in (_int_quantity(allocatable.get(key)) for key in NEURON_DEVICE_RESOURCES) if d is not None),
                None,
            )
            advertised = None if devices is None else devices * topology.cores_per_chip
        if dra is not None:
            if advertised:
                both = (
                    f"both the Neuron device plugin ({advertised} cores allocatable) and the Neuron DRA driver "
                    f"({len(dra.chips)} devices in ResourceSlices) manage it: they would hand out the same chips; "
                    "run one of them on this node"
                )
        elif advertised is None:
            cores_problem = f"no {NEURONCORE_RESOURCE} allocatable (is the Neuron device plugin running?)"
        else:
            cores = max(0, min(topology.cores, advertised))
            if cores == 0:
                cores_problem = f"{NEURONCORE_RESOURCE} allocatable is 0"

    unhealthy = unhealthy_words(node, unhealthy_conditions)
    # The first problem in this order is the one reported: it is the most fundamental.
    checks = (
        (metadata.get("deletionTimestamp") is not None, BEING_DELETED, "being deleted"),
        (bool(spec.get("unschedulable")), CORDONED, "cordoned"),
        (not is_ready(node), NOT_READY, "NotReady"),
        (unhealthy is not None, UNHEALTHY, unhealthy),
        (topology_problem is not None, UNKNOWN_TOPOLOGY, topology_problem),
        (both is not None, BOTH_DEVICE_MANAGERS, both),
        (cores_problem is not None, NO_CORES, cores_problem),
    )
    problem_kind, problem = next(((kind, text) for failed, kind, text in checks if failed), (None, None))
    return NodeInventory(
        name=name,
        instance_type=instance_type,
        topology=topology,
        cores=cores,
        labels=MappingProxyType(labels),
        taints=taints,
        problem=problem,
        problem_kind=problem_kind,
        annotations=MappingProxyType(annotations),
        allocatable=MappingProxyType(node_allocatable(node)),
        dra=dra,
        unhealthy=unhealthy,
        degraded=degraded_words(status.get("allocatable") or {}, topology),
    )
