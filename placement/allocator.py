"""The allocator: a request + nodes + the ledger → a node and a core range per replica, or a reason.

Pure and deterministic. The rules:

- **Contiguous.** A replica always gets one contiguous run of node-global cores.
- **Chips.** A replica that fits in one chip (cores ≤ cores per chip) never straddles a chip
  boundary; a larger one starts on a chip boundary. On a ring (inf1, inf2) any run of devices is
  fine. On the trn1 torus the ``Strict`` shape policy also requires 1, 4, 8 or 16 devices (one core,
  part of one device, or all cores are always fine); ``Permissive`` drops that shape rule.
- **Aligned** requests (collectives) start at a multiple of their core count.
- **Eligible nodes** have no problem (cordoned, NotReady, being deleted, unknown topology, no
  cores), and every NoSchedule/NoExecute taint is tolerated, the nodeSelector matches and the
  required node affinity matches (Kubernetes semantics).
- **Resources fit.** Given a :class:`Usage`, a node takes a replica only when its allocatable
  covers the replica pod's requests (``PlacementRequest.requests``) on top of what the pods there
  already request, resource by resource, as kube-scheduler's NodeResourcesFit checks it; the
  placed replica's requests are reserved in the usage at once, like its cores in the ledger.
- **BinPack** (default): the node with the fewest free cores that fits (ties by name); inside it
  the smallest free run that fits, at its lowest valid start. **Spread**: nodes where the
  request's NeuronInference holds the fewest cores first, then the most free cores, then the name;
  inside the node the same best fit.
- **Never two owners.** Each placement is reserved in the ledger at once.
- **Reasons, not exceptions.** A replica that cannot be placed gets an :class:`Unplaceable` with one
  sentence carrying the numbers; only a malformed request raises ``ValueError``.

Speed: node free-core bitmasks and a free-count index live in the ledger; eligibility per set of
constraints is cached on a :class:`Fleet`. Pass the same ``Fleet`` to repeated calls to reuse it.
Resource fit changes with every pod, so it is checked only on the nodes the core search reaches.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from neuronplace.placement.constraints import affinity_matches, required_terms, taints_tolerated, validate_toleration
from neuronplace.placement.fitting import allowed_starts, best_start, longest_run
from neuronplace.placement.inventory import (
    BEING_DELETED,
    CORDONED,
    NO_CORES,
    NOT_READY,
    UNKNOWN_TOPOLOGY,
    NodeInventory,
)
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.names import NUMBERINGS, SHAPE_POLICIES, STRATEGIES
from neuronplace.placement.resources import Amounts, Shortfall, check_items, format_amount, shortfall
from neuronplace.placement.usage import Usage
from neuronplace.runtime.coreset import CoreRange

# Exclusion kinds beyond the node problems of `inventory`.
TAINTS = "taints"
NODE_SELECTOR = "nodeSelector"
AFFINITY = "affinity"
TOO_SMALL = "too small"
SHAPE = "shape"
VOLUMES = "volumes"


@dataclass(frozen=True)
class PlacementRequest:
    """What one NeuronInference asks of every replica. Raises ``ValueError`` when malformed."""

    owner: str
    cores_per_replica: int
    processes_per_replica: int = 1
    strategy: str = "BinPack"
    shape_policy: str = "Strict"
    aligned: bool = False
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping, ...] = ()
    affinity: Mapping | None = None
    numbering: str = "device-local"
    requests: Mapping[str, int] = field(default_factory=dict)
    """What one replica pod requests of its node (``resources.replica_requests``)."""
    volume_terms: tuple[tuple[Mapping, ...], ...] = ()
    """Node-selector term groups the replica's volumes add (``volumes.volume_constraint``): a node
    must match one term of every group."""
    _constraints: str = field(init=False, repr=False, compare=False, default="")
    _checks: tuple[tuple[str, int], ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        for name in ("cores_per_replica", "processes_per_replica"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.cores_per_replica % self.processes_per_replica:
            raise ValueError(
                f"cores_per_replica {self.cores_per_replica} is not divisible by processes_per_replica "
                f"{self.processes_per_replica}: every process needs the same number of cores"
            )
        for name, allowed in (("strategy", STRATEGIES), ("shape_policy", SHAPE_POLICIES), ("numbering", NUMBERINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if not isinstance(self.node_selector, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.node_selector.items()
        ):
            raise ValueError(f"node_selector must map label names to string values, got {self.node_selector!r}")
        tolerations = tuple(self.tolerations or ())
        for toleration in tolerations:
            validate_toleration(toleration)
        object.__setattr__(self, "tolerations", tolerations)
        required_terms(self.affinity)  # validates
        if not isinstance(self.requests, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in self.requests.items()
        ):
            raise ValueError(f"requests must map resource names to whole amounts >= 0, got {self.requests!r}")
        object.__setattr__(self, "_checks", check_items(self.requests))
        for group in self.volume_terms:  # validated as a pod's required node affinity is
            required_terms(
                {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(group)}}}
            )
        constraints = json.dumps(
            [sorted(self.node_selector.items()), list(tolerations), self.affinity, self.volume_terms],
            sort_keys=True,
            default=str,
        )
        object.__setattr__(self, "_constraints", constraints)


@dataclass(frozen=True)
class ReplicaPlacement:
    replica: int
    node: str
    cores: CoreRange
    process_cores: tuple[CoreRange, ...]
    visible_cores: tuple[str, ...]
    devices: tuple[int, ...]


@dataclass(frozen=True)
class Unplaceable:
    replica: int
    reason: str


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


# ---- placing -----------------------------------------------------------------------------------


def _fleet(nodes: Sequence[NodeInventory] | Fleet) -> Fleet:
    return nodes if isinstance(nodes, Fleet) else Fleet(nodes)


def _free_mask(node: NodeInventory, ledger: Ledger) -> int:
    return ((1 << node.cores) - 1) & ~ledger.used_mask(node.name)


def _used(usage: Usage, node: str, owner: str) -> Amounts:
    """What the pods on ``node`` request, less what ``owner`` itself already has counted there (a
    retried placement must not be refused for its own reservation)."""
    used = usage.used(node)
    held = usage.held_by(owner)
    if held is None or held[0] != node:
        return used
    own = held[1]
    return {name: value - own.get(name, 0) for name, value in used.items()}


def _shortfall(request: PlacementRequest, node: NodeInventory, usage: Usage, owner: str) -> Shortfall | None:
    return shortfall(request._checks, node.allocatable, _used(usage, node.name, owner))


def _search(request: PlacementRequest, fleet: Fleet, allowed: dict[str, int], ledger: Ledger, usage, owner):
    """The first node in the strategy's order with a valid start whose resources fit: (name, start) or None."""
    count = request.cores_per_replica
    by_name = fleet.by_name
    checks = request._checks
    own = usage.held_by(owner) if usage is not None else None
    own_node = own[0] if own is not None else None
    short = fleet.short

    def fit(name: str) -> int | None:
        if usage is not None and name != own_node:
            known = short.get((name, checks))
            if known is not None and known[0] is usage and known[1] == usage.version(name):
                return None
        node = by_name[name]
        start = best_start(_free_mask(node, ledger), count, allowed[name])
        if start is None or usage is None:
            return start
        if name == own_node:
            return None if _shortfall(request, node, usage, owner) is not None else start
        # The common case, inline: this runs for every node the search reaches.
        used = usage.used(name)
        allocatable = node.allocatable
        for resource, value in checks:
            if value > allocatable.get(resource, 0) - used.get(resource, 0):
                if len(short) >= Fleet._SHORT_LIMIT:
                    short.clear()
                short[(name, checks)] = (usage, usage.version(name))
                return None
        return start

    if request.strategy == "Spread":
        held = ledger.group_cores(request.owner)
        for free in range(ledger.max_free, count - 1, -1):
            for name in ledger.nodes_with_free(free):
                if name in allowed and name not in held:
                    start = fit(name)
                    if start is not None:
                        return name, start
        for name in sorted(held, key=lambda n: (held[n], -ledger.free_count(n), n)):
            if name in allowed and ledger.free_count(name) >= count:
                start = fit(name)
                if start is not None:
                    return name, start
        return None
    if len(allowed) * 4 < len(fleet.by_name):
        # Few candidate nodes: ordering them directly beats walking the whole index.
        for free, name in sorted((ledger.free_count(n), n) for n in allowed):
            if free >= count:
                start = fit(name)
                if start is not None:
                    return name, start
        return None
    for free in range(count, ledger.max_free + 1):
        for name in ledger.nodes_with_free(free):
            if name in allowed:
                start = fit(name)
                if start is not None:
                    return name, start
    return None


