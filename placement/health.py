"""Neuron hardware health of a node, as the node's own conditions and allocatable say it. Pure.

**Unhealthy**: a node condition says the Neuron hardware has a problem. On EKS two detectors write
one each (their polarities differ, so each condition type is paired with the status that means a
problem):

- the Neuron node problem detector (AWS's Neuron Helm chart): ``NeuronHealth`` ``True`` (the
  node-problem-detector convention), reasons ``NeuronHasError_SRAM_UNCORRECTABLE_ERROR``,
  ``NeuronHasError_NC_UNCORRECTABLE_ERROR``, ``NeuronHasError_HBM_UNCORRECTABLE_ERROR``,
  ``NeuronHasError_DMA_ERROR``;
- the EKS node monitoring agent: ``AcceleratedHardwareReady`` ``False``, reasons ``NeuronDMAError``,
  ``NeuronHBMUncorrectableError``, ``NeuronNCUncorrectableError``, ``NeuronSRAMUncorrectableError``.

Other detectors' conditions are added by the operator setting ``unhealthy_conditions``
(:func:`parse_unhealthy_conditions`). What is shown is the detector's own words: ``Type: reason``.

**Degraded**: a device-plugin node advertises fewer NeuronCores or devices than its instance type
has (the device plugin lowers its allocatable when devices turn unhealthy; which device is not
published). Placement already uses only what is advertised; degraded only says so. A node with no
Neuron allocatable at all (managed by a DRA driver) is never degraded for that.

**Settling**: a node healthy again is used again only ``settle`` seconds after it last turned
healthy (:func:`settled`); the operator remembers when that was, since the node does not say.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from neuronplace.placement.conditions import condition
from neuronplace.placement.names import NEURON_DEVICE_RESOURCES, NEURONCORE_RESOURCE
from neuronplace.placement.topology import Topology

if TYPE_CHECKING:
    from neuronplace.placement.inventory import NodeInventory

NEURON_HEALTH = "NeuronHealth"
ACCELERATED_HARDWARE_READY = "AcceleratedHardwareReady"
# (condition type, the status that means a problem), always watched.
DETECTED: tuple[tuple[str, str], ...] = ((NEURON_HEALTH, "True"), (ACCELERATED_HARDWARE_READY, "False"))
STATUSES = ("True", "False", "Unknown")
# How long a node healthy again waits before it takes replicas, by default (the operator setting
# ``health_settle_seconds``): longer than a detector's flap, short beside EKS auto-repair's 10 minutes.
HEALTH_SETTLE_SECONDS = 60.0
# The node problem kind of an unhealthy (or settling) node, as :mod:`.inventory` counts problems.
UNHEALTHY = "unhealthy"


def parse_unhealthy_conditions(text: str) -> tuple[tuple[str, str], ...]:
    """``"Type=Status,Type2=Status2"`` → ((Type, Status), ...): each entry names a node condition type
    and the status that means the Neuron hardware has a problem. Empty text: none. Raises ValueError
    naming the text and the rule."""
    out: list[tuple[str, str]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        type_, equals, status = (piece.strip() for piece in item.partition("="))
        if not equals or not type_ or status not in STATUSES or any(c.isspace() for c in type_):
            raise ValueError(
                f"unhealthy condition {item!r} in {text!r} must be Type=Status, Status one of "
                f"{', '.join(STATUSES)} (the status that means a problem), e.g. {NEURON_HEALTH}=True"
            )
        out.append((type_, status))
    return tuple(out)


def watched(extra: Sequence[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
    """The built-in conditions plus ``extra`` (the setting), each once."""
    return tuple(dict.fromkeys((*DETECTED, *extra)))


def unhealthy_words(node: Mapping[str, Any], conditions: Sequence[tuple[str, str]] = DETECTED) -> str | None:
    """The detectors' words (``"NeuronHealth: NeuronHasError_HBM_UNCORRECTABLE_ERROR"``, several
    joined by ``"; "``) when a watched condition has its problem status; None when healthy."""
    words = []
    for type_, bad in conditions:
        found = condition(node, type_)
        if found.get("status") == bad:
            words.append(f"{type_}: {found.get('reason') or found.get('message') or bad}")
    return "; ".join(words) or None


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def degraded_words(allocatable: Mapping[str, Any], topology: Topology | None) -> str | None:
    """Why a device-plugin node is degraded (``"aws.amazon.com/neuron allocatable 11 of 12"``), or None.
    ``allocatable`` is the node's ``status.allocatable`` as written."""
    if topology is None:
        return None
    cores = _count(allocatable.get(NEURONCORE_RESOURCE))
    if cores is not None and cores < topology.cores:
        return f"{NEURONCORE_RESOURCE} allocatable {cores} of {topology.cores}"
    for resource in NEURON_DEVICE_RESOURCES:
        devices = _count(allocatable.get(resource))
        if devices is not None and devices < topology.chips:
            return f"{resource} allocatable {devices} of {topology.chips}"
    return None


def settle_end(healthy_since: float | None, settle_seconds: float) -> float | None:
    """When a node that turned healthy at ``healthy_since`` (Unix seconds) is used again."""
    return None if healthy_since is None else healthy_since + settle_seconds


def settled(
    inventory: NodeInventory, last_words: str | None, healthy_since: float | None, settle_seconds: float, now: float
) -> NodeInventory:
    """``inventory`` as placement must see it at ``now``: a healthy node that turned healthy less than
    ``settle_seconds`` ago stays unhealthy (with its last words, and when it is used again)."""
    end = settle_end(healthy_since, settle_seconds)
    if inventory.unhealthy is not None or end is None or now >= end or inventory.problem is not None:
        return inventory
    words = f"{last_words or 'unhealthy'}; healthy again, settling {settle_seconds:g}s"
    return dataclasses.replace(inventory, problem=words, problem_kind=UNHEALTHY, unhealthy=words, settles_at=end)


def reason_label(inventory: NodeInventory) -> str:
    """A short reason for metric labels: ``Settling`` for a node healthy again and not used yet, else
    its first detector's reason (``NeuronHasError_HBM_UNCORRECTABLE_ERROR``)."""
    if inventory.settles_at is not None:
        return "Settling"
    first = (inventory.unhealthy or "").split("; ")[0]
    return first.split(": ", 1)[-1]
