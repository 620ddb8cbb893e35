"""Neuron hardware health: unhealthy and degraded nodes in the inventory, the refusal that counts
them, the settle window the operator remembers, and moving replicas off within maxUnavailable."""

from __future__ import annotations

import copy
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuronplace.operator.cache import Cache
from neuronplace.operator.node_health import NodeHealth
from neuronplace.operator.settings import OperatorSettings
from neuronplace.placement.health import (
    UNHEALTHY,
    degraded_words,
    parse_unhealthy_conditions,
    settled,
    unhealthy_words,
    watched,
)
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.moves import MOVED, budget, max_unavailable_error
from neuronplace.placement.names import (
    CONDITION_HEALTHY,
    REASON_KEPT_ON_UNHEALTHY_NODES,
    REASON_MOVING_REPLICAS,
    REASON_NO_ROOM_TO_MOVE,
    REASON_NO_UNHEALTHY_NODES,
)
from neuronplace.placement.reasons import unplaceable_message
from neuronplace.placement.request import placement_request
from neuronplace.placement.ruling import Rules
from neuronplace.placement.status import build_status
from neuronplace.placement.topology import topology_for
from neuronplace.placement.validation import validate
from support import builders

NOW = dt.datetime(2026, 12, 6, 12, 0, 0, tzinfo=dt.UTC)
HBM = "NeuronHasError_HBM_UNCORRECTABLE_ERROR"


def web(**kwargs) -> dict:
    """default/web as the API server holds it."""
    return builders.inference(
        "web",
        namespace="default",
        uid=builders.inference_uid("web"),
        generation=1,
        created="2026-12-01T00:00:00Z",
        **kwargs,
    )


def roomy(name: str) -> dict:
    """An empty, Ready inf2.48xlarge (24 cores) with room for pods."""
    built = builders.node(name)
    built["status"]["allocatable"].update({"pods": "110", "cpu": "192", "memory": "768Gi"})
    return built


def sick(node: dict, type_="NeuronHealth", status="True", reason=HBM) -> dict:
    node = copy.deepcopy(node)
    node["status"]["conditions"].append({"type": type_, "status": status, "reason": reason})
    return node


# ---- the signals ------------------------------------------------------------------------------------


def test_both_detectors_polarities_make_a_node_unhealthy_in_their_own_words():
    node = builders.node("a")
    assert unhealthy_words(node) is None
    assert unhealthy_words(sick(node)) == f"NeuronHealth: {HBM}"
    assert unhealthy_words(sick(node, status="False", reason="NeuronHasNoError")) is None
    monitored = sick(node, "AcceleratedHardwareReady", "False", "NeuronHBMUncorrectableError")
    assert unhealthy_words(monitored) == "AcceleratedHardwareReady: NeuronHBMUncorrectableError"
    assert unhealthy_words(sick(node, "AcceleratedHardwareReady", "True", "Ready")) is None
    inventory = inventory_from_node(sick(node))
    assert inventory.problem_kind == UNHEALTHY and inventory.unhealthy == f"NeuronHealth: {HBM}"
    assert inventory.cores == 24, "its cores are still counted; it only takes no new replica"


def test_other_detectors_conditions_come_from_the_setting():
    extra = parse_unhealthy_conditions(" GpuProblem=True , NeuronOK=False")
    assert extra == (("GpuProblem", "True"), ("NeuronOK", "False"))
    node = sick(builders.node("a"), "NeuronOK", "False", "")
    assert inventory_from_node(node).unhealthy is None
    assert inventory_from_node(node, unhealthy_conditions=watched(extra)).unhealthy == "NeuronOK: False"
    assert parse_unhealthy_conditions("") == ()
    for bad in ("NeuronOK", "NeuronOK=false", "=True", "Neuron OK=True", "A=True,B=Maybe"):
        with pytest.raises(ValueError) as raised:
            parse_unhealthy_conditions(bad)
        assert repr(bad) in str(raised.value) and "Type=Status" in str(raised.value)
    with pytest.raises(ValueError, match="Type=Status"):
        OperatorSettings(unhealthy_conditions="NeuronHealth")
    env = OperatorSettings.from_env(
        {"NEURONPLACE_UNHEALTHY_CONDITIONS": "X=True", "NEURONPLACE_HEALTH_SETTLE_SECONDS": "5"}
    )
    assert env.health_conditions()[-1] == ("X", "True") and env.health_settle_seconds == 5.0
    with pytest.raises(ValueError, match="health_settle_seconds"):
        OperatorSettings(health_settle_seconds=0)


