"""Which path a replica takes to its cores: the device plugin's or the DRA driver's. Pure.

``spec.placement.deviceManagement`` says which nodes a replica may use: ``DevicePlugin`` nodes (Neuron
allocatable), ``DRA`` nodes (the Neuron DRA driver's ResourceSlices), or ``Auto`` (whatever the node
offers: the device plugin's nodes first, where a replica may take part of a chip, then DRA's). Each
path is a placement request kept off the other kind of node (:func:`.request.avoiding`), so the
search and its reasons stay one.

On a DRA node a replica takes whole chips (the driver has one device per chip): a replica whose
cores fill no whole chips is placed there only when ``spec.placement.wholeChips`` allows rounding up,
else :func:`paths` says how many cores it would waste. Its range is reserved in the ledger under its
ResourceClaim's key until kube-scheduler allocates the claim; 4, 8 or 16 chips start at a multiple of
their size (the groups of the torus), and :func:`dra_placement` checks the chips are in one group as
the node's slices say. The processes see only the claimed chips, so their
``NEURON_RT_VISIBLE_CORES`` count from 0 within them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from neuronplace.placement.dra import GROUP_SIZES, chips_for
from neuronplace.placement.fleet import Fleet
from neuronplace.placement.names import (
    AWS_NEURON_IDS,
    BINDING_DIRECT,
    DEVICE_MANAGEMENT_AUTO,
    DEVICE_MANAGEMENT_DEVICE_PLUGIN,
    DEVICE_MANAGEMENT_DRA,
    NEURON_DEVICE_RESOURCE,
    NEURON_RESOURCE_TYPE,
)
from neuronplace.placement.request import PlacementRequest, ReplicaPlacement, avoiding
from neuronplace.runtime.coreset import CoreRange


@dataclass(frozen=True)
class Path:
    """One way to place a replica: a request for one kind of node (``DevicePlugin`` or ``DRA``)."""

    kind: str
    request: PlacementRequest


def device_management(inference: Mapping[str, Any]) -> str:
    placement = (inference.get("spec") or {}).get("placement") or {}
    return placement.get("deviceManagement") or DEVICE_MANAGEMENT_AUTO


def paths(
    inference: Mapping[str, Any], request: PlacementRequest, fleet: Fleet, binding: str
) -> tuple[list[Path], str | None]:
    """The paths a replica of ``inference`` may take, in order, and why a DRA path is closed (None
    when none is, or the inference does not ask for DRA nodes)."""
    mode = device_management(inference)
    dra_nodes = {node.name: node for node in fleet.nodes if node.dra is not None}
    plugin_nodes = frozenset(node.name for node in fleet.nodes if node.dra is None)
    found: list[Path] = []
    if mode in (DEVICE_MANAGEMENT_AUTO, DEVICE_MANAGEMENT_DEVICE_PLUGIN):
        found.append(Path(DEVICE_MANAGEMENT_DEVICE_PLUGIN, avoiding(request, frozenset(dra_nodes))))
    if mode == DEVICE_MANAGEMENT_DEVICE_PLUGIN or not dra_nodes:
        return found, None
    if binding == BINDING_DIRECT:
        # A pod created with spec.nodeName skips kube-scheduler, which alone allocates claims.
        return found, "Direct binding cannot allocate ResourceClaims on DRA nodes (use binding Scheduler)"
    whole = bool(((inference.get("spec") or {}).get("placement") or {}).get("wholeChips", False))
    closed = None
    per_chip_sizes = sorted({node.topology.cores_per_chip for node in dra_nodes.values() if node.topology})
    for per_chip in per_chip_sizes:
        chips, waste = chips_for(request.cores_per_replica, per_chip)
        if waste and not whole:
            closed = (
                f"{request.cores_per_replica} cores fill no whole chips on DRA nodes ({per_chip} cores a chip): "
                f"{chips} chips would leave {waste} cores idle; set spec.placement.wholeChips to round up"
            )
            continue
        others = frozenset(
            name for name, node in dra_nodes.items() if node.topology and node.topology.cores_per_chip != per_chip
        )
        cores = chips * per_chip
        neuron_free = {k: v for k, v in request.requests.items() if not k.startswith(NEURON_DEVICE_RESOURCE)}
        shaped = dataclasses.replace(
            request,
            cores_per_replica=cores,
            processes_per_replica=1,
            aligned=request.aligned or chips in GROUP_SIZES,
            requests=neuron_free,
        )
        found.append(Path(DEVICE_MANAGEMENT_DRA, avoiding(shaped, plugin_nodes | others)))
    return found, closed


def dra_placement(placed: ReplicaPlacement, cores: int, processes: int) -> ReplicaPlacement:
    """A replica placed on whole chips, as its processes use it: the first ``cores`` cores of its
    chips split among ``processes``, each seeing them from 0 (the container sees only its chips)."""
    used = CoreRange(placed.cores.start, cores)
    parts = tuple(used.split(processes))
    visible = tuple(str(part.shifted(placed.cores.start)) for part in parts)
    return dataclasses.replace(placed, process_cores=parts, visible_cores=visible)


def dra_pod(pod: dict) -> dict:
    """A built replica pod (:func:`.pods.build_pod`) made to take its chips through a ResourceClaim:
    no Neuron extended resources (the node has none) and none of the device plugin's annotations."""
    for container in pod["spec"].get("containers") or ():
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            if isinstance(resources.get(kind), dict):
                resources[kind] = {k: v for k, v in resources[kind].items() if not k.startswith(NEURON_DEVICE_RESOURCE)}
    annotations = pod["metadata"]["annotations"]
    for key in (AWS_NEURON_IDS, NEURON_RESOURCE_TYPE):
        annotations.pop(key, None)
    return pod
