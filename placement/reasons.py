"""Why no node can take a replica now: one sentence carrying the numbers, never an exception.

The sentence says what the replica needs, counts the nodes excluded by kind (taints, nodeSelector,
node problems, too small, ...; given a :class:`Usage`, also the nodes short of a resource), and
otherwise names the largest free run and why it does not do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from neuronplace.placement.fitting import best_start, longest_run
from neuronplace.placement.fleet import (
    AFFINITY,
    NODE_SELECTOR,
    SHAPE,
    TAINTS,
    TOO_SMALL,
    VOLUMES,
    Fleet,
    _fleet,
    _free_mask,
    _shortfall,
)
from neuronplace.placement.health import UNHEALTHY
from neuronplace.placement.inventory import (
    BEING_DELETED,
    BOTH_DEVICE_MANAGERS,
    CORDONED,
    NO_CORES,
    NOT_READY,
    UNKNOWN_TOPOLOGY,
    NodeInventory,
)
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.request import PlacementRequest
from neuronplace.placement.resources import Shortfall, format_amount
from neuronplace.placement.usage import Usage

_EXCLUSION_PHRASES = (
    (TAINTS, "{n} node{s} excluded by taints"),
    (NODE_SELECTOR, "{n} not matching the nodeSelector"),
    (AFFINITY, "{n} not matching the required node affinity"),
    (VOLUMES, "{n} where its volumes cannot be used (volume node affinity or storage class topology)"),
    (CORDONED, "{n} cordoned"),
    (NOT_READY, "{n} NotReady"),
    (UNHEALTHY, "{n} node{s} with unhealthy Neuron hardware"),
    (BEING_DELETED, "{n} being deleted"),
    (UNKNOWN_TOPOLOGY, "{n} of unknown topology"),
    (NO_CORES, "{n} without NeuronCores"),
    (BOTH_DEVICE_MANAGERS, "{n} managed by both the Neuron device plugin and the DRA driver"),
    (TOO_SMALL, "{n} with fewer than {count} cores"),
    (SHAPE, "{n} trn1 torus node{s} where {count} cores is not a 1, 4, 8 or 16-device shape (shapePolicy Strict)"),
)


# Node problems a person must fix on the node itself: the message names the first such node and its
# problem ("unknown instance type 'x1.foo' (set label neuronplace.io/topology)"), not just a count.
_NODE_FIXES = (UNKNOWN_TOPOLOGY, NO_CORES, BOTH_DEVICE_MANAGERS)


def _exclusions(excluded: Counter, count: int, fleet: Fleet) -> str:
    parts = []
    for kind, phrase in _EXCLUSION_PHRASES:
        n = excluded.get(kind, 0)
        if n:
            part = phrase.format(n=n, s="" if n == 1 else "s", count=count)
            if kind in _NODE_FIXES:
                example = min(
                    name
                    for name, node in fleet.by_name.items()
                    if (node.problem_kind or UNKNOWN_TOPOLOGY) == kind and node.problem is not None
                )
                part += f" ({example}: {fleet.by_name[example].problem})"
            elif kind == UNHEALTHY:  # the detectors' words, each once
                words = sorted({node.problem or "" for node in fleet.nodes if node.problem_kind == UNHEALTHY})
                part += f" ({'; '.join(words[:3])}{'; ...' if len(words) > 3 else ''})"
            parts.append(part)
    return ", ".join(parts)


def _resource_exclusions(
    request: PlacementRequest, fleet: Fleet, ledger: Ledger, allowed: dict[str, int], usage: Usage, pod: str
) -> tuple[dict[str, int], str]:
    """(the candidates left once the nodes with a valid free run but too few resources are taken
    out, those nodes counted by the first resource they lack, each kind with its first node's
    numbers). Nodes without the cores are left to the core sentence: that is what they lack first,
    and only nodes with enough free cores are looked at, so a refusal on a full fleet stays cheap."""
    count = request.cores_per_replica
    short: dict[str, list[tuple[str, Shortfall]]] = {}
    for free in range(count, ledger.max_free + 1):
        for name in ledger.nodes_with_free(free):
            if name not in allowed:
                continue
            node = fleet.by_name[name]
            if best_start(_free_mask(node, ledger), count, allowed[name]) is None:
                continue
            lack = _shortfall(request, node, usage, pod)
            if lack is not None:
                short.setdefault(lack.resource, []).append((name, lack))
    lacking = {name for nodes in short.values() for name, _ in nodes}
    fitting = {name: mask for name, mask in allowed.items() if name not in lacking} if lacking else allowed
    parts = []
    for resource, nodes in short.items():
        name, lack = min(nodes)
        free = max(lack.allocatable - lack.used, 0)
        n = len(nodes)
        parts.append(
            f"{n} node{'' if n == 1 else 's'} with insufficient {resource} ({name}: requested "
            f"{format_amount(resource, lack.requested)}, {format_amount(resource, free)} of "
            f"{format_amount(resource, lack.allocatable)} free)"
        )
    return fitting, ", ".join(parts)


def unplaceable_message(
    request: PlacementRequest,
    nodes: Sequence[NodeInventory] | Fleet,
    ledger: Ledger,
    usage: Usage | None = None,
    pod: str = "",
) -> str:
    """One sentence saying why no node can take a replica of ``request`` now, with numbers."""
    fleet = _fleet(nodes)
    ledger.learn_nodes(fleet.nodes, token=fleet)
    count = request.cores_per_replica
    need = f"needs {count} contiguous core{'' if count == 1 else 's'}"
    if request.aligned:
        need += f" starting at a multiple of {count}"
    if not fleet.by_name:
        return f"{need}; there are no nodes"
    candidates = fleet.candidates(request)
    allowed = candidates.allowed
    excluded_text = _exclusions(candidates.excluded, count, fleet)
    if usage is not None:
        allowed, resource_text = _resource_exclusions(request, fleet, ledger, allowed, usage, pod)
        excluded_text = ", ".join(text for text in (excluded_text, resource_text) if text)
    if not allowed:
        return f"{need}; no node can take it: {excluded_text}"
    # The longest free run: walk nodes from most free down and stop once no node can beat it
    # (a run is never longer than the node's free count).
    longest, longest_on = 0, ""
    for free in range(ledger.max_free, 0, -1):
        if free <= longest:
            break
        for name in ledger.nodes_with_free(free):
            if name in allowed:
                length = longest_run(_free_mask(fleet.by_name[name], ledger))
                if length > longest:
                    longest, longest_on = length, name
    keys = allowed.keys()
    free_total = sum(free * len(keys & ledger.nodes_with_free(free)) for free in range(1, ledger.max_free + 1))
    plural = "" if len(allowed) == 1 else "s"
    if longest == 0:
        text = f"{need}; no free cores on the {len(allowed)} node{plural} that could take it"
    elif longest < count:
        text = f"{need}; largest free run is {longest} on {longest_on}"
    else:
        aligned = f" and a start at a multiple of {count}" if request.aligned else ""
        text = (
            f"{need}; largest free run is {longest} on {longest_on}, but no free run fits the chip rules{aligned} "
            "(a replica stays inside one chip, or starts on a chip boundary when it needs more than one)"
        )
    if excluded_text:
        text += f"; {excluded_text}"
    if 0 < longest < count:
        text += f"; {free_total} cores free in total on the {len(allowed)} node{plural} that could take it"
    return text
