"""Property tests: random fleets, existing pods and request sequences (creates and deletes).

After every step: no core is held by two pods, ranges are contiguous and within the node, the chip,
shape and alignment rules hold, only eligible nodes are used, and a replica is refused exactly when
a brute-force search over every node and start finds no valid placement. When one exists, the
choice is the one the strategy's ordering names (checked by the same brute force). The same
inputs give the same placements, and a ledger rebuilt from the resulting pods equals the live one.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.request import PlacementRequest, ReplicaPlacement, Unplaceable
from neuronplace.placement.search import place, place_one
from support.builders import managed_pod

INSTANCE_TYPES = ["inf2.xlarge", "inf2.24xlarge", "inf1.xlarge", "inf1.6xlarge", "trn1.2xlarge", "trn1.32xlarge"]
TOTAL_CORES = {
    "inf2.xlarge": 2,
    "inf2.24xlarge": 12,
    "inf1.xlarge": 4,
    "inf1.6xlarge": 16,
    "trn1.2xlarge": 2,
    "trn1.32xlarge": 32,
}
PER_CHIP = {
    "inf2.xlarge": 2,
    "inf2.24xlarge": 2,
    "inf1.xlarge": 4,
    "inf1.6xlarge": 4,
    "trn1.2xlarge": 2,
    "trn1.32xlarge": 2,
}
TAINT = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}
SIZES = [1, 2, 3, 4, 5, 6, 8, 12, 16, 32]


@st.composite
def fleets(draw):
    """(node dicts, pods already on them)."""
    count = draw(st.integers(1, 3))
    nodes, pods = [], []
    for index in range(count):
        name = f"n{index}"
        instance_type = draw(st.sampled_from(INSTANCE_TYPES))
        total = TOTAL_CORES[instance_type]
        allocatable = draw(st.sampled_from([total, total, total, max(1, total - 2)]))
        problem = draw(st.sampled_from([None] * 6 + ["cordoned", "NotReady", "taint"]))
        node = {
            "metadata": {"name": name, "labels": {"node.kubernetes.io/instance-type": instance_type}},
            "spec": {"unschedulable": problem == "cordoned", "taints": [TAINT] if problem == "taint" else []},
            "status": {
                "allocatable": {"aws.amazon.com/neuroncore": str(allocatable)},
                "conditions": [{"type": "Ready", "status": "False" if problem == "NotReady" else "True"}],
            },
        }
        nodes.append(node)
        # Existing holders: consecutive segments, each free, managed, foreign with ids or foreign by count.
        core = 0
        while core < allocatable:
            length = draw(st.integers(1, max(1, min(8, allocatable - core))))
            kind = draw(st.sampled_from(["free", "free", "free", "managed", "aws-ids", "count"]))
            pod_name = f"pre-{name}-{core}"
            if kind == "managed":
                pods.append(managed_pod(pod_name, name, f"{core}-{core + length - 1}", "pre"))
            elif kind in ("aws-ids", "count"):
                annotations = {"AWS_NEURON_IDS": ",".join(str(c) for c in range(core, core + length))}
                pods.append(
                    {
                        "metadata": {
                            "name": pod_name,
                            "namespace": "x",
                            "annotations": annotations if kind == "aws-ids" else {},
                        },
                        "spec": {
                            "nodeName": name,
                            "containers": [{"resources": {"limits": {"aws.amazon.com/neuroncore": str(length)}}}],
                        },
                        "status": {"phase": "Running"},
                    }
                )
            core += length
    return nodes, pods


requests = st.builds(
    lambda size, procs, strategy, policy, aligned, tolerate, name: (
        "create",
        PlacementRequest(
            inference=f"default/{name}",
            cores_per_replica=size,
            processes_per_replica=procs if size % procs == 0 else 1,
            strategy=strategy,
            shape_policy=policy,
            aligned=aligned,
            tolerations=({"key": "dedicated", "operator": "Exists"},) if tolerate else (),
        ),
    ),
    st.sampled_from(SIZES),
    st.sampled_from([1, 2]),
    st.sampled_from(["BinPack", "Spread"]),
    st.sampled_from(["Strict", "Permissive"]),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["g1", "g2"]),
)
operations = st.lists(st.one_of(requests, st.tuples(st.just("delete"), st.integers(0, 50))), min_size=1, max_size=25)


# ---- the brute-force oracle --------------------------------------------------------------------


def shape_ok(node, size, request):
    if request.shape_policy != "Strict" or node.instance_type != "trn1.32xlarge":
        return True
    per_chip = PER_CHIP[node.instance_type]
    if size == 1 or size <= per_chip or size == TOTAL_CORES[node.instance_type]:
        return True
    devices = (size + per_chip - 1) // per_chip
    return devices in (1, 4, 8, 16)


def eligible(node, request):
    if node.problem is not None:
        return False
    return not node.taints or bool(request.tolerations)


def valid_starts(node, used, request):
    size = request.cores_per_replica
    per_chip = node.topology.cores_per_chip
    if not eligible(node, request) or not shape_ok(node, size, request):
        return []
    starts = []
    for start in range(node.cores - size + 1):
        span = range(start, start + size)
        if any(core in used for core in span):
            continue
        if size <= per_chip and start // per_chip != (start + size - 1) // per_chip:
            continue
        if size > per_chip and start % per_chip:
            continue
        if request.aligned and start % size:
            continue
        starts.append(start)
    return starts


def run_length(node, used, start):
    low = start
    while low - 1 >= 0 and low - 1 not in used:
        low -= 1
    high = start
    while high + 1 < node.cores and high + 1 not in used:
        high += 1
    return high - low + 1


def oracle_choice(request, nodes, ledger, inference_held):
    """Every valid (node, start), and the one the strategy's ordering prefers."""
    options = {}
    for node in nodes:
        used = ledger.used_cores(node.name)
        starts = valid_starts(node, used, request)
        if starts:
            options[node.name] = (node, used, starts)
    if not options:
        return options, None

    def free(name):
        node, used, _ = options[name]
        return node.cores - len([c for c in used if c < node.cores])

    if request.strategy == "BinPack":
        name = min(options, key=lambda n: (free(n), n))
    else:
        name = min(options, key=lambda n: (inference_held.get((request.inference, n), 0), -free(n), n))
    node, used, starts = options[name]
    start = min(starts, key=lambda s: (run_length(node, used, s), s))
    return options, (name, start)