def test_lowered_allocatable_is_degraded_and_no_allocatable_is_not():
    inf2 = topology_for("inf2.48xlarge")
    assert degraded_words({"aws.amazon.com/neuroncore": "24"}, inf2) is None
    assert degraded_words({"aws.amazon.com/neuroncore": "22"}, inf2) == "aws.amazon.com/neuroncore allocatable 22 of 24"
    assert degraded_words({"aws.amazon.com/neuron": "11"}, inf2) == "aws.amazon.com/neuron allocatable 11 of 12"
    assert degraded_words({}, inf2) is None, "a DRA-managed node advertises no Neuron allocatable"
    lowered = builders.node("a", cores=22)
    inventory = inventory_from_node(lowered)
    assert inventory.degraded == "aws.amazon.com/neuroncore allocatable 22 of 24" and inventory.problem is None
    assert inventory_from_node(builders.node("b")).degraded is None


def test_the_refusal_counts_unhealthy_nodes_in_the_detectors_words():
    nodes = [inventory_from_node(sick(builders.node(name))) for name in ("a", "b")]
    nodes.append(inventory_from_node(builders.node("c", ready=False)))
    request = placement_request(web(replicas=1, cores=2), "device-local")
    message = unplaceable_message(request, nodes, Ledger())
    assert f"2 nodes with unhealthy Neuron hardware (NeuronHealth: {HBM})" in message, message
    assert "1 NotReady" in message


# ---- settling -------------------------------------------------------------------------------------


def test_a_node_healthy_again_settles_before_it_is_used_and_flapping_keeps_it_out():
    memory = NodeHealth(settle_seconds=10)
    healthy, unhealthy = (inventory_from_node(n) for n in (builders.node("a"), sick(builders.node("a"))))
    assert memory.observe(healthy, 0).problem is None, "healthy at the start: used at once"
    assert memory.observe(unhealthy, 1).problem_kind == UNHEALTHY
    seen = memory.observe(healthy, 2)
    assert seen.problem_kind == UNHEALTHY and seen.settles_at == 12 and "healthy again" in (seen.problem or "")
    assert memory.settled_by(11) == [] and memory.settled_by(12) == ["a"]
    for flap, at in ((unhealthy, 5), (healthy, 7), (unhealthy, 9), (healthy, 11)):
        memory.observe(flap, at)
    assert memory.seen("a", 20).problem_kind == UNHEALTHY, "the window starts at the last turn to healthy"
    assert memory.seen("a", 21).problem is None and memory.settled_by(21) == []
    assert settled(healthy, "x", None, 10, 0) is healthy


# ---- moves ---------------------------------------------------------------------------------------


def test_max_unavailable_counts_and_percents():
    assert budget(1, 4) == 1 and budget(3, 4) == 3 and budget("50%", 4) == 2 and budget("10%", 4) == 1
    assert max_unavailable_error(2) is None and max_unavailable_error("100%") is None
    for bad in (0, -1, True, "0%", "101%", "5", "x%", 1.5):
        assert "maxUnavailable" in (max_unavailable_error(bad) or ""), bad
    spec = web()["spec"]
    for unhealthy, expected in (
        ({"action": "Evict"}, "action must be one of Move, Keep"),
        ({"maxUnavailable": 0}, "maxUnavailable"),
    ):
        bad = {**web(), "spec": {**spec, "placement": {"unhealthyNodes": unhealthy}}}
        assert expected in (validate(bad) or ""), unhealthy


