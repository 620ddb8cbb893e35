"""The allocator's resource fit: cpu, memory and the rest checked beside the cores, in both reasons
and reservations."""

from neuronplace.placement.fleet import Fleet
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.request import PlacementRequest, ReplicaPlacement, Unplaceable
from neuronplace.placement.resources import CPU, MEMORY, PODS
from neuronplace.placement.search import place, place_one
from neuronplace.placement.usage import Usage
from neuronplace.runtime.coreset import CoreRange

GI = 2**30


def node(name, cpu="192", memory="768Gi", pods="110", **extra):
    allocatable = {"aws.amazon.com/neuroncore": "24", CPU: cpu, MEMORY: memory, PODS: pods, **extra}
    return inventory_from_node(
        {
            "metadata": {"name": name, "labels": {"node.kubernetes.io/instance-type": "inf2.48xlarge"}},
            "status": {"allocatable": allocatable, "conditions": [{"type": "Ready", "status": "True"}]},
        }
    )


def req(cores=2, **requests):
    return PlacementRequest(inference="ns/web", cores_per_replica=cores, requests=requests)


def foreign(name, node_name, cpu):
    return {
        "metadata": {"name": name, "namespace": "other"},
        "spec": {"nodeName": node_name, "containers": [{"name": "c", "resources": {"requests": {CPU: cpu}}}]},
        "status": {"phase": "Running"},
    }


def test_three_cpu_heavy_replicas_never_share_a_node_beyond_its_cpu():
    fleet = Fleet([node("a"), node("b")])
    ledger, usage = Ledger(), Usage()
    results = place(req(cpu=150_000), [0, 1, 2], fleet, ledger, lambda i: f"ns/web-{i}", usage=usage)
    assert [r.node for r in results[:2]] == ["a", "b"]
    third = results[2]
    assert isinstance(third, Unplaceable)
    assert "2 nodes with insufficient cpu (a: requested 150, 42 of 192 free)" in third.message
    assert all(usage.used(n)[CPU] <= 192_000 for n in ("a", "b"))


def test_without_usage_only_cores_are_placed():
    fleet = Fleet([node("a"), node("b")])
    results = place(req(cpu=150_000), [0, 1, 2], fleet, Ledger(), lambda i: f"ns/web-{i}")
    assert [r.node for r in results] == ["a", "a", "a"]  # BinPack: the fullest node that fits


def test_foreign_pods_count_and_the_reason_names_each_resource_with_its_count():
    fleet = Fleet([node("a"), node("b"), node("c", memory="1Gi")])
    usage = Usage.from_pods([foreign("big", "a", "100"), foreign("full", "b", "191500m")])
    result = place_one(req(cpu=100_000, memory=2 * GI), 0, fleet, Ledger(), "ns/web-0", usage=usage)
    assert isinstance(result, Unplaceable)
    assert result.message == (
        "needs 2 contiguous cores; no node can take it: 2 nodes with insufficient cpu "
        "(a: requested 100, 92 of 192 free), 1 node with insufficient memory (c: requested 2Gi, 1Gi of 1Gi free)"
    )


def test_a_full_node_takes_no_more_pods_even_for_a_pod_that_requests_nothing():
    fleet = Fleet([node("a", pods="1"), node("b", pods="2")])
    usage = Usage.from_pods([foreign("x", "a", "1"), foreign("y", "b", "1")])
    assert place_one(req(), 0, fleet, Ledger(), "ns/web-0", usage=usage).node == "b"
    message = place_one(req(), 1, fleet, Ledger(), "ns/web-1", usage=usage).message
    assert "2 nodes with insufficient pods (a: requested 1, 0 of 1 free)" in message


def test_an_extended_resource_the_node_lacks_excludes_it():
    fleet = Fleet([node("a"), node("b", **{"example.com/fpga": "1"})])
    assert place_one(req(**{"example.com/fpga": 1}), 0, fleet, Ledger(), "ns/web-0", usage=Usage()).node == "b"


def test_the_preferred_cores_are_given_up_when_the_node_lost_its_room():
    fleet = Fleet([node("a"), node("b")])
    usage = Usage.from_pods([foreign("big", "a", "100")])
    result = place_one(req(cpu=100_000), 0, fleet, Ledger(), "ns/web-0", prefer=("a", CoreRange(0, 2)), usage=usage)
    assert isinstance(result, ReplicaPlacement) and result.node == "b"


def test_a_retried_placement_is_not_refused_for_its_own_reservation():
    fleet = Fleet([node("a", cpu="150")])
    ledger, usage = Ledger(), Usage()
    first = place_one(req(cpu=150_000), 0, fleet, ledger, "ns/web-0", usage=usage)
    again = place_one(req(cpu=150_000), 0, fleet, ledger, "ns/web-0", usage=usage)
    assert (first.node, first.cores) == (again.node, again.cores) == ("a", CoreRange(0, 2))
    assert usage.used("a") == {CPU: 150_000, PODS: 1}


def test_spread_skips_nodes_without_room():
    fleet = Fleet([node("a"), node("b"), node("c")])
    usage = Usage.from_pods([foreign("big", "b", "191")])
    spread = PlacementRequest(inference="ns/web", cores_per_replica=2, strategy="Spread", requests={CPU: 2000})
    results = place(spread, [0, 1, 2], fleet, Ledger(), lambda i: f"ns/web-{i}", usage=usage)
    assert sorted(r.node for r in results) == ["a", "a", "c"]


def test_a_node_remembered_as_short_is_used_again_once_a_pod_there_goes():
    fleet = Fleet([node("a")])
    usage = Usage.from_pods([foreign("big", "a", "100")])
    assert isinstance(place_one(req(cpu=100_000), 0, fleet, Ledger(), "ns/web-0", usage=usage), Unplaceable)
    assert isinstance(place_one(req(cpu=100_000), 0, fleet, Ledger(), "ns/web-0", usage=usage), Unplaceable)
    usage.forget("other/big")
    assert place_one(req(cpu=100_000), 0, fleet, Ledger(), "ns/web-0", usage=usage).node == "a"
    # Another usage on the same fleet is judged on its own.
    assert place_one(req(cpu=100_000), 0, fleet, Ledger(), "ns/web-0", usage=Usage()).node == "a"
