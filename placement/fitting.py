"""Fitting one replica into one node: bitmasks of free cores and of allowed starts. Pure.

Bit ``i`` of a mask stands for node-global core ``i``. ``allowed_starts`` encodes the chip,
device-shape and alignment rules once per (node shape, replica shape); ``best_start`` then picks
the best-fit run among the free ones with a few integer operations, which is what keeps placement
fast on large fleets.
"""

from __future__ import annotations

from neuronplace.placement.topology import Topology

_allowed_cache: dict[tuple, int] = {}


def allowed_starts(cores: int, topology: Topology, count: int, aligned: bool, strict: bool) -> int:
    """Bitmask of the starts at which ``count`` cores may begin on a node (chip, shape, alignment)."""
    key = (cores, topology, count, aligned, strict)
    mask = _allowed_cache.get(key)
    if mask is None:
        mask = 0
        per_chip = topology.cores_per_chip
        if not strict or topology.shape_allows(count):
            for start in range(0, cores - count + 1):
                if aligned and start % count:
                    continue
                if count <= per_chip:
                    if start // per_chip != (start + count - 1) // per_chip:
                        continue
                elif start % per_chip:
                    continue
                mask |= 1 << start
        if len(_allowed_cache) > 4096:
            _allowed_cache.clear()
        _allowed_cache[key] = mask
    return mask


def run_starts(free: int, count: int) -> int:
    """Bitmask of the starts ``s`` with ``s .. s+count-1`` all free."""
    starts = free
    covered = 1
    while covered < count:
        step = min(covered, count - covered)
        starts &= starts >> step
        covered += step
    return starts


def best_start(free: int, count: int, allowed: int) -> int | None:
    """The start of the smallest maximal free run holding a valid start, at its lowest valid start."""
    candidates = run_starts(free, count) & allowed
    if not candidates:
        return None
    if not candidates & (candidates - 1):
        return candidates.bit_length() - 1
    best_length = best = None
    remaining = free
    while remaining:
        low = remaining & -remaining
        above = (remaining + low) & ~remaining
        run = above - low
        inside = candidates & run
        if inside:
            length = above.bit_length() - low.bit_length()
            if best_length is None or length < best_length:
                best_length, best = length, (inside & -inside).bit_length() - 1
                if length == count:
                    break
        remaining &= ~run
    return best


def longest_run(free: int) -> int:
    """Length of the longest run of set bits (0 when none)."""
    best = 0
    remaining = free
    while remaining:
        low = remaining & -remaining
        above = (remaining + low) & ~remaining
        best = max(best, above.bit_length() - low.bit_length())
        remaining &= ~(above - low)
    return best


def largest_aligned_fit(free: int, cores: int, topology: Topology) -> int:
    """The most cores one replica with ``alignedStart`` could get on a node whose free cores are
    ``free`` (0: none): the largest count with a free run at a start :func:`allowed_starts` allows
    (aligned, chip rules, any device shape). A capacity figure: a replica asking more waits."""
    for count in range(min(longest_run(free), cores), 0, -1):
        if run_starts(free, count) & allowed_starts(cores, topology, count, True, False):
            return count
    return 0