class World:
    """The operator's cache over two (or more) inf2.48xlarge nodes and one inference whose replicas
    run there, bound and ready, as a cluster shows them after the operator placed them."""

    def __init__(self, replicas=4, cores=12, nodes=("a", "b", "c"), placement=None, settle=30.0):
        self.cache = Cache(health_settle_seconds=settle)
        self.nodes = {name: roomy(name) for name in nodes}
        for node in self.nodes.values():
            self.cache.apply_node("ADDED", node)
        self.inference = web(replicas=replicas, cores=cores, **(placement or {}))
        self.key = self.cache.apply_inference("ADDED", self.inference)
        self.pods: dict[str, dict] = {}
        self.rule()

    def set_node(self, name, node):
        self.nodes[name] = node
        self.cache.apply_node("MODIFIED", node)

    def rule(self, ready=True):
        """One ruling; its creations become bound (and ready) pods, its deletions go."""
        ruled = self.cache.rule(self.key, Rules(), NOW, {}, None)
        assert ruled is not None
        ruling = ruled[1]
        for deletion in ruling.deletions:
            self.cache.apply_pod("DELETED", self.pods.pop(deletion.pod))
        for creation in ruling.creations:
            pod = copy.deepcopy(creation.pod)
            pod["metadata"]["uid"] = f"pod-{pod['metadata']['name']}"
            pod["spec"]["nodeName"] = creation.placement.node
            conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
            pod["status"] = {"phase": "Running", "conditions": conditions}
            self.pods[pod["metadata"]["name"]] = pod
            self.cache.apply_pod("ADDED", pod)
        self.cache.settle(self.key, [c.placement.replica for c in ruling.creations])
        return ruling

    def on(self, node):
        return sorted(name for name, pod in self.pods.items() if pod["spec"]["nodeName"] == node)


def test_replicas_on_an_unhealthy_node_move_one_at_a_time_and_never_back_to_it():
    world = World()  # BinPack, 12 of 24 cores: two replicas on a, two on b
    assert world.on("a") == ["web-0", "web-1"] and world.on("b") == ["web-2", "web-3"]
    world.set_node("a", sick(world.nodes["a"]))
    first = world.rule()
    assert [d.reason for d in first.deletions] == [MOVED] and first.creations == ()
    assert first.deletions[0].message == (
        f"replica 0 (pod web-0) on node a: NeuronHealth: {HBM}; moving it to a healthy node"
    )
    assert first.deletions[0].cause == HBM
    assert first.health is not None and first.health.reason == REASON_MOVING_REPLICAS
    # The next ruling places replica 0 (not on a) and moves nothing: one replica is down.
    second = world.rule(ready=False)
    assert [c.placement.node for c in second.creations] == ["c"] and second.deletions == ()
    assert "wait (maxUnavailable 1: 1 of 4 down)" in (second.health.message if second.health else "")
    world.pods["web-0"]["status"]["conditions"][0]["status"] = "True"
    world.cache.apply_pod("MODIFIED", world.pods["web-0"])
    third = world.rule()
    assert [d.pod for d in third.deletions] == ["web-1"]
    fourth = world.rule()
    assert [c.placement.node for c in fourth.creations] == ["c"]
    assert world.on("a") == [] and world.rule().health is None


def test_max_unavailable_two_moves_both_at_once_and_keep_moves_none():
    both = World(placement={"unhealthyNodes": {"maxUnavailable": "50%"}})
    both.set_node("a", sick(both.nodes["a"], "AcceleratedHardwareReady", "False", "NeuronDMAError"))
    assert sorted(d.pod for d in both.rule().deletions) == ["web-0", "web-1"]
    kept = World(placement={"unhealthyNodes": {"action": "Keep"}})
    kept.set_node("a", sick(kept.nodes["a"]))
    ruling = kept.rule()
    assert ruling.deletions == () and ruling.health is not None
    assert ruling.health.reason == REASON_KEPT_ON_UNHEALTHY_NODES and "replica 0 on a" in ruling.health.message