def _preferred(request, fleet, allowed, ledger, usage, owner, prefer) -> tuple[str, int] | None:
    name, cores = prefer
    node = fleet.by_name.get(name)
    if node is None or name not in allowed or cores.count != request.cores_per_replica or cores.end >= node.cores:
        return None
    if not allowed[name] >> cores.start & 1:
        return None
    if usage is not None and _shortfall(request, node, usage, owner) is not None:
        return None
    holding = ledger.holding_of(owner)
    own = 0
    if holding is not None and holding.node == name:
        for core in holding.core_ids:
            own |= 1 << core
    wanted = ((1 << cores.count) - 1) << cores.start
    if (_free_mask(node, ledger) | own) & wanted != wanted:
        return None
    return name, cores.start


def _placement(request: PlacementRequest, replica: int, node: NodeInventory, cores: CoreRange) -> ReplicaPlacement:
    topology = node.topology
    assert topology is not None, "only eligible nodes, which have a known topology, are placed on"
    devices = topology.devices_of(cores)
    processes = tuple(cores.split(request.processes_per_replica))
    offset = 0 if request.numbering == "global" else devices[0] * topology.cores_per_chip
    visible = tuple(str(part.shifted(offset)) for part in processes)
    return ReplicaPlacement(replica, node.name, cores, processes, visible, devices)


