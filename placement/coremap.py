"""The per-node NeuronCore map as text (pure; shared by ``neuronplace demo`` and ``neuronplace cores``).

One line per node, one character per core grouped by chip: a letter for the pod that holds the
core (explained in a legend under the node), ``.`` for a free core, ``#`` for cores held by a pod
we did not place (foreign) or whose ids are assumed. A node whose claims do not add up (see
:meth:`Ledger.inconsistencies`) gets a line per pod that says why, and so does a pinned foreign pod
that holds nothing because it could not run there ("not holding:"). A node with unhealthy Neuron
hardware (:mod:`.health`) says so in the detectors' words ("unhealthy: ..."), a node advertising less
than its instance type has says what ("degraded: ..."). Example::

    np-inf2-0  inf2.48xlarge  24 cores, 8 free
      AA AA BB BB CC .. .. .. DD DD .. ..
      A ml/bert-inf2-0 0-3   B ml/bert-inf2-1 4-7   C ml/whisper-spread-0 8-9   D default/x-0 16-19
      inconsistent: ml/fake NotOwned (has the inference label, but no known NeuronInference controls it)
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from neuronplace.placement.health import UNHEALTHY
from neuronplace.placement.inventory import NodeInventory
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.names import (
    CLAIM_ANNOTATION_MISMATCH,
    CLAIM_EXCEEDS_NODE,
    CLAIM_GATED,
    CLAIM_IDS_MISMATCH,
    CLAIM_NOT_OWNED,
    CLAIM_OVERLAP,
)

FREE = "."
FOREIGN = "#"
_SYMBOLS = string.ascii_uppercase + string.ascii_lowercase + string.digits
_PROBLEMS = {
    CLAIM_NOT_OWNED: "has the inference label, but no known NeuronInference controls it",
    CLAIM_ANNOTATION_MISMATCH: "its annotations or label disagree with its spec or owner; it holds every core they name",
    CLAIM_IDS_MISMATCH: "AWS_NEURON_IDS lists more or fewer ids than it requests",
    CLAIM_OVERLAP: "another pod lists some of the same cores",
    CLAIM_GATED: "it has scheduling gates: kube-scheduler will not bind it",
    CLAIM_EXCEEDS_NODE: "it asks for more than the node's allocatable: kube-scheduler will never bind it",
}
# Reasons of pods that hold nothing on the node (they could not run there), not of claims that clash.
_NOT_HOLDING = (CLAIM_GATED, CLAIM_EXCEEDS_NODE)


@dataclass(frozen=True)
class NodeMap:
    """One node's cores: ``pods[c]`` is the pod holding core ``c`` (None when free)."""

    name: str
    instance_type: str | None
    cores_per_chip: int
    pods: tuple[str | None, ...]
    exact: tuple[bool, ...]
    problem: str | None
    inconsistent: tuple[tuple[str, str], ...] = ()  # (pod, reason) of claims that do not add up
    unhealthy: str | None = None  # the detectors' words (:mod:`.health`)
    degraded: str | None = None  # what it advertises less of

    @property
    def free(self) -> int:
        return sum(pod is None for pod in self.pods)


def node_maps(inventories: Iterable[NodeInventory], ledger: Ledger) -> list[NodeMap]:
    """Every node with Neuron cores, in name order, with who holds each core."""
    maps = []
    inconsistent: dict[str, list[tuple[str, str]]] = {}
    for found in ledger.inconsistencies():
        inconsistent.setdefault(found.node, []).append((found.pod, found.reason))
    for node in sorted(inventories, key=lambda n: n.name):
        total = node.cores or (node.topology.cores if node.topology else 0)
        if not total:
            continue
        pods: list[str | None] = [None] * total
        exact = [True] * total
        for holding in ledger.holdings(node.name):
            label = holding.pod if holding.managed else f"{holding.pod} (not placed by neuronplace)"
            for core in holding.core_ids:
                if 0 <= core < total:
                    pods[core] = label
                    exact[core] = holding.exact and holding.managed
        per_chip = node.topology.cores_per_chip if node.topology else total
        problems = tuple(inconsistent.get(node.name, ()))
        problem = None if node.problem_kind == UNHEALTHY else node.problem  # said on its own
        maps.append(
            NodeMap(
                node.name,
                node.instance_type,
                per_chip,
                tuple(pods),
                tuple(exact),
                problem,
                problems,
                node.unhealthy,
                node.degraded,
            )
        )
    return maps


def _ranges(cores: Sequence[int]) -> str:
    parts, start = [], None
    for index, core in enumerate(cores):
        if start is None:
            start = core
        if index + 1 == len(cores) or cores[index + 1] != core + 1:
            parts.append(str(start) if start == core else f"{start}-{core}")
            start = None
    return ",".join(parts)


def render(maps: Sequence[NodeMap]) -> str:
    """The text map of ``maps`` (see the module docstring)."""
    if not maps:
        return "no nodes with NeuronCores\n"
    lines = []
    width = max(len(m.name) for m in maps)
    for node in maps:
        symbols: dict[str, str] = {}
        cells = []
        for pod, exact in zip(node.pods, node.exact):
            if pod is None:
                cells.append(FREE)
            elif not exact:
                cells.append(FOREIGN)
            else:
                if pod not in symbols:
                    symbols[pod] = _SYMBOLS[len(symbols) % len(_SYMBOLS)]
                cells.append(symbols[pod])
        chips = ["".join(cells[i : i + node.cores_per_chip]) for i in range(0, len(cells), node.cores_per_chip)]
        notes = (
            node.problem,
            node.unhealthy and f"unhealthy: {node.unhealthy}",
            node.degraded and f"degraded: {node.degraded}",
        )
        note = "".join(f"  ({text})" for text in notes if text)
        lines.append(
            f"{node.name:<{width}}  {node.instance_type or '?'}  {len(node.pods)} cores, {node.free} free{note}"
        )
        lines.append("  " + " ".join(chips))
        legend = []
        for pod, symbol in symbols.items():
            cores = [c for c, o in enumerate(node.pods) if o == pod]
            legend.append(f"{symbol} {pod} {_ranges(cores)}")
        foreign = sorted({o for o, e in zip(node.pods, node.exact) if o is not None and not e})
        for pod in foreign:
            cores = [c for c, o in enumerate(node.pods) if o == pod]
            legend.append(f"{FOREIGN} {pod} {_ranges(cores)}")
        if legend:
            lines.append("  " + "   ".join(legend))
        lines.extend(
            f"  {'not holding' if reason in _NOT_HOLDING else 'inconsistent'}: {pod} {reason} ({_PROBLEMS[reason]})"
            for pod, reason in node.inconsistent
        )
    return "\n".join(lines) + "\n"
