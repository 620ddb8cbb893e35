"""The DRA test bed's pure parts: the fleet grammar's device management and the simulated Neuron DRA
driver's DeviceClass and ResourceSlices (neuronplace.local.fleet, neuronplace.local.dra_driver)."""

from __future__ import annotations

import pytest

from neuronplace.local.dra_driver import device_class, resource_slices
from neuronplace.local.fleet import (
    DEVICE_PLUGIN,
    DRA,
    FleetItem,
    build_fleet,
    build_node,
    describe_fleet,
    fleet_instances,
    normalize_fleet,
    parse_fleet,
)
from neuronplace.placement.names import NEURON_DEVICE_RESOURCE, NEURONCORE_RESOURCE
from neuronplace.placement.neuron_dra import (
    DEVICE_CLASS,
    DEVICE_GROUP_ATTRIBUTES,
    DEVICE_ID,
    DRIVER,
    INSTANCE_TYPE,
    NETWORK_NODE_LAYERS,
    RESOURCE_TYPE,
    RESOURCE_TYPE_DEVICE,
    TOPOLOGY_GROUP_ATTRIBUTES,
    TOPOLOGY_X,
    TOPOLOGY_Y,
    chip_of_device,
    qualified,
)
from neuronplace.placement.topology import INSTANCE_TOPOLOGIES, TRN1_TORUS_DEVICE_SHAPES
from neuronplace.runtime.coreset import CoreRange

TORUS_TYPES = ("trn1.32xlarge", "trn1n.32xlarge", "trn2.48xlarge")


# ---- the fleet grammar ----------------------------------------------------------------------------
def test_a_dra_suffix_marks_an_item_and_dp_is_the_default():
    assert parse_fleet("inf2.48xlarge=1,trn2.48xlarge=2:dra,trn1.32xlarge=1:dp") == [
        FleetItem("inf2.48xlarge", 1, DEVICE_PLUGIN),
        FleetItem("trn2.48xlarge", 2, DRA),
        FleetItem("trn1.32xlarge", 1, DEVICE_PLUGIN),
    ]
    assert [item.dra for item in parse_fleet("trn2.48xlarge=1:dra,trn2.48xlarge=1")] == [True, False]


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("trn2.48xlarge=1:gpu", "'trn2.48xlarge=1:gpu': device management must be :dp"),
        ("trn2.48xlarge=1:", "'trn2.48xlarge=1:' is not TYPE=COUNT[:dp|:dra]"),
        ("trn2.48xlarge=1:DRA", "'trn2.48xlarge=1:DRA' is not TYPE=COUNT[:dp|:dra]"),
        ("trn2.48xlarge:dra=1", "'trn2.48xlarge:dra=1' is not TYPE=COUNT[:dp|:dra]"),
        ("trn2.48xlarge=1:dra,trn2.48xlarge=3:dra", "names trn2.48xlarge:dra twice"),
        ("trn2.48xlarge=0:dra", "count must be >= 1"),
    ],
)
def test_bad_device_management_is_refused_naming_the_item_and_the_rule(spec, fragment):
    with pytest.raises(ValueError) as raised:
        parse_fleet(spec)
    assert fragment in str(raised.value)


def test_items_round_trip_through_their_text_and_normalize_accepts_them():
    items = parse_fleet("inf2.xlarge=2,trn2.48xlarge=1:dra")
    assert describe_fleet(items) == "inf2.xlarge=2,trn2.48xlarge=1:dra"
    assert normalize_fleet(items) == items
    assert normalize_fleet([]) == [] == normalize_fleet({})
    with pytest.raises(ValueError, match="count must be >= 1"):
        normalize_fleet([FleetItem("inf2.xlarge", 0, DRA)])


def test_a_dra_node_has_the_labels_but_no_neuron_resources():
    plugin, dra = build_node("a", "trn2.48xlarge"), build_node("a", "trn2.48xlarge", dra=True)
    assert dra["metadata"] == plugin["metadata"]
    for key in ("capacity", "allocatable"):
        assert NEURONCORE_RESOURCE not in dra["status"][key] and NEURON_DEVICE_RESOURCE not in dra["status"][key]
        assert {k: v for k, v in plugin["status"][key].items() if "neuron" not in k} == dra["status"][key]


