"""The ``NEURON_RT_VISIBLE_CORES`` grammar, in both directions. Never imports torch.

Accepted forms (Neuron runtime ≥ 2.16.18): a single id ``3``, an inclusive range ``0-6``, a comma
list ``3,4,5,6`` or a mix ``3-5,6``. Whatever the spelling, the ids must be non-negative and form
one contiguous, increasing run: the runtime rejects ``3,5,6`` ("Neuron cores are not contiguous")
and ``5-3``. The operator formats its ranges with ``format_core_set`` and the runtime parses them
with ``parse_core_set``, so both sides share one definition.

The names of the env variables that carry this contract from the operator's pod to the runtime are
defined here too, for the same reason: one definition that both sides import.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

# The cores a process may use (this grammar), and the Neuron runtime's "any N cores" alternative.
VISIBLE_CORES_VAR = "NEURON_RT_VISIBLE_CORES"
NUM_CORES_VAR = "NEURON_RT_NUM_CORES"
# Which of a pod's P processes this is (0..P-1), and P: set by the operator per container and by
# ``neuronplace.runtime.launch`` per child process.
PROCESS_INDEX_VAR = "NEURONPLACE_PROCESS_INDEX"
PROCESS_COUNT_VAR = "NEURONPLACE_PROCESS_COUNT"
# ``spec.dataParallel`` of the NeuronInference, read by ``DataParallel`` as its defaults.
DP_DIM_VAR = "NEURONPLACE_DP_DIM"
DP_DYNAMIC_BATCHING_VAR = "NEURONPLACE_DP_DYNAMIC_BATCHING"  # "true" / "false"
DP_NUM_WORKERS_VAR = "NEURONPLACE_DP_NUM_WORKERS"

# No instance type has more than 128 cores (trn2.48xlarge at LNC=1); a generous bound still
# catches overflow such as "99999999999999999999" before it turns into a huge range.
MAX_CORE_ID = 4095

# ASCII digits only: "\d" would also accept "٣", which the Neuron runtime does not.
_ITEM = re.compile(r"^([0-9]+)(?:-([0-9]+))?$")


@dataclass(frozen=True, order=True)
class CoreRange:
    """A contiguous run of core ids: ``start`` .. ``start + count - 1``."""

    start: int
    count: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.count < 1:
            raise ValueError(f"core range needs start >= 0 and count >= 1, got start={self.start} count={self.count}")

    @property
    def end(self) -> int:
        """The last id, inclusive."""
        return self.start + self.count - 1

    @property
    def ids(self) -> range:
        return range(self.start, self.start + self.count)

    def overlaps(self, other: CoreRange) -> bool:
        return self.start <= other.end and other.start <= self.end

    def split(self, parts: int) -> list[CoreRange]:
        """Split into ``parts`` equal contiguous ranges (one per process)."""
        if parts < 1 or self.count % parts:
            raise ValueError(f"cannot split {self} ({self.count} cores) into {parts} equal parts")
        size = self.count // parts
        return [CoreRange(self.start + i * size, size) for i in range(parts)]

    def shifted(self, offset: int) -> CoreRange:
        """The same run renumbered by ``-offset`` (global ids → device-local ids)."""
        return CoreRange(self.start - offset, self.count)

    def __str__(self) -> str:
        return str(self.start) if self.count == 1 else f"{self.start}-{self.end}"

    @classmethod
    def parse(cls, text: str) -> CoreRange:
        ids = parse_core_set(text)
        return cls(ids[0], len(ids))


def parse_core_set(text: str) -> list[int]:
    """Parse ``NEURON_RT_VISIBLE_CORES`` into its sorted list of core ids.

    Raises ``ValueError`` naming the text and the rule it breaks.
    """
    if not isinstance(text, str):
        raise ValueError(f"core set must be a string like '0-3', got {text!r} ({type(text).__name__})")
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"core set {text!r} is empty; expected an id, a range 'A-B' or a comma list like '3-5,6'")
    ids: list[int] = []
    for item in stripped.split(","):
        match = _ITEM.fullmatch(item)
        if not match:
            raise ValueError(f"core set {text!r}: item {item!r} is not a non-negative id or an inclusive range 'A-B'")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        for value in (first, last):
            if value > MAX_CORE_ID:
                raise ValueError(f"core set {text!r}: id {value} is larger than the maximum core id {MAX_CORE_ID}")
        if last < first:
            raise ValueError(f"core set {text!r}: range {item!r} is decreasing; write it as '{last}-{first}'")
        ids.extend(range(first, last + 1))
    for previous, current in itertools.pairwise(ids):
        if current != previous + 1:
            raise ValueError(
                f"core set {text!r} is not contiguous and increasing ({previous} is followed by {current}); "
                "the Neuron runtime needs one contiguous run of cores"
            )
    return ids


def format_core_set(ids) -> str:
    """Format a contiguous, increasing run of ids as ``'A'`` or ``'A-B'``.

    Raises ``ValueError`` for an empty, negative, or non-contiguous input.
    """
    values = list(ids)
    if not values:
        raise ValueError("cannot format an empty core set; a process needs at least one core")
    for value in values:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"core ids must be non-negative ints, got {value!r} in {values!r}")
        if value > MAX_CORE_ID:
            raise ValueError(f"core id {value} in {values!r} is larger than the maximum core id {MAX_CORE_ID}")
    for previous, current in itertools.pairwise(values):
        if current != previous + 1:
            raise ValueError(f"core ids {values!r} are not contiguous and increasing ({previous} then {current})")
    return str(CoreRange(values[0], len(values)))
