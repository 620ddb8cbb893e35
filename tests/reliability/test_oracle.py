"""The ``fits-are-placed`` oracle (``oracle.py``) against the placement engine (pure; no cluster).

On random fleets (every Neuron family, allocatable below the topology, managed and foreign pods,
terminating and finished pods) the brute-force oracle and the engine's ``place_one`` must agree on
whether one more replica fits, and every placement the engine makes must be one of the oracle's
valid runs. Then the engine is deliberately broken (one placement rule changed) and the
comparison, and the ``fits-are-placed`` invariant built on the oracle, must notice; an oracle that
calls the engine, as the invariant's used to, notices nothing.
"""

from __future__ import annotations

import copy
import functools
import random

import pytest

from neuronplace.local import manifests
from neuronplace.local.fleet import build_node
from neuronplace.local.reliability import oracle
from neuronplace.local.reliability.invariants import Snapshot, check_fits_are_placed
from neuronplace.placement.fleet import Fleet
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.names import (
    API_VERSION,
    AWS_NEURON_IDS,
    CORES_ANNOTATION,
    ENV_NODE_CORES,
    INFERENCE_LABEL,
    KIND,
    NEURONCORE_RESOURCE,
)
from neuronplace.placement.pods import build_pod
from neuronplace.placement.request import PlacementRequest, ReplicaPlacement, placement_request
from neuronplace.placement.resources import pod_requests
from neuronplace.placement.search import place_one
from neuronplace.placement.status import Problem, build_status
from neuronplace.placement.usage import Usage

# The caller's clock: placement reads none, it is given the time.
NOW = "2026-11-28T10:00:00Z"
NOW_NS = 1_795_860_000_000_000_000

TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
TYPES = ["inf2.48xlarge", "inf2.24xlarge", "inf2.xlarge", "inf1.6xlarge", "trn1.32xlarge", "trn1.2xlarge"]
SIZES = [1, 1, 2, 2, 3, 4, 4, 6, 8, 8, 12, 16, 16, 24, 32]


def _pod(
    name: str, node: str, cores: int, *, managed_range: str | None = None, ids: str | None = None, cpu: int = 0
) -> dict:
    """A pod requesting ``cores`` (and ``cpu`` whole CPUs); with ``managed_range``, one the operator
    made (label, range and its NeuronInference as controller)."""
    metadata: dict = {"name": name, "namespace": "ml", "annotations": {}}
    if managed_range is not None:
        metadata["labels"] = {INFERENCE_LABEL: "other"}
        metadata["annotations"][CORES_ANNOTATION] = managed_range
        metadata["ownerReferences"] = [
            {"apiVersion": API_VERSION, "kind": KIND, "name": "other", "uid": "uid-other", "controller": True}
        ]
    if ids is not None:
        metadata["annotations"][AWS_NEURON_IDS] = ids
    amount = {NEURONCORE_RESOURCE: str(cores)}
    if cpu:
        amount["cpu"] = str(cpu)
    container: dict = {"name": "c", "resources": {"requests": amount, "limits": dict(amount)}}
    if managed_range is not None:
        container["env"] = [{"name": ENV_NODE_CORES, "value": managed_range}]
    return {
        "metadata": metadata,
        "spec": {"nodeName": node, "containers": [container]},
        "status": {"phase": "Running"},
    }


def random_world(rng: random.Random) -> tuple[list[dict], list[dict]]:
    """Nodes and pods: some nodes NotReady, cordoned or with less allocatable than the topology;
    managed pods on random free runs, foreign pods with exact ids or only a count, finished pods."""
    nodes, pods = [], []
    for index in range(rng.randint(1, 4)):
        node = build_node(f"n-{index}", rng.choice(TYPES))
        node["status"]["conditions"] = [{"type": "Ready", "status": "False" if rng.random() < 0.1 else "True"}]
        if rng.random() < 0.1:
            node["spec"]["unschedulable"] = True
        cores = int(node["status"]["allocatable"][NEURONCORE_RESOURCE])
        if rng.random() < 0.15:
            cores = rng.randint(1, cores)
            node["status"]["allocatable"][NEURONCORE_RESOURCE] = str(cores)
        if rng.random() < 0.2:  # a node short of cpu or of pod slots
            node["status"]["allocatable"]["cpu"] = str(rng.choice([2, 8, 40]))
        if rng.random() < 0.1:
            node["status"]["allocatable"]["pods"] = str(rng.randint(1, 4))
        nodes.append(node)
        free = list(range(cores))
        for number in range(rng.randint(0, 8)):
            if not free:
                break
            kind = rng.random()
            name = f"p-{index}-{number}"
            if kind < 0.6:  # managed: a run starting at a free core, as long as the cores stay free
                start = rng.choice(free)
                length = 1
                while length < rng.choice([1, 2, 4, 8]) and start + length in free:
                    length += 1
                text = f"{start}-{start + length - 1}" if length > 1 else str(start)
                cpu = rng.choice([0, 0, 1, 4, 16])
                pods.append(_pod(name, node["metadata"]["name"], length, managed_range=text, cpu=cpu))
                for core in range(start, start + length):
                    free.remove(core)
            elif kind < 0.8:  # foreign with the device plugin's exact ids
                taken = sorted(rng.sample(free, min(len(free), rng.randint(1, 3))))
                pods.append(_pod(name, node["metadata"]["name"], len(taken), ids=",".join(map(str, taken))))
                for core in taken:
                    free.remove(core)
            elif kind < 0.85:  # foreign with only a count: the top free cores
                count = rng.randint(1, min(4, len(free)))
                pods.append(_pod(name, node["metadata"]["name"], count))
                for core in sorted(free)[-count:]:
                    free.remove(core)
            elif kind < 0.88:  # foreign with fewer ids than it requests: those, then the top free cores
                taken = sorted(rng.sample(free, 1))
                pods.append(_pod(name, node["metadata"]["name"], 3, ids=",".join(map(str, taken))))
                free.remove(taken[0])
                for core in sorted(free)[-2:]:
                    free.remove(core)
            elif kind < 0.9:  # hand-made: our label and a range, no owner, no request: holds nothing
                fake = _pod(name, node["metadata"]["name"], 0, managed_range=f"0-{cores - 1}")
                del fake["metadata"]["ownerReferences"]
                pods.append(fake)
            else:  # finished: holds nothing
                finished = _pod(name, node["metadata"]["name"], 2, managed_range="0-1")
                finished["status"]["phase"] = "Succeeded"
                pods.append(finished)
    return nodes, pods