def test_one_type_may_be_in_a_fleet_under_both_managements_with_distinct_names():
    instances = fleet_instances("trn2.48xlarge=2,trn2.48xlarge=1:dra", prefix="p-")
    assert [(i.name, i.dra) for i in instances] == [
        ("p-trn2-48xlarge-0", False),
        ("p-trn2-48xlarge-1", False),
        ("p-trn2-48xlarge-dra-0", True),
    ]
    nodes = build_fleet("trn2.48xlarge=2,trn2.48xlarge=1:dra", prefix="p-")
    assert [NEURONCORE_RESOURCE in n["status"]["allocatable"] for n in nodes] == [True, True, False]


# ---- the simulated driver -----------------------------------------------------------------------
def test_the_device_class_selects_the_drivers_devices():
    cls = device_class()
    assert (cls["apiVersion"], cls["kind"], cls["metadata"]["name"]) == (
        "resource.k8s.io/v1",
        "DeviceClass",
        DEVICE_CLASS,
    )
    assert cls["spec"]["selectors"] == [{"cel": {"expression": 'device.driver == "neuron.aws.com"'}}]


@pytest.mark.parametrize("instance_type", sorted(INSTANCE_TOPOLOGIES))
def test_one_slice_per_node_one_device_per_chip_with_the_drivers_attributes(instance_type):
    [item] = resource_slices("node-a", instance_type)
    assert (item["apiVersion"], item["kind"]) == ("resource.k8s.io/v1", "ResourceSlice")
    assert item["metadata"] == {"generateName": f"node-a-{DRIVER}-"}
    spec = item["spec"]
    assert (spec["driver"], spec["nodeName"]) == (DRIVER, "node-a")
    assert spec["pool"] == {"name": "node-a", "generation": 1, "resourceSliceCount": 1}
    chips = INSTANCE_TOPOLOGIES[instance_type].chips
    assert [chip_of_device(d["name"]) for d in spec["devices"]] == list(range(chips))
    for chip, device in enumerate(spec["devices"]):
        attributes = device["attributes"]
        assert attributes[DEVICE_ID] == {"int": chip}
        assert attributes[INSTANCE_TYPE] == {"string": instance_type}
        assert attributes[RESOURCE_TYPE] == {"string": RESOURCE_TYPE_DEVICE}
        assert all(set(attributes[layer]) == {"string"} for layer in NETWORK_NODE_LAYERS)
        assert all("/" not in name for name in attributes)  # the driver's own domain, unqualified
        torus = instance_type in TORUS_TYPES
        assert (TOPOLOGY_X in attributes) == torus and (TOPOLOGY_GROUP_ATTRIBUTES[4] in attributes) == torus
        assert not any(a in attributes for a in DEVICE_GROUP_ATTRIBUTES.values())  # no EFA asked for


def _groups(devices: list[dict], attribute: str) -> dict[object, list[int]]:
    groups: dict[object, list[int]] = {}
    for device in devices:
        value = next(iter(device["attributes"][attribute].values()))
        groups.setdefault(value, []).append(device["attributes"][DEVICE_ID]["int"])
    return groups


def _connected(chips: list[int], coordinates: dict[int, tuple[int, int]], width: int) -> bool:
    """Whether the chips form one connected piece of a width x width 2D torus."""
    seen, stack = {chips[0]}, [chips[0]]
    while stack:
        x, y = coordinates[stack.pop()]
        for other in chips:
            ox, oy = coordinates[other]
            neighbour = (ox == x and (oy - y) % width in (1, width - 1)) or (
                oy == y and (ox - x) % width in (1, width - 1)
            )
            if neighbour and other not in seen:
                seen.add(other)
                stack.append(other)
    return seen == set(chips)


