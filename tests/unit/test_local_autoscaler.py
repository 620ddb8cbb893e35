"""The autoscaler's pure parts: Karpenter's instance types, its NodePool, and its pin and cache folder."""

from __future__ import annotations

import pytest

from neuronplace.local import autoscaler, build
from neuronplace.local.fleet import KWOK_TAINT, REGION, ZONES, build_node
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.names import INSTANCE_TYPE_LABEL, NEURON_DEVICE_RESOURCE, NEURONCORE_RESOURCE
from neuronplace.placement.resources import parse_quantity
from neuronplace.placement.topology import INSTANCE_TOPOLOGIES

HOST_RESOURCES = ("cpu", "memory", "ephemeral-storage", "pods")


def _karpenter_allocatable(resources: dict[str, str]) -> dict[str, object]:
    """What Karpenter's kwok provider makes a node's allocatable: the declared resources less its
    fixed kube-reserved."""
    allocatable = {name: parse_quantity(value) for name, value in resources.items()}
    allocatable["cpu"] -= parse_quantity(f"{autoscaler.KWOK_RESERVED_MILLICPU}m")
    allocatable["memory"] -= parse_quantity(f"{autoscaler.KWOK_RESERVED_MEMORY_MI}Mi")
    return allocatable


def test_every_neuron_instance_type_of_the_topology_table_is_offered():
    types = autoscaler.build_instance_types()
    assert [t["name"] for t in types] == list(INSTANCE_TOPOLOGIES)
    for instance_type in types:
        assert instance_type["architecture"] == "amd64"
        assert instance_type["operatingSystems"] == ["linux"]
        assert instance_type["offerings"], instance_type["name"]


@pytest.mark.parametrize("instance_type", list(INSTANCE_TOPOLOGIES))
def test_a_karpenter_node_has_the_fleet_nodes_allocatable(instance_type):
    (declared,) = autoscaler.build_instance_types([instance_type])
    fleet_node = build_node("n", instance_type)
    allocatable = _karpenter_allocatable(declared["resources"])
    expected = {name: parse_quantity(value) for name, value in fleet_node["status"]["allocatable"].items()}
    assert allocatable == expected
    assert set(allocatable) == {*HOST_RESOURCES, NEURONCORE_RESOURCE, NEURON_DEVICE_RESOURCE}


def test_a_node_made_from_an_instance_type_is_recognised_by_the_inventory():
    """The labels Karpenter derives (instance type, zone) plus the NodePool's taint: the operator
    reads the same topology and core count as from a fleet node."""
    (declared,) = autoscaler.build_instance_types(["inf2.48xlarge"])
    pool = autoscaler.build_node_pool()
    node = {
        "metadata": {
            "name": "kwok-x",
            "labels": {
                INSTANCE_TYPE_LABEL: "inf2.48xlarge",
                **pool["spec"]["template"]["metadata"]["labels"],
            },
        },
        "spec": {"taints": pool["spec"]["template"]["spec"]["taints"]},
        "status": {
            "allocatable": declared["resources"],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    inventory = inventory_from_node(node)
    assert inventory.topology is not None and inventory.topology.cores == 24
    assert inventory.problem is None


def test_offerings_are_on_demand_in_every_fleet_zone_with_the_region():
    (declared,) = autoscaler.build_instance_types(["trn1.32xlarge"])
    zones = []
    for offering in declared["offerings"]:
        requirements = {r["key"]: r["values"] for r in offering["Requirements"]}
        assert requirements[autoscaler.CAPACITY_TYPE_LABEL] == ["on-demand"]
        assert requirements["topology.kubernetes.io/region"] == [REGION]
        assert offering["Price"] == autoscaler.PRICES["trn1.32xlarge"] > 0
        assert offering["Available"] is True
        zones += requirements["topology.kubernetes.io/zone"]
    assert zones == list(ZONES)


def test_unknown_instance_types_are_refused():
    with pytest.raises(ValueError, match=r"p4d\.24xlarge"):
        autoscaler.build_instance_types(["p4d.24xlarge"])
    with pytest.raises(ValueError, match=r"p4d\.24xlarge"):
        autoscaler.build_node_pool(instance_types=["inf2.48xlarge", "p4d.24xlarge"])


def test_the_default_node_pool_makes_fleet_like_nodes_and_gives_empty_ones_back():
    pool = autoscaler.build_node_pool()
    template = pool["spec"]["template"]
    assert template["spec"]["taints"] == [KWOK_TAINT]
    assert template["metadata"]["labels"] == {"type": "kwok"}
    requirements = {r["key"]: r for r in template["spec"]["requirements"]}
    assert requirements[INSTANCE_TYPE_LABEL]["values"] == list(INSTANCE_TOPOLOGIES)
    assert pool["spec"]["disruption"]["consolidationPolicy"] == "WhenEmpty"
    assert pool["spec"]["disruption"]["consolidateAfter"] == "10s"
    assert pool["spec"]["limits"] == {NEURONCORE_RESOURCE: "1024"}


def test_a_node_pool_can_be_narrowed():
    pool = autoscaler.build_node_pool(
        "only-inf2",
        instance_types=["inf2.48xlarge"],
        labels={"neuronplace.io/pool": "p1"},
        requirements=[{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1b"]}],
    )
    assert pool["metadata"]["name"] == "only-inf2"
    template = pool["spec"]["template"]
    assert template["metadata"]["labels"] == {"type": "kwok", "neuronplace.io/pool": "p1"}
    requirements = {r["key"]: r["values"] for r in template["spec"]["requirements"]}
    assert requirements[INSTANCE_TYPE_LABEL] == ["inf2.48xlarge"]
    assert requirements["topology.kubernetes.io/zone"] == ["us-east-1b"]


def test_every_feature_gate_is_named():
    gates = autoscaler.FEATURE_GATES
    assert gates["CapacityBuffer"] is False and gates["NodeOverlay"] is False
    assert len(gates) == 9


def test_karpenter_has_its_own_pin_toolchain_and_cache_folder():
    assert build.pins(build.AUTOSCALER) == {"sigs.k8s.io/karpenter": "v1.15.0"}
    assert build.go_toolchain("karpenter") == "go1.27.3"
    assert build.go_env("karpenter")["GOTOOLCHAIN"] == "go1.27.3"
    assert build.go_toolchain("kubernetes") is None
    key = build.pins_key(build.AUTOSCALER)
    assert key.startswith("karpenter1.15.0-")
    # The control plane's folder does not depend on the autoscaler's pin: adding or bumping it
    # never rebuilds the (minutes-long) control plane.
    assert "karpenter" not in build.pins_key()
    assert build.bin_dir(build.AUTOSCALER) != build.bin_dir()