def random_request(rng: random.Random) -> PlacementRequest:
    return PlacementRequest(
        "ml/want",
        rng.choice(SIZES),
        strategy=rng.choice(["BinPack", "Spread"]),
        shape_policy=rng.choice(["Strict", "Strict", "Permissive"]),
        aligned=rng.random() < 0.3,
        tolerations=(TOLERATION,),
        requests=rng.choice([{}, {"cpu": 1000}, {"cpu": 8000, "memory": 2**30}, {"cpu": 30_000}]),
    )


def engine_answer(request: PlacementRequest, nodes: list[dict], pods: list[dict]):
    fleet = Fleet(sorted((inventory_from_node(n) for n in nodes), key=lambda n: n.name))
    ledger = Ledger.from_pods(pods, trust_any_inference=True)
    return place_one(request, 0, fleet, ledger, "ml/want-0", usage=Usage.from_pods(pods))


def disagreements(trials: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    found = []
    for trial in range(trials):
        nodes, pods = random_world(rng)
        request = random_request(rng)
        engine = engine_answer(request, nodes, pods)
        fit = oracle.first_fit(request, nodes, pods)
        placed = isinstance(engine, ReplicaPlacement)
        if placed != (fit is not None):
            found.append(f"trial {trial}: engine {engine}, oracle {fit}, request {request}")
        elif placed:
            node = inventory_from_node(next(n for n in nodes if n["metadata"]["name"] == engine.node))
            free = set(range(node.cores)) - oracle.held_cores(node, pods)
            if engine.cores.start not in oracle.valid_starts(node, request, free):
                found.append(f"trial {trial}: engine placed {engine.node} {engine.cores}, not a valid free run")
    return found


def test_the_oracle_and_the_engine_agree_on_random_fleets():
    assert disagreements(1500, seed=11) == []


def test_the_oracle_follows_each_rule_on_its_own():
    node = inventory_from_node(build_node("t", "trn1.32xlarge"))  # 16 chips x 2 cores, Strict shapes 1/4/8/16
    every = set(range(32))
    assert oracle.valid_starts(node, PlacementRequest("a/b", 6, tolerations=(TOLERATION,)), every) == []
    permissive = PlacementRequest("a/b", 6, shape_policy="Permissive", tolerations=(TOLERATION,))
    assert oracle.valid_starts(node, permissive, every) == list(range(0, 27, 2))  # chip boundaries
    assert oracle.valid_starts(node, PlacementRequest("a/b", 32, tolerations=(TOLERATION,)), every) == [0]
    one_chip = PlacementRequest("a/b", 2, tolerations=(TOLERATION,))
    assert oracle.valid_starts(node, one_chip, {1, 2}) == []  # 1-2 straddles chips 0 and 1
    assert oracle.valid_starts(node, one_chip, {2, 3}) == [2]
    aligned = PlacementRequest("a/b", 8, aligned=True, tolerations=(TOLERATION,))
    assert oracle.valid_starts(node, aligned, every) == [0, 8, 16, 24]


def _chip_blind(cores, topology, count, aligned, strict):
    """A broken engine rule: every run must start on a chip boundary, even a one-core replica
    (so a node whose only free core is an odd one is wrongly refused)."""
    mask = 0
    if strict and not topology.shape_allows(count):
        return 0
    for start in range(0, cores - count + 1, topology.cores_per_chip):
        if not (aligned and start % count):
            mask |= 1 << start
    return mask


def test_a_broken_engine_rule_is_caught_by_the_comparison(monkeypatch):
    monkeypatch.setattr("neuronplace.placement.fleet.allowed_starts", _chip_blind)
    assert disagreements(400, seed=11), "the oracle agreed with an engine that refuses valid runs"


# ml/odd, tolerating the kwok nodes.
_inference = functools.partial(manifests.inference, "odd", namespace="ml", uid="uid-odd", tolerations=(TOLERATION,))


def _engine_oracle_finds_room(snapshot: Snapshot) -> bool:
    """What the invariant used to do: ask the placement engine itself."""
    inference = snapshot.inferences[0]
    request = placement_request(inference, "global")
    return isinstance(engine_answer(request, list(snapshot.nodes), list(snapshot.pods)), ReplicaPlacement)


def test_fits_are_placed_reports_room_a_broken_engine_left_unused(monkeypatch):
    # One inf2.xlarge (2 cores): core 0 held by a foreign pod, core 1 free. Two 1-core replicas.
    node = build_node("n-0", "inf2.xlarge")
    node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    foreign = _pod("foreign", "n-0", 1, ids="0")
    inference = _inference(replicas=1, cores=1)
    monkeypatch.setattr("neuronplace.placement.fleet.allowed_starts", _chip_blind)
    request = placement_request(inference, "global")
    refused = engine_answer(request, [node], [foreign])
    assert not isinstance(refused, ReplicaPlacement), "the broken rule should refuse core 1"
    # The operator (running this engine) would then report Unschedulable with no pod.
    inference["status"] = build_status(inference, [], problem=Problem("Unschedulable", refused.message), now=NOW)
    snapshot = Snapshot([foreign], [node], [inference], ("ml",))
    assert not _engine_oracle_finds_room(snapshot), "an engine-based oracle shares the bug"
    found = check_fits_are_placed(snapshot)
    assert [v.invariant for v in found] == ["fits-are-placed"], found
    assert "fits on n-0 cores 1 now" in found[0].detail, found


def test_fits_are_placed_accepts_an_honest_unschedulable():
    node = build_node("n-0", "inf2.xlarge")
    node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    inference = _inference(replicas=2, cores=2)
    placement = engine_answer(placement_request(inference, "global"), [node], [])
    assert isinstance(placement, ReplicaPlacement)
    pod = build_pod(inference, placement, numbering="global", now_ns=NOW_NS)
    pod["status"] = {"phase": "Running"}
    inference["status"] = build_status(inference, [pod], problem=Problem("Unschedulable", "needs 2 cores"), now=NOW)
    assert check_fits_are_placed(Snapshot([pod], [node], [inference], ("ml",))) == []
    # The same status with the node's cores free again: now a replica fits and it is reported.
    stale = copy.deepcopy(inference)
    assert check_fits_are_placed(Snapshot([], [node], [stale], ("ml",)))


@pytest.mark.parametrize("instance", ["inf2.48xlarge", "trn1.32xlarge"])
def test_counted_foreign_pods_take_the_top_cores(instance):
    node = inventory_from_node(build_node("n", instance))
    held = oracle.held_cores(node, [_pod("f", "n", 3)])
    assert held == {node.cores - 1, node.cores - 2, node.cores - 3}


def _random_pod_spec(rng: random.Random) -> dict:
    """Containers, sidecars, init containers, pod-level resources and overhead, in random mixes."""

    def asks() -> dict:
        resources: dict = {}
        for kind in ("requests", "limits"):
            chosen = {
                r: rng.choice(["1", "250m", "2", "1Gi", "512Mi"]) for r in ("cpu", "memory") if rng.random() < 0.4
            }
            if rng.random() < 0.2:
                chosen["hugepages-2Mi"] = "4Mi"
            if chosen:
                resources[kind] = chosen
        return {"resources": resources}

    spec: dict = {"containers": [{"name": f"c{i}", **asks()} for i in range(rng.randint(1, 3))]}
    inits = []
    for i in range(rng.randint(0, 4)):
        init = {"name": f"i{i}", **asks()}
        if rng.random() < 0.5:
            init["restartPolicy"] = "Always"
        inits.append(init)
    if inits:
        spec["initContainers"] = inits
    if rng.random() < 0.3:
        spec["resources"] = {rng.choice(["requests", "limits"]): {"cpu": "3", "hugepages-2Mi": "8Mi"}}
    if rng.random() < 0.3:
        spec["overhead"] = {"cpu": "100m", "memory": "120Mi"}
    return spec


def test_the_oracle_and_the_engine_agree_on_what_a_pod_requests():
    rng = random.Random(5)
    for trial in range(3000):
        spec = _random_pod_spec(rng)
        asked = {name: value for name, value in oracle.pod_asks({"spec": spec}).items() if value}
        assert asked == pod_requests(spec), (trial, spec)


def test_a_broken_resource_rule_is_caught_by_the_comparison(monkeypatch):
    # An engine that forgets the pods already on a node: it overfills nodes short of cpu.
    monkeypatch.setattr(Usage, "used", lambda usage, node: {})
    assert disagreements(1500, seed=11), "the oracle agreed with an engine that ignores what nodes already run"
