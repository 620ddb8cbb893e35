"""Who holds which NeuronCores, rebuilt from live pods. Pure; never raises on pod data.

Over 300 lines: every change updates the holdings, the per-node bitmasks and the free-core index
together, so they stay one class.

The truth is the set of live pods. Every pod we manage is controlled by a NeuronInference and
carries its node-global range in its spec (each process container's ``NEURONPLACE_NODE_CORES``), so
a restarted operator rebuilds the same ledger with :meth:`Ledger.from_pods`. Pods in a terminal
phase (Succeeded, Failed) and pods neither bound nor pinned to a node hold nothing. A pod that is
being deleted still holds its cores until it is gone: its process may still be running.

A pod counts as managed only when its controller is a NeuronInference whose UID the ledger trusts
and its spec's range agrees with its own request (the rules, and why a managed pod whose
annotations were edited holds the union, are in :mod:`.claims`): which pods count as ours is kept
by the trust index (:mod:`.trust`), which the ledger asks whenever a pod or a trusted UID changes.

Every other pod that requests neuron resources is foreign, reported by :meth:`Ledger.foreign`, and
holds what it requests:

- the ids in the AWS annotation ``AWS_NEURON_IDS`` ("2,3"; core ids when the pod requests
  ``aws.amazon.com/neuroncore``, device ids when it requests whole devices), all of them, even
  beyond the request: they may really be in use;
- plus, when those are fewer than its request (or absent), the missing count (``neuroncore`` plus
  devices × cores per chip), which we assume sits on the **highest** cores that nothing else holds.
  That keeps the low end of each node free for contiguous ranges, and it is deterministic
  (foreign pods take their cores in pod-key order). The assumption is visible in
  ``Holding.core_ids`` with ``exact=False``.

So a foreign pod never holds fewer cores than it requests, and an assumed core is never one that
someone else holds. A foreign pod that is pinned but not bound holds nothing while kube-scheduler
could never bind it there: with scheduling gates (:mod:`.claims`), or asking for more of any
resource than the node's allocatable (known once the node is learned, :meth:`learn_nodes`); such a
pod is reported with the inconsistencies, and holds what it asks as soon as it could run. What does not add up (a labelled pod nobody trusted, a range or id list that
disagrees with the request, two pods on one core) is reported by :meth:`Ledger.inconsistencies`.

Alongside the holdings the ledger keeps, per node whose core count it has learned
(:meth:`learn_nodes`), a bitmask of held cores and an index of nodes by free core count, so the
allocator can find candidates without scanning the whole fleet.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from neuronplace.placement.claims import Claim, PodClaims, key_of, read_pod
from neuronplace.placement.names import CLAIM_EXCEEDS_NODE, CLAIM_OVERLAP
from neuronplace.placement.resource_claims import is_resource_claim_key, readings, resource_claim_key
from neuronplace.placement.trust import Inconsistency, TrustIndex
from neuronplace.runtime.coreset import CoreRange

# When a node's cores per chip is unknown, a device request is assumed to hold the most cores any
# instance type has per chip (trn2 at LNC=1): over-counting is the safe direction.
_UNKNOWN_CORES_PER_CHIP = 8


@dataclass(frozen=True)
class Holding:
    """One pod's claim on one node's cores.

    ``cores`` is the range when the held ids are known and contiguous, else ``None`` (then
    ``count`` says how many). ``core_ids`` lists the ids treated as unavailable: the listed ones
    and, for a foreign pod with fewer ids than it requests, the ones we assume (``exact=False``).
    ``inference`` is the NeuronInference ("namespace/name") a managed pod belongs to.
    """

    node: str
    cores: CoreRange | None
    count: int
    pod: str
    managed: bool
    inference: str | None = None
    core_ids: tuple[int, ...] = ()
    exact: bool = True


class _NodeState:
    __slots__ = (
        "allocatable",
        "assumed",
        "claims",
        "core_count",
        "cores_per_chip",
        "idle",
        "mask",
        "overlapping",
        "slow",
    )

    def __init__(self) -> None:
        self.claims: dict[str, Claim] = {}
        self.core_count: int | None = None
        self.cores_per_chip: int | None = None
        self.allocatable: Mapping[str, int] | None = None  # the node's allocatable, once learned
        self.idle: dict[str, str] = {}  # pod → why its claim holds nothing (it could not run here)
        self.mask = 0  # held cores (exact and assumed)
        self.assumed: dict[str, tuple[int, ...]] = {}  # pod → assumed ids (foreign pods short of ids)
        self.overlapping: tuple[str, ...] = ()  # pods whose listed cores someone else lists too
        # Set when some claim's ids are not known exactly or two claims overlap: then the mask
        # cannot be updated incrementally and every change recomputes it.
        self.slow = False


def _bits(ids) -> int:
    """Bitmask of a sorted id sequence (a contiguous one is the common, fast case)."""
    if not ids:
        return 0
    if ids[-1] - ids[0] + 1 == len(ids):
        return ((1 << len(ids)) - 1) << ids[0]
    mask = 0
    for core in ids:
        mask |= 1 << core
    return mask


def _ids_of(mask: int) -> list[int]:
    ids = []
    while mask:
        low = mask & -mask
        ids.append(low.bit_length() - 1)
        mask ^= low
    return ids


class Ledger:
    """Who holds which cores on which node. See the module docstring for the accounting rules."""

    def __init__(self, trusted: Iterable[str] = (), *, trust_any_inference: bool = False) -> None:
        """``trusted``: the NeuronInference UIDs whose pods count as ours (more with :meth:`trust`);
        ``trust_any_inference``: any NeuronInference controller counts, for tools with no list of
        the inferences."""
        self._trust = TrustIndex(trusted, trust_any_inference=trust_any_inference)
        self._nodes: dict[str, _NodeState] = {}
        self._node_of_pod: dict[str, str] = {}
        self._inference_cores: dict[str, dict[str, int]] = {}  # inference → node → cores held
        self._free: dict[str, int] = {}  # learned node → free cores
        self._by_free: dict[int, list[str]] = {}  # free count → sorted node names
        self._max_free = 0
        self._learned_token: object | None = None

    # ---- building ----------------------------------------------------------------------------

    @classmethod
    def from_pods(
        cls, pods: Iterable[dict], trusted: Iterable[str] = (), *, trust_any_inference: bool = False
    ) -> Ledger:
        ledger = cls(trusted, trust_any_inference=trust_any_inference)
        for pod in pods:
            ledger.observe(pod)
        return ledger

    def observe(self, pod: dict) -> None:
        """Add or update the claim of one pod (idempotent); a pod that holds nothing is forgotten."""
        key = key_of(pod)
        read = read_pod(pod)
        self._trust.index(key, read)
        self._judge(key, read)

    def forget(self, pod: str) -> None:
        """The pod ``pod`` ("namespace/name") is gone or terminated: its cores are free."""
        self._trust.index(pod, None)
        self._judge(pod, None)

    def observe_claim(self, claim: dict) -> None:
        """Add or update what a Kubernetes ResourceClaim holds (its allocated Neuron chips, keyed
        ``resourceclaim:<ns>/<name>``). An unallocated one leaves a reservation made under its key in
        place (the operator's placement, until the allocation replaces it); a claim whose allocation
        went holds nothing."""
        meta = claim.get("metadata") or {}
        key = resource_claim_key(meta.get("namespace") or "default", meta.get("name") or "")
        read = readings(claim)
        node = self._node_of_pod.get(key)
        if read is None and node is not None and self._nodes[node].claims[key].ids_unit == "core":
            return  # our reservation for it stands until kube-scheduler allocates it
        self._trust.index(key, read)
        self._judge(key, read)

    def forget_claim(self, namespace: str, name: str) -> None:
        """The ResourceClaim ``namespace/name`` is gone: its chips (or its reservation) are free."""
        self.forget(resource_claim_key(namespace, name))

    def trust(self, uid: str) -> None:
        """Pods controlled by the NeuronInference ``uid`` count as ours from now on."""
        if self._trust.trust(uid):
            self._rejudge(uid)

    def distrust(self, uid: str) -> None:
        """The NeuronInference ``uid`` is gone: pods it controlled are foreign from now on."""
        if self._trust.distrust(uid):
            self._rejudge(uid)

    def trusts(self, uid: str | None) -> bool:
        return self._trust.trusts(uid)

    def reserve(self, node: str, cores: CoreRange, pod: str, inference: str | None = None) -> None:
        """Hold ``cores`` on ``node`` for the pod ``pod`` (its pod key) before the pod exists, as a
        replica of ``inference`` ("namespace/name"; the pod itself when not given).

        Raises ``ValueError`` when any of the cores is held by someone else (never two pods on
        one core) or lies beyond the node's usable cores. Re-reserving the same range for the same
        pod changes nothing; a different range for the same pod replaces the old one.
        """
        state = self._nodes.get(node)
        wanted = _bits(cores.ids)
        if state is not None:
            if state.core_count is not None and cores.end >= state.core_count:
                raise ValueError(f"cannot reserve {cores} on {node}: it has cores 0-{state.core_count - 1}")
            own = self._own_mask(pod) if self._node_of_pod.get(pod) == node else 0
            clash = state.mask & wanted & ~own
            if clash:
                holders = sorted(h.pod for h in self.holdings(node) if _bits(h.core_ids) & clash)
                raise ValueError(
                    f"cannot reserve {cores} on {node} for {pod}: core(s) "
                    f"{','.join(map(str, _ids_of(clash)))} held by {', '.join(holders)}"
                )
        if inference is None:
            inference = pod
        self._put(Claim(node, pod, True, inference, tuple(cores.ids), "core", cores.count, 0))

    def learn_nodes(self, nodes: Iterable, token: object | None = None) -> None:
        """Learn each node's usable cores and cores per chip (from ``NodeInventory`` objects).

        Only learned nodes are indexed by free cores and can have foreign pods' unknown ids
        assumed. ``token`` (any object) lets a caller skip relearning the same fleet.
        """
        if token is not None and token is self._learned_token:
            return
        seen = set()
        for inventory in nodes:
            if inventory.topology is None:
                continue
            seen.add(inventory.name)
            state = self._nodes.setdefault(inventory.name, _NodeState())
            if (
                state.core_count != inventory.cores
                or state.cores_per_chip != inventory.topology.cores_per_chip
                or state.allocatable != inventory.allocatable
            ):
                state.core_count = inventory.cores
                state.cores_per_chip = inventory.topology.cores_per_chip
                state.allocatable = inventory.allocatable
                self._resolve(inventory.name)
        for name, state in list(self._nodes.items()):
            if name not in seen and state.core_count is not None:
                state.core_count = None
                state.cores_per_chip = None
                state.allocatable = None
                self._resolve(name)
        self._learned_token = token

    # ---- reading -----------------------------------------------------------------------------

    def holdings(self, node: str) -> list[Holding]:
        state = self._nodes.get(node)
        if state is None:
            return []
        result = [self._holding(state, claim) for pod, claim in state.claims.items() if pod not in state.idle]
        result.sort(key=lambda h: (h.core_ids[0] if h.core_ids else -1, h.pod))
        return result

    def pods(self) -> set[str]:
        """Every pod ("namespace/name") holding or reserving cores (not the ResourceClaims)."""
        return {key for key in self._node_of_pod if not is_resource_claim_key(key)}

    def holds(self, pod: str) -> bool:
        return pod in self._node_of_pod

    def holding_of(self, pod: str) -> Holding | None:
        node = self._node_of_pod.get(pod)
        if node is None or pod in self._nodes[node].idle:
            return None
        state = self._nodes[node]
        return self._holding(state, state.claims[pod])

    def used_cores(self, node: str) -> set[int]:
        state = self._nodes.get(node)
        return set(_ids_of(state.mask)) if state is not None else set()

    def foreign(self) -> list[Holding]:
        """Pods not ours (however they are labelled) that hold neuron resources, by node and pod."""
        result: list[Holding] = []
        for name in sorted(self._nodes):
            result.extend(h for h in self.holdings(name) if not h.managed)
        result.sort(key=lambda h: (h.node, h.pod))
        return result

    def inconsistencies(self) -> list[Inconsistency]:
        """Pods whose claims do not add up, by node and pod (see the module docstring)."""
        found = self._trust.problems()
        for name, state in self._nodes.items():
            found.extend(Inconsistency(name, pod, CLAIM_OVERLAP) for pod in state.overlapping)
            found.extend(Inconsistency(name, pod, reason) for pod, reason in state.idle.items())
        found.sort(key=lambda i: (i.node, i.pod, i.reason))
        return found

    def problem_of(self, pod: str) -> str | None:
        """Why the pod ``pod``'s claim does not add up (a ``CLAIM_*`` reason), None when it does."""
        return self._trust.problem_of(pod)

    def nodes(self) -> list[str]:
        """Nodes on which anything is held."""
        return sorted(name for name, state in self._nodes.items() if state.claims)

    # ---- the allocator's index ---------------------------------------------------------------

    def used_mask(self, node: str) -> int:
        """Held cores on ``node`` as a bitmask (bit ``c`` = core ``c``)."""
        state = self._nodes.get(node)
        return state.mask if state is not None else 0

    def free_count(self, node: str) -> int:
        """Free cores on a learned node (0 for nodes not learned)."""
        return self._free.get(node, 0)

    @property
    def max_free(self) -> int:
        return self._max_free

    def nodes_with_free(self, free: int) -> list[str]:
        """Learned nodes with exactly ``free`` free cores, sorted by name (do not modify)."""
        return self._by_free.get(free, [])

    def inference_cores(self, inference: str) -> Mapping[str, int]:
        """Cores held by the pods of ``inference`` (a NeuronInference "namespace/name"), by node."""
        return self._inference_cores.get(inference, {})

    # ---- internals ---------------------------------------------------------------------------

    def _rejudge(self, uid: str) -> None:
        for pod, read in self._trust.pods_of(uid):
            self._judge(pod, read)

    def _judge(self, pod: str, read: PodClaims | None) -> None:
        claim = self._trust.judge(pod, read)
        if claim is None:
            self._drop(pod)
        else:
            self._put(claim)

    def _drop(self, pod: str) -> None:
        node = self._node_of_pod.pop(pod, None)
        if node is None:
            return
        state = self._nodes[node]
        claim = state.claims.pop(pod)
        self._count_inference(claim, node, -1)
        bits = _complete_bits(claim)
        if bits is not None and not state.slow and pod not in state.idle:
            state.mask &= ~bits
            self._reindex(node)
        else:
            self._resolve(node)

    def _own_mask(self, pod: str) -> int:
        node = self._node_of_pod[pod]
        state = self._nodes[node]
        claim = state.claims[pod]
        return _bits(self._listed_core_ids(state, claim) or ()) | _bits(state.assumed.get(pod, ()))

    def _put(self, claim: Claim) -> None:
        if self._node_of_pod.get(claim.pod) is not None:
            self._drop(claim.pod)
        state = self._nodes.setdefault(claim.node, _NodeState())
        state.claims[claim.pod] = claim
        self._node_of_pod[claim.pod] = claim.node
        self._count_inference(claim, claim.node, +1)
        bits = _complete_bits(claim)
        if bits is not None and not state.slow and not state.mask & bits and (claim.managed or claim.bound):
            state.mask |= bits
            self._reindex(claim.node)
        else:
            self._resolve(claim.node)

    def _count_inference(self, claim: Claim, node: str, sign: int) -> None:
        if claim.inference is None:
            return
        per_node = self._inference_cores.setdefault(claim.inference, {})
        per_node[node] = per_node.get(node, 0) + sign * claim.core_count
        if per_node[node] <= 0:
            del per_node[node]
            if not per_node:
                del self._inference_cores[claim.inference]

    def _listed_core_ids(self, state: _NodeState, claim: Claim) -> tuple[int, ...] | None:
        """The core ids the claim lists (sorted); None when they are device ids and the node's
        cores per chip is unknown."""
        if claim.ids is None:
            return ()
        if claim.ids_unit == "core":
            return claim.ids
        if state.cores_per_chip is None:
            return None
        per_chip = state.cores_per_chip
        return tuple(device * per_chip + i for device in claim.ids for i in range(per_chip))

    def _claimed_count(self, state: _NodeState, claim: Claim) -> int:
        """The cores the pod requests (devices count as whole chips, beside any cores it asks)."""
        return claim.core_count + claim.device_count * (state.cores_per_chip or _UNKNOWN_CORES_PER_CHIP)

    def _why_idle(self, state: _NodeState, claim: Claim) -> str | None:
        """Why an unbound foreign claim cannot run on its node (then it holds nothing), else None."""
        if claim.managed or claim.bound or state.allocatable is None:
            return None
        if any(amount > state.allocatable.get(resource, 0) for resource, amount in claim.requests):
            return CLAIM_EXCEEDS_NODE
        return None

    def _resolve(self, node: str) -> None:
        """Recompute the node's mask: listed ids first, then assume cores for what is missing."""
        state = self._nodes[node]
        mask = twice = 0
        listed: dict[str, int] = {}
        short = []
        state.idle = {}
        for claim in state.claims.values():
            why = self._why_idle(state, claim)
            if why is not None:
                state.idle[claim.pod] = why
                continue
            ids = self._listed_core_ids(state, claim) or ()
            bits = listed[claim.pod] = _bits(ids)
            twice |= mask & bits
            mask |= bits
            if self._claimed_count(state, claim) > len(ids):
                short.append(claim)
        state.assumed = {}
        state.overlapping = tuple(sorted(pod for pod, bits in listed.items() if bits & twice)) if twice else ()
        state.slow = bool(twice) or bool(short)
        for claim in sorted(short, key=lambda c: c.pod):
            wanted = self._claimed_count(state, claim) - listed[claim.pod].bit_count()
            taken: list[int] = []
            if state.core_count is not None:
                core = state.core_count - 1
                while core >= 0 and len(taken) < wanted:
                    if not mask >> core & 1:
                        taken.append(core)
                        mask |= 1 << core
                    core -= 1
            state.assumed[claim.pod] = tuple(sorted(taken))
        state.mask = mask
        self._reindex(node)

    def _reindex(self, node: str) -> None:
        state = self._nodes[node]
        old = self._free.get(node)
        if state.core_count is None:
            new = None
        else:
            new = state.core_count - (state.mask & ((1 << state.core_count) - 1)).bit_count()
        if old == new:
            return
        if old is not None:
            bucket = self._by_free[old]
            bucket.remove(node)
            if not bucket:
                del self._by_free[old]
            del self._free[node]
        if new is not None:
            self._free[node] = new
            insort(self._by_free.setdefault(new, []), node)
            self._max_free = max(self._max_free, new)
        if self._max_free not in self._by_free:
            self._max_free = max(self._by_free, default=0)
        if not state.claims and state.core_count is None:
            del self._nodes[node]

    def _holding(self, state: _NodeState, claim: Claim) -> Holding:
        listed = self._listed_core_ids(state, claim)
        assumed = state.assumed.get(claim.pod, ())
        claimed = self._claimed_count(state, claim)
        exact = listed is not None and len(listed) >= claimed
        ids = tuple(sorted({*(listed or ()), *assumed})) if assumed else tuple(listed or ())
        count = max(len(listed or ()), claimed)
        contiguous = exact and bool(ids) and ids[-1] - ids[0] + 1 == len(ids)
        cores = CoreRange(ids[0], len(ids)) if contiguous else None
        return Holding(claim.node, cores, count, claim.pod, claim.managed, claim.inference, ids, exact)


def _complete_bits(claim: Claim) -> int | None:
    """The claim's cores as a bitmask when its listed core ids cover its request (the common,
    incremental case), else None."""
    if claim.ids is None or claim.ids_unit != "core" or len(claim.ids) < claim.core_count or claim.device_count:
        return None
    return _bits(claim.ids)
