"""Moving replicas off unhealthy nodes by the paths a missing replica takes: a DRA replica's room
is only on DRA nodes, on chips in one connected group; a device-plugin replica's only on
device-plugin nodes. No room by those paths → the replica stays (``NoRoomToMove``)."""

from __future__ import annotations

import copy
import datetime as dt

from neuronplace.placement.dra import dra_nodes
from neuronplace.placement.fleet import Fleet
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.moves import MOVED
from neuronplace.placement.names import NEURONCORE_RESOURCE, REASON_MOVING_REPLICAS, REASON_NO_ROOM_TO_MOVE
from neuronplace.placement.neuron_dra import DRIVER, device_name
from neuronplace.placement.resource_claims import resource_claim_key
from neuronplace.placement.ruling import Rules, View, rule
from neuronplace.placement.usage import Usage
from support import builders

NOW = dt.datetime(2026, 12, 6, 12, 0, 0, tzinfo=dt.UTC)
NS = "ml"
HBM = "NeuronHasError_HBM_UNCORRECTABLE_ERROR"


def chips_in_order(chip: int) -> int:
    return chip // 4


def chips_scattered(chip: int) -> int:
    """Groups of four whose chips are never neighbours: every aligned run of four spans four groups."""
    return chip % 4


def trn2(name, group_of=chips_in_order, sick=False):
    """A trn2.48xlarge managed by the DRA driver (16 chips, 4 cores each), as (node, its inventory)."""
    body = builders.node(name, "trn2.48xlarge")
    del body["status"]["allocatable"][NEURONCORE_RESOURCE]
    body["status"]["allocatable"].update({"pods": "110", "cpu": "192", "memory": "768Gi"})
    if sick:
        body["status"]["conditions"].append({"type": "NeuronHealth", "status": "True", "reason": HBM})
    devices = [
        {
            "name": device_name(chip),
            "attributes": {
                "deviceId": {"int": chip},
                "topology4_id": {"int": group_of(chip)},
                "topology8_id": {"int": chip // 8},
            },
        }
        for chip in range(16)
    ]
    piece = {
        "metadata": {"name": f"{name}-neuron"},
        "spec": {"driver": DRIVER, "nodeName": name, "pool": {"name": name, "generation": 1}, "devices": devices},
    }
    return body, inventory_from_node(body, dra_nodes([piece])[name])


def inf2(name, sick=False):
    """An empty inf2.48xlarge (24 cores, device plugin), as (node, its inventory)."""
    body = builders.node(name)
    body["status"]["allocatable"].update({"pods": "110", "cpu": "192", "memory": "768Gi"})
    if sick:
        body["status"]["conditions"].append({"type": "NeuronHealth", "status": "True", "reason": HBM})
    return body, inventory_from_node(body)


def llm(**placement):
    body = builders.inference(
        "llm",
        namespace=NS,
        uid="uid-llm",
        generation=1,
        replicas=1,
        cores=16,
        strategy=None,
        tolerations=(),
        labels={},
        template_spec={"containers": [{"name": "model", "image": "llm:1"}]},
    )
    body["spec"].setdefault("placement", {}).update(placement)
    return body


def after_home_turns_sick(home, others, **placement):
    """llm's one replica placed on ``home`` (a node builder), bound, ready and (on DRA) its claim
    allocated; then ``home`` reports an HBM error: the ruling, and its view."""
    body = llm(**placement)
    healthy, inventory = home("home")
    ledger, usage = Ledger(), Usage()
    first = rule(
        body, View(pods=(), nodes={"home": healthy}, fleet=Fleet([inventory]), ledger=ledger, usage=usage), Rules(), NOW
    )
    [creation] = first.creations
    pod = copy.deepcopy(creation.pod)
    pod["metadata"]["uid"] = "pod-llm-0"
    pod["spec"]["nodeName"] = "home"
    pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    ledger.trust("uid-llm")
    ledger.observe(pod)
    if creation.resource_claim is not None:
        claim = copy.deepcopy(creation.resource_claim)
        results = [
            {"request": "neuron", "driver": DRIVER, "pool": "home", "device": device_name(c)}
            for c in creation.placement.devices
        ]
        claim["status"] = {"allocation": {"devices": {"results": results}}}
        ledger.observe_claim(claim)
    sick_body, sick_inventory = home("home", sick=True)
    bodies, inventories = {"home": sick_body}, [sick_inventory]
    for name, make in others.items():
        bodies[name], inventory = make(name)
        inventories.append(inventory)
    view = View(pods=(pod,), nodes=bodies, fleet=Fleet(inventories), ledger=ledger, usage=usage)
    return rule(body, view, Rules(), NOW), view


def test_a_dra_replica_does_not_move_to_a_device_plugin_node_it_can_never_use():
    ruling, view = after_home_turns_sick(trn2, {"inf2-b": inf2}, deviceManagement="DRA")
    assert ruling.deletions == ()
    assert ruling.health is not None and ruling.health.reason == REASON_NO_ROOM_TO_MOVE
    assert "replica 0 on home" in ruling.health.message and ruling.waiting_for_room is True
    assert view.ledger.used_cores("inf2-b") == set(), "the trial took nothing"


def test_a_dra_replica_moves_to_another_dra_node_with_a_connected_group_and_gives_the_trial_back():
    ruling, view = after_home_turns_sick(trn2, {"trn2-b": trn2}, deviceManagement="DRA")
    assert [(d.pod, d.reason) for d in ruling.deletions] == [("llm-0", MOVED)]
    assert ruling.health is not None and ruling.health.reason == REASON_MOVING_REPLICAS
    assert view.ledger.holding_of(resource_claim_key(NS, "llm-0#move")) is None
    assert view.ledger.used_cores("trn2-b") == set() and view.usage.held_by(f"{NS}/llm-0#move") is None


def test_dra_chips_enough_in_number_but_in_no_connected_group_are_no_room():
    scattered = lambda name, sick=False: trn2(name, chips_scattered, sick)  # noqa: E731
    ruling, view = after_home_turns_sick(trn2, {"trn2-b": scattered}, deviceManagement="DRA")
    assert ruling.deletions == ()
    assert ruling.health is not None and ruling.health.reason == REASON_NO_ROOM_TO_MOVE
    assert "trn2-b's free chips form no connected group of 4" in ruling.health.message
    assert view.ledger.used_cores("trn2-b") == set()


def test_auto_moves_from_a_dra_node_to_a_device_plugin_node():
    ruling, _ = after_home_turns_sick(trn2, {"inf2-b": inf2})  # Auto: the device plugin's nodes first
    assert [d.pod for d in ruling.deletions] == ["llm-0"]


def test_a_device_plugin_replica_does_not_count_dra_nodes_as_room():
    ruling, _ = after_home_turns_sick(inf2, {"trn2-b": trn2}, deviceManagement="DevicePlugin")
    assert ruling.deletions == ()
    assert ruling.health is not None and ruling.health.reason == REASON_NO_ROOM_TO_MOVE
