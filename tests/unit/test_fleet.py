"""Fleet specs and simulated Node manifests (pure parts of neuronplace.local.fleet)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neuronplace.local.fleet import (
    HOST_SHAPES,
    KWOK_ANNOTATION,
    KWOK_TAINT,
    FleetItem,
    build_fleet,
    build_node,
    host_resources,
    node_name,
    normalize_fleet,
    parse_fleet,
)
from neuronplace.placement.names import NEURON_DEVICE_RESOURCE, NEURONCORE_RESOURCE
from neuronplace.placement.resources import node_allocatable
from neuronplace.placement.topology import INSTANCE_TOPOLOGIES

KNOWN_TYPES = sorted(set(INSTANCE_TOPOLOGIES) & set(HOST_SHAPES))


def test_parse_fleet_reads_types_and_counts_in_order():
    assert parse_fleet("inf2.48xlarge=2,trn1.32xlarge=1") == [
        FleetItem("inf2.48xlarge", 2),
        FleetItem("trn1.32xlarge", 1),
    ]
    assert [i.instance_type for i in parse_fleet(" trn1.32xlarge=1 , inf2.xlarge=3 ")] == [
        "trn1.32xlarge",
        "inf2.xlarge",
    ]


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("", "empty"),
        ("inf2.48xlarge", "'inf2.48xlarge' is not TYPE=COUNT"),
        ("inf2.48xlarge=two", "'inf2.48xlarge=two' is not TYPE=COUNT"),
        ("inf2.48xlarge=-1", "is not TYPE=COUNT"),
        ("inf2.48xlarge=0", "count must be >= 1"),
        ("x9.huge=1", "unknown instance type 'x9.huge'"),
        ("inf2.48xlarge=1,inf2.48xlarge=2", "names inf2.48xlarge:dp twice"),
        ("inf2.48xlarge=1,", "'' is not TYPE=COUNT"),
    ],
)
def test_parse_fleet_rejects_bad_specs_naming_the_bad_part(spec, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        parse_fleet(spec)


def test_normalize_fleet_validates_mappings_like_specs():
    assert normalize_fleet({"inf2.xlarge": 1}) == [FleetItem("inf2.xlarge", 1)]
    with pytest.raises(ValueError, match=r"unknown instance type 'gpu\.big'"):
        normalize_fleet({"gpu.big": 1})
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="integer >= 1"):
            normalize_fleet({"inf2.xlarge": bad})


# (neuroncore, neuron devices) per instance type, from the AWS Neuron documentation.
EXPECTED_NEURON = {
    "inf1.xlarge": (4, 1),
    "inf1.2xlarge": (4, 1),
    "inf1.6xlarge": (16, 4),
    "inf1.24xlarge": (64, 16),
    "inf2.xlarge": (2, 1),
    "inf2.8xlarge": (2, 1),
    "inf2.24xlarge": (12, 6),
    "inf2.48xlarge": (24, 12),
    "trn1.2xlarge": (2, 1),
    "trn1.32xlarge": (32, 16),
    "trn1n.32xlarge": (32, 16),
    "trn2.3xlarge": (4, 1),
    "trn2.48xlarge": (64, 16),
    "trn2u.48xlarge": (64, 16),
}


@pytest.mark.parametrize("instance_type", sorted(EXPECTED_NEURON))
def test_node_resources_match_the_instance_table(instance_type):
    node = build_node("n-0", instance_type)
    cores, devices = EXPECTED_NEURON[instance_type]
    for key in ("capacity", "allocatable"):
        resources = node["status"][key]
        assert resources[NEURONCORE_RESOURCE] == str(cores)
        assert resources[NEURON_DEVICE_RESOURCE] == str(devices)
        assert int(resources["pods"]) > 0
    capacity = node_allocatable({"status": {"allocatable": node["status"]["capacity"]}})
    allocatable = node_allocatable(node)
    assert capacity["cpu"] == HOST_SHAPES[instance_type].vcpus * 1000
    assert capacity["memory"] == HOST_SHAPES[instance_type].memory_gib * 2**30
    for resource in ("cpu", "memory", "ephemeral-storage"):  # the node keeps some for itself
        assert 0.75 * capacity[resource] <= allocatable[resource] < capacity[resource]


def test_allocatable_is_what_an_eks_node_reserves():
    capacity, allocatable = host_resources("inf2.48xlarge")
    assert (capacity["cpu"], allocatable["cpu"]) == ("192", "191450m")  # 60 + 10 + 2 x 5 + 188 x 2.5
    assert (capacity["memory"], allocatable["memory"]) == ("768Gi", f"{768 * 1024 - 1465 - 100}Mi")
    assert host_resources("inf1.xlarge")[1]["cpu"] == "3920m"  # 60 + 10 + 2 x 5


def test_every_known_instance_type_has_a_host_shape():
    assert set(INSTANCE_TOPOLOGIES) == set(HOST_SHAPES) == set(EXPECTED_NEURON)


def test_node_is_handed_to_kwok_and_tainted():
    node = build_node("inf-a", "inf2.48xlarge", zone="us-east-1b", labels={"team": "x"})
    meta = node["metadata"]
    assert meta["name"] == "inf-a"
    assert meta["annotations"][KWOK_ANNOTATION] == "fake"
    assert meta["labels"]["node.kubernetes.io/instance-type"] == "inf2.48xlarge"
    assert meta["labels"]["topology.kubernetes.io/zone"] == "us-east-1b"
    assert meta["labels"]["kubernetes.io/hostname"] == "inf-a"
    assert meta["labels"]["team"] == "x"
    assert node["spec"]["taints"] == [KWOK_TAINT]


def test_trn2_lnc_changes_cores_and_is_labelled():
    node = build_node("t-0", "trn2.48xlarge", lnc=1)
    assert node["status"]["allocatable"][NEURONCORE_RESOURCE] == "128"
    assert node["status"]["allocatable"][NEURON_DEVICE_RESOURCE] == "16"
    assert node["metadata"]["labels"]["neuronplace.io/lnc"] == "1"
    assert "neuronplace.io/lnc" not in build_node("i-0", "inf2.xlarge", lnc=1)["metadata"]["labels"]


def test_build_node_rejects_contradictions_and_bad_names():
    with pytest.raises(ValueError, match=r"contradicts instance type inf2\.xlarge"):
        build_node("a", "inf2.xlarge", labels={"node.kubernetes.io/instance-type": "trn1.2xlarge"})
    with pytest.raises(ValueError, match="'Bad_Name' is not a DNS subdomain"):
        build_node("Bad_Name", "inf2.xlarge")
    with pytest.raises(ValueError, match="unknown instance type"):
        build_node("a", "inf9.tiny")


def test_build_fleet_names_and_spreads_over_zones():
    nodes = build_fleet("inf2.48xlarge=4,trn1.32xlarge=1", prefix="np-")
    names = [n["metadata"]["name"] for n in nodes]
    assert names == [
        "np-inf2-48xlarge-0",
        "np-inf2-48xlarge-1",
        "np-inf2-48xlarge-2",
        "np-inf2-48xlarge-3",
        "np-trn1-32xlarge-0",
    ]
    zones = [n["metadata"]["labels"]["topology.kubernetes.io/zone"] for n in nodes[:4]]
    assert zones == ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1a"]


@given(st.dictionaries(st.sampled_from(KNOWN_TYPES), st.integers(1, 5), min_size=1, max_size=5))
def test_spec_round_trip_and_node_count(fleet):
    spec = ",".join(f"{t}={n}" for t, n in fleet.items())
    assert parse_fleet(spec) == [FleetItem(t, n) for t, n in fleet.items()]
    nodes = build_fleet(spec, prefix="p-")
    assert len(nodes) == sum(fleet.values())
    names = [n["metadata"]["name"] for n in nodes]
    assert len(set(names)) == len(names)
    assert all(
        name == node_name("p-", n["metadata"]["labels"]["node.kubernetes.io/instance-type"], i)
        for n, name, i in zip(nodes, names, [i for t, c in fleet.items() for i in range(c)])
    )
