"""Nodes managed by the Neuron DRA driver: what its ResourceSlices say of each node. Pure.

The driver publishes one device per chip (:mod:`.neuron_dra`) in ResourceSlices of its own driver
name, one pool per node. A node is DRA-managed when such slices name it (``spec.nodeName``); its
chips are the devices they list. Only the newest generation of a pool counts: a driver that
republishes leaves older slices behind for a while, as the scheduler's allocator also ignores them.

The connected groups of chips come from the devices' group attributes (``topology4_id``,
``topology8_id``; with EFA ``resource.aws.com/devicegroup{4,8,16}_id``): a claim for 4, 8 or 16 chips
carries a ``matchAttribute`` constraint on the group attribute of its size, so kube-scheduler
allocates connected chips; the operator checks the same groups before it makes the claim.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from neuronplace.placement.neuron_dra import (
    DEVICE_GROUP_ATTRIBUTES,
    DRIVER,
    TOPOLOGY_GROUP_ATTRIBUTES,
    chip_of_device,
    qualified,
)

# Chip counts a claim keeps connected with a matchAttribute constraint (where the slices have it).
GROUP_SIZES = (4, 8, 16)


@dataclass(frozen=True)
class DraNode:
    """One DRA-managed node: its chips and, per group size, the qualified group attribute and each
    chip's group (only sizes whose attribute every chip has)."""

    chips: tuple[int, ...]
    groups: Mapping[int, tuple[str, Mapping[int, str]]] = field(default_factory=dict)

    def group_attribute(self, chips: int) -> str | None:
        """The qualified attribute a claim for ``chips`` chips must match, or None (no constraint)."""
        found = self.groups.get(chips)
        return found[0] if found is not None else None

    def same_group(self, chips: Iterable[int]) -> bool:
        """Whether ``chips`` lie in one group of their count's size (True when no group applies)."""
        wanted = tuple(chips)
        found = self.groups.get(len(wanted))
        if found is None:
            return True
        return len({found[1].get(chip) for chip in wanted}) == 1 and None not in {found[1].get(c) for c in wanted}


def _value(attribute) -> str | None:
    """A device attribute's value as text ({int|string|bool|version: v}), None when malformed."""
    if not isinstance(attribute, Mapping) or len(attribute) != 1:
        return None
    value = next(iter(attribute.values()))
    return None if isinstance(value, (Mapping, list)) or value is None else str(value)


def _attributes(device: Mapping) -> dict[str, str]:
    """A device's attributes under their qualified names (values as text)."""
    raw = device.get("attributes") or {}
    if not isinstance(raw, Mapping):
        return {}
    found = {qualified(str(name)): _value(value) for name, value in raw.items()}
    return {name: value for name, value in found.items() if value is not None}


def _newest(slices: Iterable[Mapping]) -> list[Mapping]:
    """The driver's slices of each pool's newest generation."""
    ours = [s for s in slices if isinstance(s, Mapping) and (s.get("spec") or {}).get("driver") == DRIVER]
    newest: dict[str, int] = {}
    for piece in ours:
        name, generation = _pool(piece)
        newest[name] = max(newest.get(name, generation), generation)
    return [piece for piece in ours if _pool(piece)[1] == newest[_pool(piece)[0]]]


def _pool(piece: Mapping) -> tuple[str, int]:
    """A slice's (pool name, generation); a generation that is no whole number counts as 0."""
    pool = (piece.get("spec") or {}).get("pool") or {}
    generation = pool.get("generation")
    return str(pool.get("name") or ""), generation if isinstance(generation, int) else 0


def dra_nodes(slices: Iterable[Mapping]) -> dict[str, DraNode]:
    """The DRA-managed nodes the Neuron driver's ResourceSlices name, by node name. Never raises."""
    chips: dict[str, dict[int, dict[str, str]]] = {}
    for piece in _newest(slices):
        spec = piece.get("spec") or {}
        node = spec.get("nodeName")
        if not isinstance(node, str) or not node:
            continue
        for device in spec.get("devices") or ():
            chip = chip_of_device(str((device or {}).get("name") or "")) if isinstance(device, Mapping) else None
            if chip is not None:
                chips.setdefault(node, {})[chip] = _attributes(device)
    nodes = {}
    for node, devices in chips.items():
        groups: dict[int, tuple[str, Mapping[int, str]]] = {}
        for size in GROUP_SIZES:
            for attribute in (TOPOLOGY_GROUP_ATTRIBUTES.get(size), DEVICE_GROUP_ATTRIBUTES.get(size)):
                if attribute is None or size in groups:
                    continue
                name = qualified(attribute)
                if all(name in attrs for attrs in devices.values()):
                    groups[size] = (name, MappingProxyType({c: attrs[name] for c, attrs in devices.items()}))
        nodes[node] = DraNode(tuple(sorted(devices)), MappingProxyType(groups))
    return nodes


def usable_chips(dra: DraNode, chips_on_node: int) -> int:
    """How many chips, from chip 0 up, the driver publishes without a gap (a chip beyond a missing
    one is left alone, as the device plugin's highest ids are when it advertises fewer cores)."""
    present = set(dra.chips)
    count = 0
    while count < chips_on_node and count in present:
        count += 1
    return count


def chips_for(cores: int, cores_per_chip: int) -> tuple[int, int]:
    """(chips, wasted cores): the whole chips ``cores`` cores need, and the cores left idle on them."""
    chips = -(-cores // cores_per_chip)
    return chips, chips * cores_per_chip - cores


def lnc_of(instance_type: str | None, cores_per_chip: int) -> int | None:
    """The logical NeuronCore size a claim's config names: trn2 and later only (8 physical cores a
    chip; LNC 2 gives 4 logical cores), None elsewhere (the driver takes no LNC there)."""
    if not instance_type or not instance_type.startswith(("trn2", "trn3")) or cores_per_chip not in (4, 8):
        return None
    return 8 // cores_per_chip