@pytest.mark.parametrize("instance_type", TORUS_TYPES)
def test_topology_groups_are_connected_contiguous_runs_of_the_torus(instance_type):
    topology = INSTANCE_TOPOLOGIES[instance_type]
    devices = resource_slices("n", instance_type, efa=True)[0]["spec"]["devices"]
    coordinates = {
        d["attributes"][DEVICE_ID]["int"]: (d["attributes"][TOPOLOGY_X]["int"], d["attributes"][TOPOLOGY_Y]["int"])
        for d in devices
    }
    assert sorted(coordinates.values()) == [(x, y) for x in range(4) for y in range(4)]  # 16 chips = 4 x 4
    for size in TRN1_TORUS_DEVICE_SHAPES:
        attributes = [DEVICE_GROUP_ATTRIBUTES[size]] + (
            [TOPOLOGY_GROUP_ATTRIBUTES[size]] if size in TOPOLOGY_GROUP_ATTRIBUTES else []
        )
        for attribute in attributes:
            groups = _groups(devices, attribute)
            assert sorted(groups.values()) == [list(range(s, s + size)) for s in range(0, 16, size)], attribute
            assert all(_connected(chips, coordinates, 4) for chips in groups.values()), attribute
        # A core range aligned to a group covers exactly the group's chips (cores and groups agree).
        for chips in _groups(devices, attributes[0]).values():
            per_chip = topology.cores_per_chip
            cores = CoreRange(chips[0] * per_chip, len(chips) * per_chip)
            assert list(topology.devices_of(cores)) == chips


def test_efa_groups_are_in_their_own_domain_and_differ_between_nodes():
    [a], [b] = resource_slices("a", "trn2.48xlarge", efa=True), resource_slices("b", "trn2.48xlarge", efa=True)
    attribute = DEVICE_GROUP_ATTRIBUTES[4]
    assert qualified(attribute) == attribute == "resource.aws.com/devicegroup4_id"
    assert a["spec"]["devices"][0]["attributes"][attribute] != b["spec"]["devices"][0]["attributes"][attribute]
    assert a["spec"]["devices"][0]["attributes"][attribute] == a["spec"]["devices"][3]["attributes"][attribute]


def test_ultraserver_and_single_chip_trainium_publish_no_torus_coordinates():
    for instance_type in ("trn2u.48xlarge", "trn2.3xlarge", "trn1.2xlarge", "inf2.48xlarge"):
        for device in resource_slices("n", instance_type)[0]["spec"]["devices"]:
            assert TOPOLOGY_Y not in device["attributes"]
            assert not set(TOPOLOGY_GROUP_ATTRIBUTES.values()) & set(device["attributes"])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unknown instance type"):
        resource_slices("n", "p5.48xlarge")
    with pytest.raises(ValueError, match="LNC must be 1 or 2"):
        resource_slices("n", "trn2.48xlarge", lnc=4)
    assert resource_slices("n", "trn2.48xlarge", lnc=1) == resource_slices("n", "trn2.48xlarge")


def test_plan_reads_the_same_grammar_and_builds_dra_nodes_without_neuron_resources():
    from neuronplace.cli.plan import PlanInputError, fleet_objects

    nodes, slices = fleet_objects("inf2.xlarge=1,trn2.48xlarge=1:dra")
    nodes = {n["metadata"]["name"]: n for n in nodes}
    assert NEURONCORE_RESOURCE in nodes["inf2-xlarge-0"]["status"]["allocatable"]
    assert NEURONCORE_RESOURCE not in nodes["trn2-48xlarge-dra-0"]["status"]["allocatable"]
    # The DRA node's chips come from the slices the driver would publish for it, and only for it.
    assert [s["spec"]["nodeName"] for s in slices] == ["trn2-48xlarge-dra-0"]
    assert len(slices[0]["spec"]["devices"]) == 16
    with pytest.raises(PlanInputError, match=r"--fleet: fleet spec item 'trn2\.48xlarge=1:x'"):
        fleet_objects("trn2.48xlarge=1:x")


def test_plan_places_on_a_dra_node_through_its_slices():
    import datetime as dt

    from neuronplace.cli.plan import load_state, plan
    from neuronplace.local.manifests import inference
    from neuronplace.placement.ruling import Rules

    state = load_state("trn2.48xlarge=1:dra", None)
    spec = inference("tp", replicas=2, cores=32, namespace="default", deviceManagement="DRA")
    spec["metadata"]["uid"] = "u"
    rows = plan([spec], state, Rules(), dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert [row.get("node") for row in rows] == ["trn2-48xlarge-dra-0"] * 2, rows
