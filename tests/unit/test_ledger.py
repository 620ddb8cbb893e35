"""The ledger rebuilt from pods: managed ranges, foreign pods, reservations, never two pods on one core."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuronplace.placement.ledger import Ledger
from neuronplace.placement.names import AWS_NEURON_IDS, CORES_ANNOTATION, ENV_NODE_CORES
from neuronplace.runtime.coreset import CoreRange
from support.builders import foreign_pod, inference_uid, managed_pod, node_inventory

TRUSTED = [inference_uid("web")]


def test_from_pods_reads_managed_ranges():
    ledger = Ledger.from_pods([managed_pod("web-0", "n1", "0-3"), managed_pod("web-1", "n1", "8-11")], TRUSTED)
    assert ledger.used_cores("n1") == set(range(4)) | set(range(8, 12))
    holdings = ledger.holdings("n1")
    assert [(h.pod, h.cores, h.managed, h.inference) for h in holdings] == [
        ("default/web-0", CoreRange(0, 4), True, "default/web"),
        ("default/web-1", CoreRange(8, 4), True, "default/web"),
    ]
    assert ledger.foreign() == []
    assert ledger.used_cores("elsewhere") == set()


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_terminated_pods_hold_nothing(phase):
    ledger = Ledger.from_pods(
        [managed_pod("web-0", "n1", "0-3", phase=phase), foreign_pod("f", "n1", cores=2, phase=phase)], TRUSTED
    )
    assert ledger.used_cores("n1") == set()


def test_unbound_pods_hold_nothing():
    pod = managed_pod("web-0", "n1", "0-3")
    del pod["spec"]["nodeName"]
    assert Ledger.from_pods([pod], TRUSTED).nodes() == []


def test_pods_without_neuron_resources_are_ignored():
    assert Ledger.from_pods([foreign_pod("plain", "n1")]).nodes() == []


def test_observe_is_idempotent_and_forget_frees():
    ledger = Ledger(TRUSTED)
    pod = managed_pod("web-0", "n1", "2-3")
    ledger.observe(pod)
    ledger.observe(pod)
    assert len(ledger.holdings("n1")) == 1 and ledger.used_cores("n1") == {2, 3}
    pod["metadata"]["annotations"][CORES_ANNOTATION] = "4-5"
    ledger.observe(pod)
    assert ledger.used_cores("n1") == {2, 3, 4, 5}  # its spec says 2-3: an edited annotation adds, never moves
    pod["status"]["phase"] = "Succeeded"
    ledger.observe(pod)
    assert ledger.used_cores("n1") == set()
    ledger.observe(managed_pod("web-0", "n1", "2-3"))
    ledger.forget("default/web-0")
    ledger.forget("default/never-existed")
    assert ledger.used_cores("n1") == set()


def test_reserve_refuses_a_second_pod_on_a_core():
    ledger = Ledger.from_pods([managed_pod("web-0", "n1", "0-3")], TRUSTED)
    with pytest.raises(ValueError, match=r"core\(s\) 2,3 held by default/web-0"):
        ledger.reserve("n1", CoreRange(2, 4), "default/web-1")
    # Nothing changed.
    assert ledger.used_cores("n1") == set(range(4))
    assert ledger.holding_of("default/web-1") is None
    ledger.reserve("n1", CoreRange(4, 4), "default/web-1", inference="default/web")
    assert ledger.used_cores("n1") == set(range(8))
    assert ledger.inference_cores("default/web") == {"n1": 8}


def test_reserve_again_is_a_no_op_and_a_new_range_replaces():
    ledger = Ledger()
    ledger.reserve("n1", CoreRange(0, 2), "ns/p")
    ledger.reserve("n1", CoreRange(0, 2), "ns/p")
    assert [h.cores for h in ledger.holdings("n1")] == [CoreRange(0, 2)]
    ledger.reserve("n1", CoreRange(1, 2), "ns/p")  # overlaps only its own old range
    assert ledger.used_cores("n1") == {1, 2}
    ledger.reserve("n2", CoreRange(0, 1), "ns/p")
    assert ledger.used_cores("n1") == set() and ledger.used_cores("n2") == {0}


def test_reserve_beyond_capacity_is_refused():
    ledger = Ledger()
    ledger.learn_nodes([node_inventory("n1")])
    with pytest.raises(ValueError, match="0-23"):
        ledger.reserve("n1", CoreRange(20, 8), "ns/p")


def test_observed_pod_replaces_its_reservation():
    ledger = Ledger(TRUSTED)
    ledger.reserve("n1", CoreRange(0, 4), "default/web-0", inference="default/web")
    ledger.observe(managed_pod("web-0", "n1", "0-3"))
    assert len(ledger.holdings("n1")) == 1
    assert ledger.inference_cores("default/web") == {"n1": 4}


def test_foreign_pod_with_exact_core_ids():
    ledger = Ledger.from_pods([foreign_pod("aws", "n1", cores=2, ids="2,3")])
    assert ledger.used_cores("n1") == {2, 3}
    [holding] = ledger.foreign()
    assert (holding.pod, holding.cores, holding.count, holding.managed, holding.exact) == (
        "other/aws",
        CoreRange(2, 2),
        2,
        False,
        True,
    )


def test_foreign_non_contiguous_ids_are_held_exactly():
    ledger = Ledger.from_pods([foreign_pod("aws", "n1", cores=2, ids="1,5")])
    assert ledger.used_cores("n1") == {1, 5}
    [holding] = ledger.foreign()
    assert holding.cores is None and holding.core_ids == (1, 5) and holding.count == 2


def test_foreign_device_ids_become_core_ids_once_the_node_is_known():
    ledger = Ledger.from_pods([foreign_pod("aws", "n1", devices=2, ids="3,4")])
    ledger.learn_nodes([node_inventory("n1")])
    assert ledger.used_cores("n1") == {6, 7, 8, 9}


def test_foreign_pod_without_ids_takes_the_highest_free_cores():
    pods = [
        managed_pod("web-0", "n1", "20-23"),
        foreign_pod("b", "n1", cores=2),
        foreign_pod("a", "n1", cores=3),
    ]
    ledger = Ledger.from_pods(pods, TRUSTED)
    ledger.learn_nodes([node_inventory("n1")])
    # Pod-key order: other/a takes 17-19 first, then other/b 15-16 (managed cores are never assumed).
    assert ledger.used_cores("n1") == set(range(15, 24))
    foreign = {h.pod: h for h in ledger.foreign()}
    assert foreign["other/a"].core_ids == (17, 18, 19) and not foreign["other/a"].exact
    assert foreign["other/b"].core_ids == (15, 16) and foreign["other/b"].count == 2
    assert foreign["other/a"].cores is None
    assert ledger.free_count("n1") == 15
    # The same pods in another order give the same ledger.
    again = Ledger.from_pods(reversed(pods), TRUSTED)
    again.learn_nodes([node_inventory("n1")])
    assert again.foreign() == ledger.foreign()


def test_foreign_device_count_uses_cores_per_chip():
    ledger = Ledger.from_pods([foreign_pod("d", "n1", devices=2)])
    ledger.learn_nodes([node_inventory("n1")])
    assert ledger.used_cores("n1") == {20, 21, 22, 23}


def test_init_containers_count_by_the_maximum_rule():
    ledger = Ledger.from_pods([foreign_pod("f", "n1", cores=1, init_cores=3, ids=None)])
    assert ledger.foreign()[0].count == 3


def test_managed_pod_with_a_bad_annotation_is_accounted_for_and_reported():
    pod = managed_pod("web-0", "n1", "0-1")
    pod["metadata"]["annotations"][CORES_ANNOTATION] = "3,5"
    del pod["metadata"]["annotations"][AWS_NEURON_IDS]
    ledger = Ledger.from_pods([pod], TRUSTED)
    ledger.learn_nodes([node_inventory("n1")])
    # Its spec says 0-1 (an annotation that is no range names nothing the device plugin reads).
    assert ledger.foreign() == []
    assert ledger.used_cores("n1") == {0, 1}
    assert [(i.node, i.pod, i.reason) for i in ledger.inconsistencies()] == [("n1", "default/web-0", "CoresMismatch")]


def test_overlapping_pods_stay_held_until_both_are_gone():
    ledger = Ledger.from_pods([managed_pod("a", "n1", "0-3"), managed_pod("b", "n1", "2-5")], TRUSTED)
    assert [(i.pod, i.reason) for i in ledger.inconsistencies()] == [
        ("default/a", "Overlap"),
        ("default/b", "Overlap"),
    ]
    ledger.forget("default/a")
    assert ledger.used_cores("n1") == {2, 3, 4, 5}
    assert ledger.inconsistencies() == []
    ledger.forget("default/b")
    assert ledger.used_cores("n1") == set()


def test_free_index_follows_changes():
    ledger = Ledger()
    ledger.learn_nodes([node_inventory("n1"), node_inventory("n2", "trn1.32xlarge", "32")])
    assert ledger.free_count("n1") == 24 and ledger.free_count("n2") == 32
    assert ledger.nodes_with_free(24) == ["n1"] and ledger.max_free == 32
    ledger.reserve("n2", CoreRange(0, 8), "ns/p")
    assert ledger.nodes_with_free(24) == ["n1", "n2"] and ledger.max_free == 24
    ledger.forget("ns/p")
    assert ledger.free_count("n2") == 32
    ledger.learn_nodes([node_inventory("n1")])  # n2 left the fleet
    assert ledger.free_count("n2") == 0 and ledger.max_free == 24


# ---- trust: ownership, not labels --------------------------------------------------------------


def reasons(ledger):
    return [(i.node, i.pod, i.reason) for i in ledger.inconsistencies()]


def test_a_hand_made_pod_with_our_label_and_no_request_holds_nothing():
    fake = managed_pod("fake", "n1", "0-23")
    del fake["metadata"]["ownerReferences"]
    fake["spec"]["containers"] = [{"name": "c"}]
    ledger = Ledger.from_pods([fake], TRUSTED)
    ledger.learn_nodes([node_inventory("n1")])
    assert ledger.used_cores("n1") == set() and ledger.free_count("n1") == 24
    assert reasons(ledger) == [("n1", "default/fake", "NotOwned")]
    ledger.forget("default/fake")
    assert ledger.inconsistencies() == []


def test_a_pod_is_ours_only_while_its_owner_uid_is_trusted():
    pod = managed_pod("web-0", "n1", "0-3")
    ledger = Ledger()
    ledger.learn_nodes([node_inventory("n1")])
    ledger.observe(pod)  # seen before its NeuronInference: foreign, held by its request and ids
    assert [(h.managed, h.core_ids) for h in ledger.holdings("n1")] == [(False, (0, 1, 2, 3))]
    assert reasons(ledger) == [("n1", "default/web-0", "NotOwned")] and ledger.inference_cores("default/web") == {}
    ledger.trust(inference_uid("web"))  # the resource arrives: the pod is re-judged
    assert [(h.managed, h.inference) for h in ledger.holdings("n1")] == [(True, "default/web")]
    assert ledger.inconsistencies() == [] and ledger.inference_cores("default/web") == {"n1": 4}
    ledger.distrust(inference_uid("web"))  # the resource is deleted; its pod still runs
    assert [(h.managed, h.core_ids) for h in ledger.holdings("n1")] == [(False, (0, 1, 2, 3))]
    assert ledger.inference_cores("default/web") == {} and ledger.free_count("n1") == 20
    ledger.forget("default/web-0")
    ledger.trust(inference_uid("web"))  # nothing left to re-judge
    assert ledger.holdings("n1") == []


def test_a_namesake_with_another_uid_is_not_trusted():
    pod = managed_pod("web-0", "n1", "0-3")
    pod["metadata"]["ownerReferences"][0]["uid"] = "uid-of-a-deleted-web"
    ledger = Ledger.from_pods([pod], TRUSTED)
    assert ledger.foreign()[0].pod == "default/web-0"
    assert Ledger.from_pods([pod], trust_any_inference=True).foreign() == []


@pytest.mark.parametrize(
    "change",
    [
        lambda pod: pod["spec"]["containers"][0]["resources"]["limits"].update({"aws.amazon.com/neuron": "1"}),
        lambda pod: pod["metadata"]["ownerReferences"][0].update({"controller": False}),
        lambda pod: pod["metadata"]["ownerReferences"][0].update({"kind": "Deployment"}),
    ],
    ids=["device-request", "not-controller", "other-kind"],
)
def test_a_pod_whose_claim_disagrees_is_held_by_its_request(change):
    pod = managed_pod("web-0", "n1", "0-3")
    change(pod)
    ledger = Ledger.from_pods([pod], TRUSTED)
    ledger.learn_nodes([node_inventory("n1")])
    [holding] = ledger.foreign()
    assert {0, 1, 2, 3} <= set(holding.core_ids)  # its AWS_NEURON_IDS, never fewer than it requests
    assert ledger.inference_cores("default/web") == {}
    [(_, _, reason)] = reasons(ledger)
    assert reason in ("CoresMismatch", "NotOwned")


def test_fewer_ids_than_requested_hold_the_ids_plus_assumed_cores():
    short = foreign_pod("short", "n1", cores=4, ids="0,1")
    ledger = Ledger.from_pods([short])
    ledger.learn_nodes([node_inventory("n1")])
    [holding] = ledger.foreign()
    assert holding.core_ids == (0, 1, 22, 23) and holding.count == 4 and not holding.exact
    assert reasons(ledger) == [("n1", "other/short", "NeuronIdsMismatch")]
    with pytest.raises(ValueError, match="held by other/short"):
        ledger.reserve("n1", CoreRange(0, 2), "default/web-0")
    with pytest.raises(ValueError, match="held by other/short"):
        ledger.reserve("n1", CoreRange(20, 4), "default/web-0")


def test_more_ids_than_requested_are_all_held():
    ledger = Ledger.from_pods([foreign_pod("long", "n1", cores=1, ids="4,5,6")])
    assert ledger.used_cores("n1") == {4, 5, 6}
    assert ledger.foreign()[0].count == 3
    assert reasons(ledger) == [("n1", "other/long", "NeuronIdsMismatch")]


def test_device_ids_short_of_the_request_assume_whole_chips():
    ledger = Ledger.from_pods([foreign_pod("d", "n1", devices=2, ids="0")])
    ledger.learn_nodes([node_inventory("n1")])
    assert ledger.used_cores("n1") == {0, 1, 22, 23}


pod_shapes = st.fixed_dictionaries(
    {
        "node": st.sampled_from(["n1", "n2"]),
        "request": st.integers(0, 6),
        "devices": st.integers(0, 1),
        "ids": st.none() | st.lists(st.integers(0, 23), max_size=8, unique=True),
        "range": st.none() | st.tuples(st.integers(0, 23), st.integers(1, 8)),
        "labelled": st.booleans(),
        "owner": st.sampled_from([None, "trusted", "untrusted"]),
        "env": st.booleans(),  # the range is also in the spec's NEURONPLACE_NODE_CORES
    }
)


def pod_of(index, shape):
    limits = {}
    if shape["request"]:
        limits["aws.amazon.com/neuroncore"] = str(shape["request"])
    if shape["devices"]:
        limits["aws.amazon.com/neuron"] = str(shape["devices"])
    meta = {"name": f"p{index}", "namespace": "default", "labels": {}, "annotations": {}}
    if shape["labelled"]:
        meta["labels"]["neuronplace.io/inference"] = "web"
    if shape["range"]:
        start, count = shape["range"]
        meta["annotations"][CORES_ANNOTATION] = str(CoreRange(start, min(count, 24 - start)))
    if shape["ids"] is not None:
        meta["annotations"][AWS_NEURON_IDS] = ",".join(map(str, sorted(shape["ids"])))
    if shape["owner"]:
        uid = inference_uid("web") if shape["owner"] == "trusted" else "uid-someone-else"
        meta["ownerReferences"] = [
            {
                "apiVersion": "neuronplace.io/v1alpha1",
                "kind": "NeuronInference",
                "name": "web",
                "uid": uid,
                "controller": True,
            }
        ]
    container = {"name": "c", "resources": {"limits": limits}}
    if shape["env"] and shape["range"]:
        container["env"] = [{"name": ENV_NODE_CORES, "value": meta["annotations"][CORES_ANNOTATION]}]
    return {"metadata": meta, "spec": {"nodeName": shape["node"], "containers": [container]}}


@settings(max_examples=150, deadline=None)
@given(
    st.lists(pod_shapes, max_size=12),
    st.lists(st.tuples(st.sampled_from(["n1", "n2"]), st.integers(0, 23), st.integers(1, 6)), max_size=12),
)
def test_whatever_the_pods_say_no_core_gets_two_pods_and_nobody_holds_less_than_requested(shapes, wanted):
    """Pods of every shape (fake labels, foreign owners, short or long id lists, ranges beyond the
    request): a reservation never gets a core a pod holds, an untrusted pod holds exactly its
    listed ids plus what they fall short of its request, and only trusted pods count as ours."""
    pods = [pod_of(i, shape) for i, shape in enumerate(shapes)]
    ledger = Ledger.from_pods(pods, TRUSTED)
    ledger.learn_nodes([node_inventory("n1"), node_inventory("n2")])
    for pod, shape in zip(pods, shapes):
        holding = ledger.holding_of(f"default/{pod['metadata']['name']}")
        asked = shape["request"] + shape["devices"] * 2  # inf2: 2 cores per chip
        if holding is None:
            assert asked == 0
            continue
        listed = set()
        if shape["ids"]:
            listed = set(shape["ids"]) if shape["request"] else {d * 2 + c for d in shape["ids"] for c in (0, 1)}
        assert listed <= set(holding.core_ids)
        given = CoreRange.parse(pod["metadata"]["annotations"][CORES_ANNOTATION]) if shape["range"] else None
        in_spec = shape["env"] and given is not None and given.count == shape["request"]
        if in_spec:  # the spec's range is held, ours or not
            assert set(given.ids) <= set(holding.core_ids)
        if holding.managed:
            assert shape["owner"] == "trusted" and in_spec and not shape["devices"]
            assert holding.count >= shape["request"]
            continue
        if in_spec:
            continue  # the spec's range is held too
        assert holding.count == max(len(listed), asked)
    for index, (node, start, count) in enumerate(wanted):
        cores = CoreRange(start, min(count, 24 - start))
        held = {c for h in ledger.holdings(node) if h.pod != f"default/r{index}" for c in h.core_ids}
        if held & set(cores.ids):
            with pytest.raises(ValueError):
                ledger.reserve(node, cores, f"default/r{index}")
        else:
            ledger.reserve(node, cores, f"default/r{index}")
            assert set(cores.ids) <= ledger.used_cores(node)
    for node in ("n1", "n2"):
        assert ledger.free_count(node) == 24 - len(ledger.used_cores(node) & set(range(24)))
