"""Which NeuronCores this process may use, and what ``device_ids`` mean inside it. Never imports torch.

Two of the three index spaces (node-global core ids, container-visible ids, process-local
``device_ids``) meet here:

* ``visible_cores()`` returns the ids this process sees, in the numbering of its container
  (``NEURON_RT_VISIBLE_CORES=7-15`` → ``[7, 8, …, 15]``).
* ``normalize_device_ids()`` turns ``DataParallel(device_ids=…)`` into process-local indices into
  that list: zero-based, so ``nc:0`` is core 7 in the example and ``nc:7`` is core 14, and the
  same code runs unchanged in every process (seed page, device_ids note).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from neuronplace.runtime.coreset import MAX_CORE_ID, NUM_CORES_VAR, VISIBLE_CORES_VAR, parse_core_set

_NC_NAME = re.compile(r"^nc:(\d+)$")


def visible_cores(env: Mapping[str, str] | None = None, backend: str | None = None) -> list[int]:
    """The core ids this process may use.

    ``NEURON_RT_VISIBLE_CORES`` wins when set; else ``NEURON_RT_NUM_CORES=N`` asks the runtime for
    any ``N`` cores, which the process then sees as ``0 .. N-1``; unset or ``0`` means all cores of
    the backend (``backend`` overrides the automatic choice, see ``neuronplace.runtime.backends``).
    Malformed values raise ``ValueError`` naming the variable, the value and what was expected.
    """
    env = os.environ if env is None else env
    visible = env.get(VISIBLE_CORES_VAR)
    if visible is not None:
        try:
            return parse_core_set(visible)
        except ValueError as error:
            raise ValueError(f"{VISIBLE_CORES_VAR}={visible!r} is invalid: {error}") from None
    requested = _parse_num_cores(env.get(NUM_CORES_VAR))
    if requested:
        return list(range(requested))
    # Imported here so the torch-free callers above never load the backends module.
    from neuronplace.runtime.backends import select_backend

    return list(range(select_backend(backend, env=env).total_cores()))


def _parse_num_cores(text: str | None) -> int:
    """``NEURON_RT_NUM_CORES`` as an int; 0 for unset or ``0`` (both mean all cores)."""
    if text is None:
        return 0
    stripped = text.strip()
    if not stripped.isdigit() or not stripped.isascii():
        raise ValueError(
            f"{NUM_CORES_VAR}={text!r} is invalid: expected a non-negative whole number of cores such as '4' "
            "(0 means all cores)"
        )
    count = int(stripped)
    if count > MAX_CORE_ID + 1:
        raise ValueError(f"{NUM_CORES_VAR}={text!r} is invalid: no node has more than {MAX_CORE_ID + 1} cores")
    return count


def normalize_device_ids(device_ids, core_count: int) -> list[int]:
    """``device_ids`` (ints or ``'nc:#'``) as process-local indices in ``0 .. core_count-1``.

    ``None`` means every visible core. The order given is kept (chunk ``i`` goes to
    ``device_ids[i]``). Duplicates, out-of-range and malformed entries raise ``ValueError`` naming
    the entry and the valid range.
    """
    valid = (
        f"valid ids are 0..{core_count - 1} (or 'nc:0'..'nc:{core_count - 1}')"
        if core_count
        else "no cores are visible"
    )
    if device_ids is None:
        return list(range(core_count))
    if isinstance(device_ids, (str, bytes)) or not isinstance(device_ids, Sequence):
        raise ValueError(f"device_ids must be a list of ints or 'nc:#' strings, got {device_ids!r}; {valid}")
    if not device_ids:
        raise ValueError(f"device_ids is empty; pass None for all cores or a list of core indices; {valid}")
    indices: list[int] = []
    for entry in device_ids:
        index = _device_index(entry, valid)
        if not 0 <= index < core_count:
            raise ValueError(
                f"device_ids entry {entry!r} is out of range: this process sees {core_count} core(s), so {valid}; "
                "device_ids are zero-based within the process's NEURON_RT_VISIBLE_CORES"
            )
        if index in indices:
            raise ValueError(f"device_ids entry {entry!r} names core {index} twice in {list(device_ids)!r}; {valid}")
        indices.append(index)
    return indices


def _device_index(entry, valid: str) -> int:
    if isinstance(entry, str):
        match = _NC_NAME.match(entry)
        if not match or not entry.isascii():
            raise ValueError(
                f"device_ids entry {entry!r} is malformed: expected an int or 'nc:#' such as 'nc:0'; {valid}"
            )
        return int(match.group(1))
    # bool is an int subclass, but True as a core id is a bug, not a request for core 1.
    if isinstance(entry, bool) or not hasattr(entry, "__index__"):
        raise ValueError(f"device_ids entry {entry!r} is malformed: expected an int or 'nc:#' such as 'nc:0'; {valid}")
    return entry.__index__()