def test_no_room_to_move_keeps_the_replicas_and_says_why():
    world = World(nodes=("a", "b"))
    world.set_node("a", sick(world.nodes["a"]))
    ruling = world.rule()
    assert ruling.deletions == () and ruling.health is not None and ruling.health.reason == REASON_NO_ROOM_TO_MOVE
    assert "replica 0 on a" in ruling.health.message and "with unhealthy Neuron hardware" in ruling.health.message
    assert ruling.waiting_for_room is True
    assert world.cache.ledger.holding_of("default/web-0#move") is None, "the trial reservation is given back"


def test_a_replica_down_elsewhere_holds_the_moves_and_a_not_ready_one_moves_anyway():
    world = World()
    world.pods["web-2"]["status"]["conditions"][0]["status"] = "False"
    world.cache.apply_pod("MODIFIED", world.pods["web-2"])
    world.set_node("a", sick(world.nodes["a"]))
    assert world.rule().deletions == ()
    world.pods["web-1"]["status"]["conditions"][0]["status"] = "False"
    world.cache.apply_pod("MODIFIED", world.pods["web-1"])
    assert [d.pod for d in world.rule().deletions] == ["web-1"], "it serves nothing: moving it costs nothing"


def test_the_settle_window_requeues_a_waiting_ruling_at_its_end():
    world = World(nodes=("a", "b"), settle=1000.0)
    world.set_node("a", sick(world.nodes["a"]))
    world.set_node("a", roomy("a"))
    world.cache.apply_inference("MODIFIED", {**world.inference, "spec": {**world.inference["spec"], "replicas": 5}})
    ruling = world.rule()
    assert [r for r, _ in ruling.unplaceable] == [4]
    assert ruling.requeue_after is not None and ruling.requeue_after > 900


@settings(max_examples=60, deadline=None)
@given(
    sick_nodes=st.sets(st.sampled_from(["a", "b", "c", "d"]), min_size=1),
    not_ready=st.sets(st.integers(0, 5)),
    max_unavailable=st.one_of(st.integers(1, 6), st.sampled_from(["1%", "34%", "50%", "100%"])),
)
def test_moves_never_take_more_than_max_unavailable_down(sick_nodes, not_ready, max_unavailable):
    world = World(replicas=6, cores=12, nodes=("a", "b", "c", "d", "e", "f"))
    for ordinal in not_ready:
        world.pods[f"web-{ordinal}"]["status"]["conditions"][0]["status"] = "False"
        world.cache.apply_pod("MODIFIED", world.pods[f"web-{ordinal}"])
    world.inference["spec"]["placement"]["unhealthyNodes"] = {"maxUnavailable": max_unavailable}
    world.cache.apply_inference("MODIFIED", world.inference)
    for name in sick_nodes:
        world.set_node(name, sick(world.nodes[name]))
    ruling = world.rule()
    moved = {d.pod for d in ruling.deletions if d.reason == MOVED}
    ready_moved = {p for p in moved if int(p.rsplit("-", 1)[1]) not in not_ready}
    assert len(ready_moved) <= max(0, budget(max_unavailable, 6) - len(not_ready))
    on_sick = {p for p, pod in world.pods.items() if pod["spec"]["nodeName"] in sick_nodes} | moved
    assert moved <= on_sick
    assert (ruling.health is None) == (not on_sick)


def test_the_healthy_condition_is_false_while_given_and_true_once_it_is_gone():
    from neuronplace.placement.status import Problem

    inference = web(replicas=0)
    status = build_status(inference, [], unhealthy=Problem(REASON_MOVING_REPLICAS, "moving"), now="t1")
    healthy = next(c for c in status["conditions"] if c["type"] == CONDITION_HEALTHY)
    assert healthy["status"] == "False" and healthy["reason"] == REASON_MOVING_REPLICAS
    assert all(c["type"] != CONDITION_HEALTHY for c in build_status(inference, [], now="t1")["conditions"])
    again = build_status({**inference, "status": status}, [], now="t2")
    healthy = next(c for c in again["conditions"] if c["type"] == CONDITION_HEALTHY)
    assert healthy["status"] == "True" and healthy["reason"] == REASON_NO_UNHEALTHY_NODES
    assert healthy["lastTransitionTime"] == "t2"