# ---- the properties ----------------------------------------------------------------------------


def run_sequence(node_dicts, pods, ops, check):
    nodes = [inventory_from_node(n) for n in node_dicts]
    by_name = {n.name: n for n in nodes}
    ledger = Ledger.from_pods(pods, trust_any_inference=True)
    ledger.learn_nodes(nodes)  # so that foreign pods without ids have their assumed cores before the oracle looks
    # Pods that were there before may be deleted too (then foreign pods' assumed cores move).
    live: list[tuple[str, ReplicaPlacement | None, PlacementRequest | None]] = [
        (f"{p['metadata']['namespace']}/{p['metadata']['name']}", None, None) for p in pods
    ]
    inference_held: dict[tuple[str, str], int] = {}
    outcomes = []
    for step, op in enumerate(ops):
        if op[0] == "delete":
            if live:
                pod, placement, request = live.pop(op[1] % len(live))
                ledger.forget(pod)
                if placement is not None:
                    inference_held[(request.inference, placement.node)] -= placement.cores.count
            outcomes.append(("deleted", op[1]))
            continue
        request = op[1]
        pod = f"default/p{step}"
        if check:
            options, expected = oracle_choice(request, nodes, ledger, inference_held)
        result = place_one(request, 0, nodes, ledger, pod)
        outcomes.append(result)
        if check:
            if isinstance(result, Unplaceable):
                assert not options, f"refused although {expected} is valid: {result.message}"
                assert result.message.startswith(f"needs {request.cores_per_replica} contiguous core")
            else:
                assert expected == (result.node, result.cores.start), (expected, result)
                check_placement(result, request, by_name[result.node])
        if isinstance(result, ReplicaPlacement):
            live.append((pod, result, request))
            key = (request.inference, result.node)
            inference_held[key] = inference_held.get(key, 0) + result.cores.count
        if check:
            check_ledger(ledger, nodes)
    return outcomes, ledger, live


