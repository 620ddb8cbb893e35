"""Instance topology table, device-group shapes and the topology override grammar."""

import pytest

from neuronplace.placement.topology import (
    INSTANCE_TOPOLOGIES,
    Topology,
    parse_topology_override,
    topology_for,
)
from neuronplace.runtime.coreset import CoreRange


@pytest.mark.parametrize(
    "instance_type, chips, per_chip, cores, interconnect",
    [
        ("inf1.xlarge", 1, 4, 4, "single"),
        ("inf1.2xlarge", 1, 4, 4, "single"),
        ("inf1.6xlarge", 4, 4, 16, "ring"),
        ("inf1.24xlarge", 16, 4, 64, "ring"),
        ("inf2.xlarge", 1, 2, 2, "single"),
        ("inf2.8xlarge", 1, 2, 2, "single"),
        ("inf2.24xlarge", 6, 2, 12, "ring"),
        ("inf2.48xlarge", 12, 2, 24, "ring"),
        ("trn1.2xlarge", 1, 2, 2, "single"),
        ("trn1.32xlarge", 16, 2, 32, "torus"),
        ("trn1n.32xlarge", 16, 2, 32, "torus"),
        ("trn2.3xlarge", 1, 4, 4, "single"),
        ("trn2.48xlarge", 16, 4, 64, "torus"),
        ("trn2u.48xlarge", 16, 4, 64, "torus"),
    ],
)
def test_table_matches_design(instance_type, chips, per_chip, cores, interconnect):
    topology = topology_for(instance_type)
    assert topology is INSTANCE_TOPOLOGIES[instance_type]
    assert (topology.chips, topology.cores_per_chip, topology.cores, topology.interconnect) == (
        chips,
        per_chip,
        cores,
        interconnect,
    )


def test_unknown_instance_type_is_none():
    assert topology_for("m5.large") is None
    assert topology_for("inf3.48xlarge") is None


def test_lnc_changes_trn2_cores_per_chip():
    assert topology_for("trn2.48xlarge", lnc=1).cores == 128
    assert topology_for("trn2.48xlarge", lnc=2).cores == 64
    assert topology_for("trn2.3xlarge", lnc=1).cores_per_chip == 8
    # Other families have no logical-core grouping to change.
    assert topology_for("inf2.48xlarge", lnc=1) == topology_for("inf2.48xlarge")
    with pytest.raises(ValueError, match="LNC must be 1 or 2"):
        topology_for("trn2.48xlarge", lnc=4)


def test_chip_of_and_devices_of():
    inf2 = topology_for("inf2.48xlarge")
    assert inf2.chip_of(0) == 0 and inf2.chip_of(3) == 1 and inf2.chip_of(23) == 11
    assert inf2.devices_of(CoreRange(4, 8)) == (2, 3, 4, 5)
    assert inf2.devices_of(CoreRange(1, 1)) == (0,)
    assert topology_for("inf1.6xlarge").devices_of(CoreRange(2, 4)) == (0, 1)
    with pytest.raises(ValueError, match="outside 0-23"):
        inf2.chip_of(24)
    with pytest.raises(ValueError, match="outside"):
        inf2.devices_of(CoreRange(20, 8))


@pytest.mark.parametrize(
    "cores, allowed",
    [
        (1, True),
        (2, True),
        (3, False),
        (4, False),
        (6, False),
        (7, True),
        (8, True),
        (10, False),
        (16, True),
        (24, False),
        (32, True),
    ],
)
def test_trn1_torus_device_group_shapes(cores, allowed):
    # AWS scheduler extension: 1, 4, 8 or 16 devices on trn1.32xlarge; part of one device is fine.
    assert topology_for("trn1.32xlarge").shape_allows(cores) is allowed
    assert topology_for("trn1n.32xlarge").shape_allows(cores) is allowed


@pytest.mark.parametrize("instance_type", ["inf2.48xlarge", "inf1.24xlarge", "trn2.48xlarge"])
def test_other_families_have_no_shape_rule(instance_type):
    topology = topology_for(instance_type)
    assert all(topology.shape_allows(n) for n in range(1, topology.cores + 1))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4x2", Topology(4, 2, "ring")),
        ("1x4", Topology(1, 4, "single")),
        ("16x2,torus", Topology(16, 2, "torus")),
        (" 6 x 2 , ring ", Topology(6, 2, "ring")),
    ],
)
def test_override_grammar(text, expected):
    assert parse_topology_override(text) == expected


@pytest.mark.parametrize("text", ["", "4", "4x", "x2", "4x2,mesh", "0x2", "4x0", "-1x2", "4*2"])
def test_override_rejects_bad_text(text):
    with pytest.raises(ValueError, match=r"neuronplace\.io/topology"):
        parse_topology_override(text)


def test_topology_rejects_nonsense():
    with pytest.raises(ValueError):
        Topology(0, 2, "ring")
    with pytest.raises(ValueError, match="interconnect"):
        Topology(2, 2, "mesh")
