"""Instance types → NeuronCore topology (chips, cores per chip, interconnect). Pure data.

Facts (AWS Neuron documentation): inf1 and inf2 connect their chips in a ring, so any contiguous
run of devices works; trn1.32xlarge / trn1n.32xlarge connect 16 chips in a 2D torus and the AWS
scheduler extension only accepts requests of 1, 4, 8 or all 16 devices there ("device group
shapes"); trn2 has 8 physical cores per chip that the runtime groups into logical cores
(LNC=2, the default, gives 4 cores per chip; LNC=1 gives 8).

Unknown instance types are not guessed: a node needs the label or annotation
``neuronplace.io/topology: "<chips>x<coresPerChip>[,ring|torus|single]"`` (see
:func:`parse_topology_override`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from neuronplace.placement.names import TOPOLOGY_OVERRIDE_KEY
from neuronplace.runtime.coreset import CoreRange

INTERCONNECTS = ("ring", "torus", "single")

# The AWS scheduler extension's device-group shapes on the trn1 torus.
TRN1_TORUS_DEVICE_SHAPES = (1, 4, 8, 16)


@dataclass(frozen=True)
class Topology:
    """One node's NeuronCore layout.

    Node-global core ``c`` lives on chip ``c // cores_per_chip``. ``device_shapes``, when set, is
    the tuple of device counts a multi-device request may use under the ``Strict`` shape policy
    (only the trn1 torus has such a rule).
    """

    chips: int
    cores_per_chip: int
    interconnect: str
    device_shapes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.chips < 1 or self.cores_per_chip < 1:
            raise ValueError(
                f"topology needs chips >= 1 and cores_per_chip >= 1, got {self.chips}x{self.cores_per_chip}"
            )
        if self.interconnect not in INTERCONNECTS:
            raise ValueError(f"interconnect {self.interconnect!r} is not one of {', '.join(INTERCONNECTS)}")

    @property
    def cores(self) -> int:
        return self.chips * self.cores_per_chip

    def chip_of(self, core: int) -> int:
        if not 0 <= core < self.cores:
            raise ValueError(f"core {core} is outside 0-{self.cores - 1} on a {self.chips}x{self.cores_per_chip} node")
        return core // self.cores_per_chip

    def devices_of(self, cores: CoreRange) -> tuple[int, ...]:
        """The chip (device) ids that the range touches, in order."""
        return tuple(range(self.chip_of(cores.start), self.chip_of(cores.end) + 1))

    def shape_allows(self, count: int) -> bool:
        """Whether ``count`` cores is a device-group shape the ``Strict`` policy accepts.

        One core, all cores, and any part of a single device are always fine; otherwise the number
        of devices the request needs must be one of ``device_shapes`` (when the topology has any).
        """
        if self.device_shapes is None or count in (1, self.cores) or count <= self.cores_per_chip:
            return True
        devices = -(-count // self.cores_per_chip)
        return devices in self.device_shapes

    def describe(self) -> str:
        return f"{self.chips}x{self.cores_per_chip} {self.interconnect}"


def _single_or(chips: int, interconnect: str) -> str:
    return "single" if chips == 1 else interconnect


def _table() -> dict[str, Topology]:
    rows: list[tuple[tuple[str, ...], int, int, str, tuple[int, ...] | None]] = [
        (("inf1.xlarge", "inf1.2xlarge"), 1, 4, "ring", None),
        (("inf1.6xlarge",), 4, 4, "ring", None),
        (("inf1.24xlarge",), 16, 4, "ring", None),
        (("inf2.xlarge", "inf2.8xlarge"), 1, 2, "ring", None),
        (("inf2.24xlarge",), 6, 2, "ring", None),
        (("inf2.48xlarge",), 12, 2, "ring", None),
        (("trn1.2xlarge",), 1, 2, "torus", None),
        (("trn1.32xlarge", "trn1n.32xlarge"), 16, 2, "torus", TRN1_TORUS_DEVICE_SHAPES),
        (("trn2.3xlarge",), 1, 4, "torus", None),
        (("trn2.48xlarge", "trn2u.48xlarge"), 16, 4, "torus", None),
    ]
    table: dict[str, Topology] = {}
    for names, chips, per_chip, interconnect, shapes in rows:
        for name in names:
            table[name] = Topology(chips, per_chip, _single_or(chips, interconnect), shapes)
    return table


INSTANCE_TOPOLOGIES: dict[str, Topology] = _table()
"""Chips and cores per chip of every Neuron instance type; trn2 at its default LNC=2."""

# Logical NeuronCore config: physical cores per trn2 chip are 8; LNC=2 pairs them.
_TRN2_PHYSICAL_CORES_PER_CHIP = 8


def topology_for(instance_type: str, lnc: int | None = None) -> Topology | None:
    """The topology of a known instance type, or ``None`` when the type is unknown.

    ``lnc`` (1 or 2) changes the cores per chip on trn2; other families ignore it (their LNC is 1).
    """
    base = INSTANCE_TOPOLOGIES.get(instance_type)
    if base is None:
        return None
    if lnc is None or not instance_type.startswith("trn2"):
        return base
    if lnc not in (1, 2):
        raise ValueError(f"LNC must be 1 or 2 on {instance_type}, got {lnc!r}")
    return Topology(base.chips, _TRN2_PHYSICAL_CORES_PER_CHIP // lnc, base.interconnect, base.device_shapes)


_OVERRIDE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*(?:,\s*([a-z]+)\s*)?$")


def parse_topology_override(text: str) -> Topology:
    """Parse ``"<chips>x<coresPerChip>[,ring|torus|single]"`` (e.g. ``"4x2"``, ``"16x2,torus"``).

    Without an interconnect, one chip is ``single`` and more are a ``ring``. Raises ``ValueError``
    naming the text and the expected form.
    """
    match = _OVERRIDE.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(
            f"{TOPOLOGY_OVERRIDE_KEY} {text!r} is not '<chips>x<coresPerChip>[,ring|torus|single]', e.g. '4x2'"
        )
    chips, per_chip = int(match.group(1)), int(match.group(2))
    interconnect = match.group(3) or _single_or(chips, "ring")
    if chips < 1 or per_chip < 1 or chips * per_chip > 4096:
        raise ValueError(
            f"{TOPOLOGY_OVERRIDE_KEY} {text!r}: chips and cores per chip must be >= 1 (at most 4096 cores)"
        )
    if interconnect not in INTERCONNECTS:
        raise ValueError(f"{TOPOLOGY_OVERRIDE_KEY} {text!r}: interconnect must be one of {', '.join(INTERCONNECTS)}")
    return Topology(chips, per_chip, interconnect)