def test_the_core_map_marks_unhealthy_and_degraded_nodes():
    from neuronplace.placement.coremap import node_maps, render

    inventories = [inventory_from_node(sick(roomy("a"))), inventory_from_node(builders.node("b", cores=22))]
    text = render(node_maps(inventories, Ledger()))
    assert f"a  inf2.48xlarge  24 cores, 24 free  (unhealthy: NeuronHealth: {HBM})\n" in text, text
    assert "b  inf2.48xlarge  22 cores, 22 free  (degraded: aws.amazon.com/neuroncore allocatable 22 of 24)\n" in text


def test_metrics_name_unhealthy_nodes_and_count_moves_by_reason():
    from prometheus_client import generate_latest

    from neuronplace.operator.metrics import OperatorMetrics, snapshot_ledger

    memory = NodeHealth(settle_seconds=10)
    memory.observe(inventory_from_node(sick(roomy("b"))), 0)
    inventories = {
        "a": inventory_from_node(sick(roomy("a"), "AcceleratedHardwareReady", "False", "NeuronDMAError")),
        "b": memory.observe(inventory_from_node(roomy("b")), 1),
        "c": inventory_from_node(roomy("c")),
    }
    metrics = OperatorMetrics()
    metrics.watch_ledger(lambda: snapshot_ledger(Ledger(), inventories))
    metrics.moved(HBM)
    text = generate_latest(metrics.registry).decode()
    assert 'neuronplace_node_unhealthy{node="a",reason="NeuronDMAError"} 1.0' in text
    assert 'neuronplace_node_unhealthy{node="b",reason="Settling"} 1.0' in text
    assert 'node="c"' not in "".join(line for line in text.splitlines() if "unhealthy" in line)
    assert f'neuronplace_replica_moves_total{{reason="{HBM}"}} 1.0' in text


def test_a_node_turning_unhealthy_or_healthy_looks_at_the_inferences_with_pods_there_at_once():
    world = World()
    assert world.cache.apply_node("MODIFIED", sick(world.nodes["a"])) == {world.key}
    assert world.cache.apply_node("MODIFIED", sick(world.nodes["a"])) == set(), "no change, nothing to look at"
    assert world.cache.apply_node("MODIFIED", world.nodes["c"]) == set()


def test_the_brute_force_oracle_agrees_that_an_unhealthy_node_takes_nothing():
    from neuronplace.local.reliability.oracle import first_fit

    request = placement_request(web(replicas=1, cores=2), "global")
    assert first_fit(request, [sick(roomy("a"))], []) is None
    assert first_fit(request, [sick(roomy("a")), roomy("b")], []).node == "b"


def test_changing_unhealthy_nodes_rolls_nothing_out():
    from neuronplace.placement.pods import template_hash

    spec = web()["spec"]
    moved = {**spec, "placement": {**spec["placement"], "unhealthyNodes": {"action": "Keep", "maxUnavailable": 3}}}
    assert template_hash(moved) == template_hash(spec)
    assert template_hash({**spec, "placement": {**spec["placement"], "strategy": "Spread"}}) != template_hash(spec)


def test_capacity_requests_avoid_unhealthy_nodes():
    world = World(nodes=("a", "b"))
    for name in ("a", "b", "c"):
        node = roomy(name)
        node["metadata"]["labels"]["kubernetes.io/hostname"] = name
        world.set_node(name, sick(node) if name == "c" else node)
    world.cache.apply_inference("MODIFIED", {**world.inference, "spec": {**world.inference["spec"], "replicas": 5}})
    ruling = world.rule()
    assert [r for r, _ in ruling.unplaceable] == [4] and 4 in ruling.request_creations
    affinity = ruling.request_creations[4]["spec"]["affinity"]["nodeAffinity"]
    (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["c"]} in term["matchExpressions"]
    assert "c" not in ruling.excluded, "only while it is unhealthy"
