"""Node objects → NodeInventory: topology, usable cores, and why a node is never eligible."""

import copy

import pytest

from neuronplace.placement.inventory import (
    BEING_DELETED,
    CORDONED,
    NO_CORES,
    NOT_READY,
    UNKNOWN_TOPOLOGY,
    inventory_from_node,
)
from neuronplace.placement.topology import Topology, topology_for


def make_node(name="inf2-a", instance_type="inf2.48xlarge", cores="24", ready="True", labels=None, **extra):
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"node.kubernetes.io/instance-type": instance_type, **(labels or {})}},
        "spec": {},
        "status": {
            "allocatable": {"aws.amazon.com/neuroncore": cores, "cpu": "192"},
            "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": ready}],
        },
    }
    if cores is None:
        del node["status"]["allocatable"]["aws.amazon.com/neuroncore"]
    for path, value in extra.items():
        section, key = path.split("__")
        node[section][key] = value
    return node


def test_ready_known_node_is_eligible():
    inventory = inventory_from_node(make_node())
    assert inventory.name == "inf2-a"
    assert inventory.instance_type == "inf2.48xlarge"
    assert inventory.topology == topology_for("inf2.48xlarge")
    assert inventory.cores == 24
    assert inventory.problem is None and inventory.problem_kind is None
    assert inventory.labels["node.kubernetes.io/instance-type"] == "inf2.48xlarge"


def test_input_is_not_modified():
    node = make_node(spec__taints=[{"key": "a", "effect": "NoSchedule"}])
    before = copy.deepcopy(node)
    inventory_from_node(node)
    assert node == before


@pytest.mark.parametrize(
    "node, kind",
    [
        (make_node(spec__unschedulable=True), CORDONED),
        (make_node(ready="False"), NOT_READY),
        (make_node(ready="Unknown"), NOT_READY),
        (make_node(metadata__deletionTimestamp="2026-11-28T10:00:00Z"), BEING_DELETED),
        (make_node(instance_type="m5.large"), UNKNOWN_TOPOLOGY),
        (make_node(cores=None), NO_CORES),
        (make_node(cores="0"), NO_CORES),
    ],
)
def test_ineligible_nodes_say_why(node, kind):
    inventory = inventory_from_node(node)
    assert inventory.problem_kind == kind
    assert inventory.problem


def test_node_without_conditions_is_not_ready():
    node = make_node()
    del node["status"]["conditions"]
    assert inventory_from_node(node).problem == "NotReady"


def test_being_deleted_wins_over_other_problems():
    node = make_node(ready="False", spec__unschedulable=True, metadata__deletionTimestamp="2026-11-28T10:00:00Z")
    assert inventory_from_node(node).problem == "being deleted"


def test_unknown_type_names_the_override():
    inventory = inventory_from_node(make_node(instance_type="x1.foo"))
    assert "unknown instance type 'x1.foo'" in inventory.problem
    assert "neuronplace.io/topology" in inventory.problem
    assert inventory.topology is None


def test_override_label_and_annotation():
    by_label = inventory_from_node(
        make_node(instance_type="x1.foo", cores="8", labels={"neuronplace.io/topology": "4x2"})
    )
    assert by_label.problem is None and by_label.topology == Topology(4, 2, "ring") and by_label.cores == 8
    node = make_node(instance_type="x1.foo", cores="32")
    node["metadata"]["annotations"] = {"neuronplace.io/topology": "16x2,torus"}
    by_annotation = inventory_from_node(node)
    assert by_annotation.topology == Topology(16, 2, "torus") and by_annotation.cores == 32


def test_bad_override_is_a_problem_not_an_exception():
    inventory = inventory_from_node(make_node(labels={"neuronplace.io/topology": "lots"}))
    assert inventory.problem_kind == UNKNOWN_TOPOLOGY
    assert "'lots'" in inventory.problem


def test_lnc_label_on_trn2():
    inventory = inventory_from_node(
        make_node(instance_type="trn2.48xlarge", cores="128", labels={"neuronplace.io/lnc": "1"})
    )
    assert inventory.topology.cores_per_chip == 8 and inventory.cores == 128
    default = inventory_from_node(make_node(instance_type="trn2.48xlarge", cores="64"))
    assert default.topology.cores_per_chip == 4 and default.cores == 64
    bad = inventory_from_node(make_node(instance_type="trn2.48xlarge", cores="64", labels={"neuronplace.io/lnc": "3"}))
    assert bad.problem_kind == UNKNOWN_TOPOLOGY and "'3'" in bad.problem


def test_usable_cores_are_the_smaller_of_topology_and_allocatable():
    assert inventory_from_node(make_node(cores="20")).cores == 20
    assert inventory_from_node(make_node(cores="48")).cores == 24
    assert inventory_from_node(make_node(cores=24)).cores == 24


def test_device_count_is_used_without_a_core_figure():
    node = make_node(cores=None)
    node["status"]["allocatable"]["aws.amazon.com/neuron"] = "12"
    inventory = inventory_from_node(node)
    assert inventory.problem is None and inventory.cores == 24


def test_taints_are_carried_for_the_request_to_check():
    taints = [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]
    inventory = inventory_from_node(make_node(spec__taints=taints))
    assert inventory.problem is None
    assert [dict(t) for t in inventory.taints] == taints


def test_inventory_carries_the_allocatable_of_every_checked_resource():
    node = make_node()
    node["status"]["allocatable"].update({"memory": "700Gi", "pods": "110", "hugepages-2Mi": "1Gi", "x": "5"})
    allocatable = inventory_from_node(node).allocatable
    assert dict(allocatable) == {
        "aws.amazon.com/neuroncore": 24,
        "cpu": 192_000,
        "memory": 700 * 2**30,
        "hugepages-2Mi": 2**30,
        "pods": 110,
    }
    assert inventory_from_node(make_node()).allocatable["pods"] == 0  # no pods allocatable: no pod fits