def check_placement(result, request, node):
    size = request.cores_per_replica
    per_chip = node.topology.cores_per_chip
    assert result.cores.count == size and result.cores.end < node.cores
    assert [c for part in result.process_cores for c in part.ids] == list(result.cores.ids)
    assert len(result.process_cores) == request.processes_per_replica
    assert result.devices == tuple(range(result.cores.start // per_chip, result.cores.end // per_chip + 1))
    if size <= per_chip:
        assert len(result.devices) == 1
    else:
        assert result.cores.start % per_chip == 0
    offset = result.devices[0] * per_chip
    assert [p.start - offset for p in result.process_cores] == [int(v.split("-")[0]) for v in result.visible_cores]


def check_ledger(ledger, nodes):
    for node in nodes:
        seen: dict[int, str] = {}
        for holding in ledger.holdings(node.name):
            for core in holding.core_ids:
                assert core not in seen, f"core {core} on {node.name} held by {seen[core]} and {holding.pod}"
                seen[core] = holding.pod
            if holding.managed:
                assert holding.cores is not None and holding.cores.end < node.cores
        # The incrementally kept mask agrees with the holdings it summarises.
        assert ledger.used_cores(node.name) == set(seen)
        assert ledger.free_count(node.name) == node.cores - len([c for c in seen if c < node.cores])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets(), operations)
def test_sequences_obey_every_rule_and_match_the_oracle(fleet, ops):
    node_dicts, pods = fleet
    run_sequence(node_dicts, pods, ops, check=True)


@settings(max_examples=100, deadline=None)
@given(fleets(), operations)
def test_same_inputs_same_placements(fleet, ops):
    node_dicts, pods = fleet
    first, _, _ = run_sequence(node_dicts, pods, ops, check=False)
    second, _, _ = run_sequence(node_dicts, pods, ops, check=False)
    assert first == second


@settings(max_examples=100, deadline=None)
@given(fleets(), operations)
def test_ledger_rebuilt_from_pods_equals_the_live_one(fleet, ops):
    node_dicts, pods = fleet
    _, ledger, live = run_sequence(node_dicts, pods, ops, check=False)
    remaining = {pod for pod, _, _ in live}
    kept = [p for p in pods if f"{p['metadata']['namespace']}/{p['metadata']['name']}" in remaining]
    created = [
        managed_pod(pod.split("/")[1], placement.node, str(placement.cores), request.inference.split("/")[1])
        for pod, placement, request in live
        if placement is not None
    ]
    rebuilt = Ledger.from_pods(kept + created, trust_any_inference=True)
    nodes = [inventory_from_node(n) for n in node_dicts]
    rebuilt.learn_nodes(nodes)
    for node in nodes:
        assert rebuilt.used_cores(node.name) == ledger.used_cores(node.name)
        assert rebuilt.free_count(node.name) == ledger.free_count(node.name)


@settings(max_examples=100, deadline=None)
@given(fleets(), st.sampled_from(SIZES), st.integers(1, 5), st.sampled_from(["BinPack", "Spread"]))
def test_place_equals_place_one_in_order(fleet, size, replicas, strategy):
    node_dicts, pods = fleet
    nodes = [inventory_from_node(n) for n in node_dicts]
    request = PlacementRequest(
        inference="default/web", cores_per_replica=size, strategy=strategy, shape_policy="Permissive"
    )
    together = place(
        request, range(replicas), nodes, Ledger.from_pods(pods, trust_any_inference=True), lambda i: f"default/web-{i}"
    )
    ledger = Ledger.from_pods(pods, trust_any_inference=True)
    one_by_one = [place_one(request, i, nodes, ledger, f"default/web-{i}") for i in range(replicas)]
    assert together == one_by_one
