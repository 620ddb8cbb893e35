"""The fleet: a fixed set of nodes, which of them a request may use, and what room each has.

**Eligible nodes** have no problem (cordoned, NotReady, being deleted, unknown topology, no
cores), and every NoSchedule/NoExecute taint is tolerated, the nodeSelector matches and the
required node affinity matches (Kubernetes semantics). A node excluded is counted by the kind of
its exclusion (the kinds below, or a node problem of :mod:`.inventory`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from neuronplace.placement.constraints import affinity_matches, required_terms, taints_tolerated
from neuronplace.placement.fitting import allowed_starts
from neuronplace.placement.health import UNHEALTHY
from neuronplace.placement.inventory import UNKNOWN_TOPOLOGY, NodeInventory
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.request import PlacementRequest
from neuronplace.placement.resources import Amounts, Shortfall, shortfall
from neuronplace.placement.usage import Usage

# Exclusion kinds beyond the node problems of `inventory`.
TAINTS = "taints"
NODE_SELECTOR = "nodeSelector"
AFFINITY = "affinity"
TOO_SMALL = "too small"
SHAPE = "shape"
VOLUMES = "volumes"


# ---- the fleet: nodes plus cached eligibility -------------------------------------------------


@dataclass(frozen=True)
class Candidates:
    """For one set of constraints and one replica shape: which nodes could ever take it.

    ``allowed`` maps each such node to the bitmask of starts its rules allow (chips, shape,
    alignment); ``excluded`` counts the other nodes by reason.
    """

    allowed: dict[str, int]
    excluded: Counter


class Fleet:
    """A fixed set of nodes with per-request eligibility cached: build once, place many times.

    Rebuild it when the nodes change (a plain node list passed to :func:`place` builds a fresh one).
    """

    _CACHE_LIMIT = 1024
    _SHORT_LIMIT = 65536

    def __init__(self, nodes: Sequence[NodeInventory]) -> None:
        self.nodes: tuple[NodeInventory, ...] = tuple(nodes)
        self.by_name: dict[str, NodeInventory] = {node.name: node for node in self.nodes}
        # Nodes with unhealthy Neuron hardware (or settling) → the detectors' words, and when the
        # first settling node is used again (:mod:`.moves`): once per fleet, not per ruling.
        self.unhealthy: dict[str, str] = {n.name: n.problem or "" for n in self.nodes if n.problem_kind == UNHEALTHY}
        self.settles_at: float | None = min(
            (n.settles_at for n in self.nodes if n.settles_at is not None), default=None
        )
        self._eligibility: dict[str, tuple[tuple[str, ...], Counter]] = {}
        self._candidates: dict[tuple, Candidates] = {}
        # (node, resource checks) → (usage, its version of the node) when that node lacked room:
        # a node short of cpu stays short until a pod there changes, and the search would
        # otherwise reach it again on every call.
        self.short: dict[tuple[str, tuple], tuple[Usage, int]] = {}

    def eligible(self, request: PlacementRequest) -> tuple[tuple[str, ...], Counter]:
        """(names of nodes the request's constraints allow, excluded nodes counted by reason)."""
        cached = self._eligibility.get(request._constraints)
        if cached is None:
            if len(self._eligibility) >= self._CACHE_LIMIT:
                self._eligibility.clear()
            cached = self._eligibility[request._constraints] = self._compute(request)
        return cached

    def candidates(self, request: PlacementRequest) -> Candidates:
        strict = request.shape_policy == "Strict"
        key = (request._constraints, request.cores_per_replica, request.aligned, strict)
        cached = self._candidates.get(key)
        if cached is None:
            names, excluded = self.eligible(request)
            excluded = Counter(excluded)
            count = request.cores_per_replica
            allowed = {}
            for name in names:
                node = self.by_name[name]
                topology = node.topology
                assert topology is not None, "an eligible node has a known topology"
                if node.cores < count:
                    excluded[TOO_SMALL] += 1
                elif strict and not topology.shape_allows(count):
                    excluded[SHAPE] += 1
                else:
                    mask = allowed_starts(node.cores, topology, count, request.aligned, strict)
                    if mask:
                        allowed[name] = mask
                    else:  # alignment leaves no start inside the node
                        excluded[TOO_SMALL] += 1
            if len(self._candidates) >= self._CACHE_LIMIT:
                self._candidates.clear()
            cached = self._candidates[key] = Candidates(allowed, excluded)
        return cached

    def _compute(self, request: PlacementRequest) -> tuple[tuple[str, ...], Counter]:
        terms = required_terms(request.affinity)
        selector = request.node_selector
        names = []
        excluded: Counter = Counter()
        for node in self.by_name.values():
            if node.problem is not None:
                excluded[node.problem_kind or UNKNOWN_TOPOLOGY] += 1
            elif node.taints and not taints_tolerated(node.taints, request.tolerations):
                excluded[TAINTS] += 1
            elif selector and any(node.labels.get(k) != v for k, v in selector.items()):
                excluded[NODE_SELECTOR] += 1
            elif terms is not None and not affinity_matches(terms, node):
                excluded[AFFINITY] += 1
            elif any(not affinity_matches(list(group), node) for group in request.volume_terms):
                excluded[VOLUMES] += 1
            else:
                names.append(node.name)
        return tuple(sorted(names)), excluded


def _fleet(nodes: Sequence[NodeInventory] | Fleet) -> Fleet:
    return nodes if isinstance(nodes, Fleet) else Fleet(nodes)


# ---- what a node has room for -----------------------------------------------------------------


def _free_mask(node: NodeInventory, ledger: Ledger) -> int:
    return ((1 << node.cores) - 1) & ~ledger.used_mask(node.name)


def _used(usage: Usage, node: str, pod: str) -> Amounts:
    """What the pods on ``node`` request, less what ``pod`` itself already has counted there (a
    retried placement must not be refused for its own reservation)."""
    used = usage.used(node)
    held = usage.held_by(pod)
    if held is None or held[0] != node:
        return used
    own = held[1]
    return {name: value - own.get(name, 0) for name, value in used.items()}


def _shortfall(request: PlacementRequest, node: NodeInventory, usage: Usage, pod: str) -> Shortfall | None:
    return shortfall(request._checks, node.allocatable, _used(usage, node.name, pod))
