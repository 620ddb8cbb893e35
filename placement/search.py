"""The search: a request + nodes + the ledger → a node and a core range per replica, or why not.

Pure and deterministic. The rules:

- **Contiguous.** A replica always gets one contiguous run of node-global cores.
- **Chips.** A replica that fits in one chip (cores ≤ cores per chip) never straddles a chip
  boundary; a larger one starts on a chip boundary. On a ring (inf1, inf2) any run of devices is
  fine. On the trn1 torus the ``Strict`` shape policy also requires 1, 4, 8 or 16 devices (one core,
  part of one device, or all cores are always fine); ``Permissive`` drops that shape rule.
- **Aligned** requests (collectives) start at a multiple of their core count.
- **Eligible nodes** only (the rules are in :mod:`.fleet`).
- **Resources fit.** Given a :class:`Usage`, a node takes a replica only when its allocatable
  covers the replica pod's requests (``PlacementRequest.requests``) on top of what the pods there
  already request, resource by resource, as kube-scheduler's NodeResourcesFit checks it; the
  placed replica's requests are reserved in the usage at once, like its cores in the ledger.
- **BinPack** (default): the node with the fewest free cores that fits (ties by name); inside it
  the smallest free run that fits, at its lowest valid start. **Spread**: nodes where the
  request's NeuronInference holds the fewest cores first, then the most free cores, then the name;
  inside the node the same best fit.
- **Never two pods on one core.** Each placement is reserved in the ledger at once.
- **Reasons, not exceptions.** A replica that cannot be placed gets an :class:`Unplaceable` with one
  sentence carrying the numbers (:mod:`.reasons`); only a malformed request raises ``ValueError``.

Speed: node free-core bitmasks and a free-count index live in the ledger; eligibility per set of
constraints is cached on a :class:`Fleet`. Pass the same ``Fleet`` to repeated calls to reuse it.
Resource fit changes with every pod, so it is checked only on the nodes the core search reaches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from neuronplace.placement.fitting import best_start
from neuronplace.placement.fleet import Fleet, _fleet, _free_mask, _shortfall
from neuronplace.placement.inventory import NodeInventory
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.reasons import unplaceable_message
from neuronplace.placement.request import PlacementRequest, ReplicaPlacement, Unplaceable
from neuronplace.placement.usage import Usage
from neuronplace.runtime.coreset import CoreRange


def _search(request: PlacementRequest, fleet: Fleet, allowed: dict[str, int], ledger: Ledger, usage, pod):
    """The first node in the strategy's order with a valid start whose resources fit: (name, start) or None."""
    count = request.cores_per_replica
    by_name = fleet.by_name
    checks = request._checks
    own = usage.held_by(pod) if usage is not None else None
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
            return None if _shortfall(request, node, usage, pod) is not None else start
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
        held = ledger.inference_cores(request.inference)
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


def _preferred(request, fleet, allowed, ledger, usage, pod, prefer) -> tuple[str, int] | None:
    name, cores = prefer
    node = fleet.by_name.get(name)
    if node is None or name not in allowed or cores.count != request.cores_per_replica or cores.end >= node.cores:
        return None
    if not allowed[name] >> cores.start & 1:
        return None
    if usage is not None and _shortfall(request, node, usage, pod) is not None:
        return None
    holding = ledger.holding_of(pod)
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
    pod: str,
    prefer: tuple[str, CoreRange] | None = None,
    usage: Usage | None = None,
) -> ReplicaPlacement | Unplaceable:
    """Place one replica as the pod ``pod`` (its pod key) and reserve its cores (and, given
    ``usage``, its requests).

    ``prefer`` keeps a recreated pod on the same cores when they are still free and valid. A pod
    that already holds a matching range keeps it (retries are idempotent). Without ``usage`` only
    cores are placed: nothing else on the nodes is accounted for.
    """
    fleet = _fleet(nodes)
    ledger.learn_nodes(fleet.nodes, token=fleet)
    candidates = fleet.candidates(request)
    if prefer is None:
        holding = ledger.holding_of(pod)
        if holding is not None and holding.managed and holding.cores is not None:
            prefer = (holding.node, holding.cores)
    allowed = candidates.allowed
    choice = _preferred(request, fleet, allowed, ledger, usage, pod, prefer) if prefer is not None else None
    if choice is None:
        choice = _search(request, fleet, allowed, ledger, usage, pod)
    if choice is None:
        return Unplaceable(replica, unplaceable_message(request, fleet, ledger, usage, pod))
    name, start = choice
    cores = CoreRange(start, request.cores_per_replica)
    ledger.reserve(name, cores, pod, inference=request.inference)
    if usage is not None:
        usage.reserve(name, pod, request.requests)
    return _placement(request, replica, fleet.by_name[name], cores)


def place(
    request: PlacementRequest,
    replicas: Sequence[int],
    nodes: Sequence[NodeInventory] | Fleet,
    ledger: Ledger,
    pod_of: Callable[[int], str],
    usage: Usage | None = None,
) -> list[ReplicaPlacement | Unplaceable]:
    """Place each replica ordinal in order, reserving as it goes. Never raises for lack of room."""
    for replica in replicas:
        if not isinstance(replica, int) or isinstance(replica, bool) or replica < 0:
            raise ValueError(f"replica ordinals must be whole numbers >= 0, got {replica!r}")
    fleet = _fleet(nodes)
    return [place_one(request, replica, fleet, ledger, pod_of(replica), usage=usage) for replica in replicas]