def place_one(
    request: PlacementRequest,
    replica: int,
    nodes: Sequence[NodeInventory] | Fleet,
    ledger: Ledger,
    owner: str,
    prefer: tuple[str, CoreRange] | None = None,
    usage: Usage | None = None,
) -> ReplicaPlacement | Unplaceable:
    """Place one replica for the pod ``owner`` and reserve its cores (and, given ``usage``, its
    requests).

    ``prefer`` keeps a recreated pod on the same cores when they are still free and valid. An
    owner that already holds a matching range keeps it (retries are idempotent). Without ``usage``
    only cores are placed: nothing else on the nodes is accounted for.
    """
    fleet = _fleet(nodes)
    ledger.learn_nodes(fleet.nodes, token=fleet)
    candidates = fleet.candidates(request)
    if prefer is None:
        holding = ledger.holding_of(owner)
        if holding is not None and holding.managed and holding.cores is not None:
            prefer = (holding.node, holding.cores)
    allowed = candidates.allowed
    choice = _preferred(request, fleet, allowed, ledger, usage, owner, prefer) if prefer is not None else None
    if choice is None:
        choice = _search(request, fleet, allowed, ledger, usage, owner)
    if choice is None:
        return Unplaceable(replica, unplaceable_reason(request, fleet, ledger, usage, owner))
    name, start = choice
    cores = CoreRange(start, request.cores_per_replica)
    ledger.reserve(name, cores, owner, group=request.owner)
    if usage is not None:
        usage.reserve(name, owner, request.requests)
    return _placement(request, replica, fleet.by_name[name], cores)


def place(
    request: PlacementRequest,
    replicas: Sequence[int],
    nodes: Sequence[NodeInventory] | Fleet,
    ledger: Ledger,
    owner_of: Callable[[int], str],
    usage: Usage | None = None,
) -> list[ReplicaPlacement | Unplaceable]:
    """Place each replica ordinal in order, reserving as it goes. Never raises for lack of room."""
    for replica in replicas:
        if not isinstance(replica, int) or isinstance(replica, bool) or replica < 0:
            raise ValueError(f"replica ordinals must be whole numbers >= 0, got {replica!r}")
    fleet = _fleet(nodes)
    return [place_one(request, replica, fleet, ledger, owner_of(replica), usage=usage) for replica in replicas]


# ---- reasons -----------------------------------------------------------------------------------

_EXCLUSION_PHRASES = (
    (TAINTS, "{n} node{s} excluded by taints"),
    (NODE_SELECTOR, "{n} not matching the nodeSelector"),
    (AFFINITY, "{n} not matching the required node affinity"),
    (VOLUMES, "{n} where its volumes cannot be used (volume node affinity or storage class topology)"),
    (CORDONED, "{n} cordoned"),
    (NOT_READY, "{n} NotReady"),
    (BEING_DELETED, "{n} being deleted"),
    (UNKNOWN_TOPOLOGY, "{n} of unknown topology"),
    (NO_CORES, "{n} without NeuronCores"),
    (TOO_SMALL, "{n} with fewer than {count} cores"),
    (SHAPE, "{n} trn1 torus node{s} where {count} cores is not a 1, 4, 8 or 16-device shape (shapePolicy Strict)"),
)


# Node problems a person must fix on the node itself: the reason names the first such node and its
# problem ("unknown instance type 'x1.foo' (set label neuronplace.io/topology)"), not just a count.
_NODE_FIXES = (UNKNOWN_TOPOLOGY, NO_CORES)


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
            parts.append(part)
    return ", ".join(parts)


def _resource_exclusions(
    request: PlacementRequest, fleet: Fleet, ledger: Ledger, allowed: dict[str, int], usage: Usage, owner: str
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
            lack = _shortfall(request, node, usage, owner)
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


def unplaceable_reason(
    request: PlacementRequest,
    nodes: Sequence[NodeInventory] | Fleet,
    ledger: Ledger,
    usage: Usage | None = None,
    owner: str = "",
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
        allowed, resource_text = _resource_exclusions(request, fleet, ledger, allowed, usage, owner)
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
