"""The allocator's rules, one family and one rule at a time."""

import pytest

from neuronplace.placement.fleet import Fleet
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.request import PlacementRequest, ReplicaPlacement, Unplaceable
from neuronplace.placement.search import place, place_one
from neuronplace.runtime.coreset import CoreRange
from support.builders import inference_uid, managed_pod, node_inventory


def ledger_with(*held):
    """held: (node, "a-b") pairs of cores already taken."""
    pods = [managed_pod(f"old-{i}", n, c, inference="old") for i, (n, c) in enumerate(held)]
    return Ledger.from_pods(pods, [inference_uid("old")])


def one(request, nodes, ledger, pod="default/web-0", **kw):
    return place_one(request, 0, nodes, ledger, pod, **kw)


def req(cores, **kw):
    return PlacementRequest(inference="default/web", cores_per_replica=cores, **kw)


# ---- chips and contiguity ---------------------------------------------------------------------


def test_inf2_ranges_are_contiguous_and_chip_aligned():
    ledger = Ledger()
    results = place(
        req(8, processes_per_replica=2), range(3), [node_inventory("a")], ledger, lambda i: f"default/web-{i}"
    )
    assert [r.cores for r in results] == [CoreRange(0, 8), CoreRange(8, 8), CoreRange(16, 8)]
    assert results[1].devices == (4, 5, 6, 7)
    assert results[1].process_cores == (CoreRange(8, 4), CoreRange(12, 4))
    assert ledger.used_cores("a") == set(range(24))
    assert isinstance(one(req(1), [node_inventory("a")], ledger, pod="default/x"), Unplaceable)


def test_small_replica_never_straddles_a_chip():
    # Free cores 1 and 2 are adjacent but on two chips: a 2-core replica must not take them.
    ledger = ledger_with(("a", "0"), ("a", "3-23"))
    result = one(req(2), [node_inventory("a")], ledger)
    assert isinstance(result, Unplaceable)
    assert "largest free run is 2 on a" in result.message and "chip" in result.message
    assert one(req(1), [node_inventory("a")], ledger).cores == CoreRange(1, 1)


def test_small_replica_goes_inside_a_chip_after_a_single_core():
    ledger = ledger_with(("a", "0"))
    assert one(req(2), [node_inventory("a")], ledger).cores == CoreRange(2, 2)
    # inf1 has 4 cores per chip: 2 cores can start at 1 and stay inside chip 0.
    ledger = ledger_with(("b", "0"))
    assert one(req(2), [node_inventory("b", "inf1.24xlarge")], ledger).cores == CoreRange(1, 2)


def test_multi_chip_replica_starts_on_a_chip_boundary():
    ledger = ledger_with(("a", "0"))
    result = one(req(3), [node_inventory("a")], ledger)
    assert result.cores == CoreRange(2, 3) and result.devices == (1, 2)
    ledger = ledger_with(("b", "0-4"))
    assert one(req(6), [node_inventory("b", "inf1.6xlarge")], ledger).cores == CoreRange(8, 6)


def test_best_fit_picks_the_smallest_run_that_fits():
    # Free runs: 4-5 (2 cores) and 8-23 (16 cores): a 2-core replica fills the small hole.
    ledger = ledger_with(("a", "0-3"), ("a", "6-7"))
    assert one(req(2), [node_inventory("a")], ledger).cores == CoreRange(4, 2)
    # Runs 2-5 (4) and 10-23 (14) for 4 cores: the 4-run, lowest start.
    ledger = ledger_with(("a", "0-1"), ("a", "6-9"))
    assert one(req(4), [node_inventory("a")], ledger).cores == CoreRange(2, 4)


def test_aligned_start_is_a_multiple_of_the_count():
    ledger = ledger_with(("a", "0-1"))
    assert one(req(4, aligned=True), [node_inventory("a")], ledger).cores == CoreRange(4, 4)
    assert one(req(4), [node_inventory("a")], ledger_with(("a", "0-1"))).cores == CoreRange(2, 4)
    result = one(req(8, aligned=True), [node_inventory("a")], ledger_with(("a", "0-1"), ("a", "12-23")))
    assert isinstance(result, Unplaceable) and "multiple of 8" in result.message
    assert "largest free run is 10 on a, but no free run fits" in result.message


# ---- trn1 torus shapes ------------------------------------------------------------------------


@pytest.mark.parametrize("cores", [1, 2, 8, 16, 32])
def test_trn1_strict_accepts_device_group_shapes(cores):
    result = one(req(cores), [node_inventory("t", "trn1.32xlarge")], Ledger())
    assert isinstance(result, ReplicaPlacement) and result.cores == CoreRange(0, cores)


@pytest.mark.parametrize("cores, devices", [(4, 2), (6, 3), (12, 6), (24, 12)])
def test_trn1_strict_refuses_other_shapes_and_permissive_allows_them(cores, devices):
    strict = one(req(cores), [node_inventory("t", "trn1.32xlarge")], Ledger())
    assert isinstance(strict, Unplaceable)
    assert "1 trn1 torus node" in strict.message and "Strict" in strict.message
    permissive = one(req(cores, shape_policy="Permissive"), [node_inventory("t", "trn1.32xlarge")], Ledger())
    assert permissive.cores == CoreRange(0, cores) and len(permissive.devices) == devices


def test_trn1_strict_request_falls_to_a_ring_node():
    result = one(req(4), [node_inventory("t", "trn1.32xlarge"), node_inventory("z-inf2")], Ledger())
    assert result.node == "z-inf2"


def test_trn2_lnc1_has_eight_cores_per_chip():
    trn2 = node_inventory("t2", "trn2.48xlarge", labels={"neuronplace.io/lnc": "1"})
    ledger = ledger_with(("t2", "0"))
    result = one(req(8), [trn2], ledger)
    assert result.cores == CoreRange(8, 8) and result.devices == (1,)
    assert result.visible_cores == ("0-7",)


# ---- container-visible numbering ---------------------------------------------------------------


def test_visible_cores_device_local_and_global():
    ledger = ledger_with(("a", "0-5"))
    local = one(req(4, processes_per_replica=2), [node_inventory("a")], ledger, pod="default/w-0")
    assert local.cores == CoreRange(6, 4)
    assert local.visible_cores == ("0-1", "2-3")  # devices 3 and 4 are mounted as 0 and 1
    glob = one(req(4, processes_per_replica=4, numbering="global"), [node_inventory("a")], ledger, pod="default/w-1")
    assert glob.cores == CoreRange(10, 4)
    assert glob.visible_cores == ("10", "11", "12", "13")
    # device-local numbering of a range that starts mid-chip keeps its offset inside the chip
    inf1 = one(req(1), [node_inventory("b", "inf1.6xlarge")], ledger_with(("b", "0-4")))
    assert inf1.cores == CoreRange(5, 1) and inf1.devices == (1,) and inf1.visible_cores == ("1",)


# ---- choosing the node --------------------------------------------------------------------------


def test_binpack_prefers_the_fullest_node_that_fits_then_the_name():
    nodes = [node_inventory("a"), node_inventory("b"), node_inventory("c")]
    ledger = ledger_with(("b", "0-15"), ("c", "0-15"), ("a", "0-3"))
    assert one(req(4), nodes, ledger).node == "b"
    assert one(req(1), [node_inventory("b"), node_inventory("a")], Ledger()).node == "a"
    # b has 6 free cores (too few), c has exactly 8 contiguous: the fullest node that fits wins over a.
    ledger = ledger_with(("b", "0-17"), ("c", "0-15"))
    assert one(req(8), nodes, ledger).node == "c"


def test_binpack_skips_a_full_looking_node_without_a_contiguous_run():
    ledger = ledger_with(("b", "0-1"), ("b", "4-5"), ("b", "8-9"), ("b", "12-13"), ("b", "16-17"), ("b", "20-21"))
    # b has 12 free cores but no 4-run; a is empty.
    assert one(req(4), [node_inventory("a"), node_inventory("b")], ledger).node == "a"


def test_spread_puts_replicas_on_different_nodes():
    nodes = [node_inventory("a"), node_inventory("b"), node_inventory("c")]
    ledger = ledger_with(("c", "0-1"))
    results = place(req(2, strategy="Spread"), range(4), nodes, ledger, lambda i: f"default/web-{i}")
    assert [r.node for r in results] == ["a", "b", "c", "a"]
    binpacked = place(req(2), range(4), nodes, Ledger(), lambda i: f"default/web-{i}")
    assert {r.node for r in binpacked} == {"a"}


# ---- eligibility -------------------------------------------------------------------------------


def test_taints_need_tolerations():
    tainted = node_inventory("a", taints=[{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}])
    soft = node_inventory("b", taints=[{"key": "x", "effect": "PreferNoSchedule"}])
    assert one(req(1), [tainted, soft], Ledger()).node == "b"
    result = one(req(1), [tainted], Ledger())
    assert isinstance(result, Unplaceable) and "1 node excluded by taints" in result.message
    for toleration in (
        {"key": "dedicated", "operator": "Equal", "value": "ml"},
        {"key": "dedicated", "operator": "Exists"},
        {"operator": "Exists"},
        {"key": "dedicated", "value": "ml", "effect": "NoSchedule"},
    ):
        assert one(req(1, tolerations=(toleration,)), [tainted], Ledger()).node == "a", toleration
    for toleration in (
        {"key": "dedicated", "operator": "Equal", "value": "other"},
        {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"},
        {"key": "else", "operator": "Exists"},
    ):
        assert isinstance(one(req(1, tolerations=(toleration,)), [tainted], Ledger()), Unplaceable), toleration


def test_no_execute_taint_is_enforced():
    tainted = node_inventory("a", taints=[{"key": "k", "effect": "NoExecute"}])
    assert isinstance(one(req(1), [tainted], Ledger()), Unplaceable)


def test_node_selector():
    nodes = [node_inventory("a", labels={"pool": "x"}), node_inventory("b", labels={"pool": "y"})]
    assert one(req(1, node_selector={"pool": "y"}), nodes, Ledger()).node == "b"
    result = one(req(1, node_selector={"pool": "z"}), nodes, Ledger())
    assert "2 not matching the nodeSelector" in result.message


def affinity(*terms):
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}}


@pytest.mark.parametrize(
    "expression, expected",
    [
        ({"key": "zone", "operator": "In", "values": ["z2", "z3"]}, {"b"}),
        ({"key": "zone", "operator": "NotIn", "values": ["z1"]}, {"b", "c"}),
        ({"key": "gen", "operator": "Exists"}, {"a", "b"}),
        ({"key": "gen", "operator": "DoesNotExist"}, {"c"}),
        ({"key": "gen", "operator": "Gt", "values": ["2"]}, {"b"}),
        ({"key": "gen", "operator": "Lt", "values": ["3"]}, {"a"}),
    ],
)
def test_required_node_affinity(expression, expected):
    nodes = [
        node_inventory("a", labels={"zone": "z1", "gen": "2"}),
        node_inventory("b", labels={"zone": "z2", "gen": "3"}),
        node_inventory("c", labels={}),
    ]
    chosen = set()
    request = req(1, affinity=affinity({"matchExpressions": [expression]}))
    ledger = Ledger()
    for i in range(4):
        result = one(request, nodes, ledger, pod=f"default/p{i}")
        if isinstance(result, ReplicaPlacement):
            chosen.add(result.node)
            ledger.forget(f"default/p{i}")
            ledger.reserve(result.node, CoreRange(0, 24), f"default/fill-{result.node}")
    assert chosen == expected


def test_affinity_terms_are_ored_and_fields_match_the_name():
    nodes = [node_inventory("a", labels={"zone": "z1"}), node_inventory("b", labels={"zone": "z2"})]
    terms = affinity(
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["nowhere"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]},
    )
    assert one(req(1, affinity=terms), nodes, Ledger()).node == "b"
    empty_term = one(req(1, affinity=affinity({})), nodes, Ledger())
    assert isinstance(empty_term, Unplaceable) and "2 not matching the required node affinity" in empty_term.message


def test_ineligible_nodes_are_counted_in_the_reason():
    nodes = [
        node_inventory("a", cores=24),
        node_inventory("t1", taints=[{"key": "k", "effect": "NoSchedule"}]),
        node_inventory("t2", taints=[{"key": "k", "effect": "NoSchedule"}]),
        node_inventory("t3", taints=[{"key": "k", "effect": "NoExecute"}]),
        node_inventory("nr", ready=False),
        node_inventory("cd", unschedulable=True),
        node_inventory("unk", "x1.foo", cores=8),
    ]
    ledger = ledger_with(("a", "0-5"), ("a", "12-17"))
    result = one(req(8), nodes, ledger)
    assert isinstance(result, Unplaceable)
    assert result.message == (
        "needs 8 contiguous cores; largest free run is 6 on a; "
        "3 nodes excluded by taints, 1 cordoned, 1 NotReady, "
        "1 of unknown topology (unk: unknown instance type 'x1.foo' (set label neuronplace.io/topology, e.g. '12x2')); "
        "12 cores free in total on the 1 node that could take it"
    )


def test_too_small_nodes_and_no_nodes():
    result = one(req(4), [node_inventory("small", "inf2.xlarge")], Ledger())
    assert "1 with fewer than 4 cores" in result.message
    assert one(req(4), [], Ledger()).message == "needs 4 contiguous cores; there are no nodes"


def test_allocatable_below_topology_limits_the_cores():
    result = place(req(8), range(3), [node_inventory("a", cores=20)], Ledger(), lambda i: f"default/web-{i}")
    assert [type(r).__name__ for r in result] == ["ReplicaPlacement", "ReplicaPlacement", "Unplaceable"]
    assert "largest free run is 4 on a" in result[2].message


# ---- foreign pods, recreate, retries, determinism ------------------------------------------------


def test_foreign_pods_are_avoided():
    foreign = {
        "metadata": {"name": "f", "namespace": "x", "annotations": {"AWS_NEURON_IDS": "0,1"}},
        "spec": {"nodeName": "a", "containers": [{"resources": {"limits": {"aws.amazon.com/neuroncore": "2"}}}]},
        "status": {"phase": "Running"},
    }
    unknown = {
        "metadata": {"name": "g", "namespace": "x"},
        "spec": {"nodeName": "a", "containers": [{"resources": {"limits": {"aws.amazon.com/neuroncore": "4"}}}]},
        "status": {"phase": "Running"},
    }
    ledger = Ledger.from_pods([foreign, unknown])
    results = place(req(2), range(9), [node_inventory("a")], ledger, lambda i: f"default/web-{i}")
    placed = [r.cores for r in results if isinstance(r, ReplicaPlacement)]
    assert placed == [CoreRange(s, 2) for s in range(2, 20, 2)]
    assert isinstance(one(req(2), [node_inventory("a")], ledger, pod="default/more"), Unplaceable)


def test_prefer_keeps_the_same_cores_on_recreate():
    ledger = Ledger()
    first = one(req(4), [node_inventory("a"), node_inventory("b")], ledger, pod="default/web-0")
    ledger.forget("default/web-0")  # the pod was deleted; recreate it
    ledger.reserve("a", CoreRange(0, 2), "default/other")  # but its old place is now partly taken
    again = one(
        req(4),
        [node_inventory("a"), node_inventory("b")],
        ledger,
        pod="default/web-0",
        prefer=(first.node, first.cores),
    )
    assert again.cores != first.cores or again.node != first.node
    ledger.forget("default/web-0")
    kept = one(
        req(4), [node_inventory("a"), node_inventory("b")], ledger, pod="default/web-0", prefer=("b", CoreRange(8, 4))
    )
    assert (kept.node, kept.cores) == ("b", CoreRange(8, 4))


def test_prefer_that_breaks_a_rule_is_ignored():
    ledger = Ledger()
    result = one(req(2), [node_inventory("a")], ledger, prefer=("a", CoreRange(1, 2)))  # straddles chips 0 and 1
    assert result.cores == CoreRange(0, 2)


def test_placing_the_same_pod_again_returns_its_cores():
    ledger = ledger_with(("a", "0-1"))
    first = one(req(4), [node_inventory("a")], ledger)
    second = one(req(4), [node_inventory("a")], ledger)
    assert first == second and len(ledger.holdings("a")) == 2


def test_deterministic():
    def run():
        ledger = ledger_with(("a", "3"), ("b", "0-9"))
        nodes = [node_inventory("c"), node_inventory("a"), node_inventory("b"), node_inventory("t", "trn1.32xlarge")]
        out = []
        for size in (1, 2, 3, 4, 8, 16, 1, 2):
            done = len(out)
            out.extend(place(req(size), range(3), nodes, ledger, lambda i, s=size, o=done: f"default/p{o}-{s}-{i}"))
        return out

    assert run() == run()


def test_a_fleet_can_be_reused_and_gives_the_same_answers():
    nodes = [node_inventory("a"), node_inventory("b", "trn1.32xlarge")]
    fleet = Fleet(nodes)
    l1, l2 = Ledger(), Ledger()
    for i, size in enumerate((2, 8, 3, 16, 1)):
        assert one(req(size), fleet, l1, pod=f"default/{i}") == one(req(size), nodes, l2, pod=f"default/{i}")


# ---- malformed requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cores_per_replica": 6, "processes_per_replica": 4}, "not divisible"),
        ({"cores_per_replica": 0}, "cores_per_replica"),
        ({"cores_per_replica": 2, "processes_per_replica": 0}, "processes_per_replica"),
        ({"cores_per_replica": 2, "strategy": "Random"}, "strategy 'Random'"),
        ({"cores_per_replica": 2, "shape_policy": "Loose"}, "shape_policy"),
        ({"cores_per_replica": 2, "numbering": "local"}, "numbering"),
        ({"cores_per_replica": 2, "tolerations": ({"key": "k", "operator": "Maybe"},)}, "operator"),
        ({"cores_per_replica": 2, "tolerations": ({"operator": "Equal", "value": "v"},)}, "key is empty"),
        (
            {"cores_per_replica": 2, "affinity": affinity({"matchExpressions": [{"key": "k", "operator": "Near"}]})},
            "Near",
        ),
        (
            {
                "cores_per_replica": 2,
                "affinity": affinity({"matchExpressions": [{"key": "k", "operator": "Gt", "values": ["x"]}]}),
            },
            "integer",
        ),
        (
            {"cores_per_replica": 2, "affinity": affinity({"matchExpressions": [{"key": "k", "operator": "In"}]})},
            "at least one value",
        ),
        ({"cores_per_replica": 2, "node_selector": {"pool": 3}}, "node_selector"),
    ],
)
def test_malformed_requests_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PlacementRequest(inference="default/web", **kwargs)


def test_bad_replica_ordinal_raises_and_places_nothing():
    ledger = Ledger()
    with pytest.raises(ValueError, match="ordinals"):
        place(req(1), [0, -1], [node_inventory("a")], ledger, lambda i: f"default/web-{i}")
    assert ledger.used_cores("a") == set()


# ---- what the AWS device plugin + scheduler extension get wrong, impossible here ----------------------------------


def test_restart_rebuilds_the_same_ledger_from_pods():
    """The extension's usage maps go stale after restarts. Ours is the pods themselves."""
    nodes = [node_inventory("a"), node_inventory("b")]
    ledger = Ledger()
    placed = place(req(4), range(5), nodes, ledger, lambda i: f"default/web-{i}")
    pods = [managed_pod(f"web-{p.replica}", p.node, str(p.cores)) for p in placed]
    restarted = Ledger.from_pods(pods, [inference_uid("web")])
    for name in ("a", "b"):
        assert restarted.used_cores(name) == ledger.used_cores(name)
    # and the restarted operator continues exactly where the old one would have
    assert one(req(4), nodes, restarted, pod="default/web-5") == one(req(4), nodes, ledger, pod="default/web-5")


def test_scale_to_zero_releases_every_core():
    """Cores were not released after teardown. Deleted or finished pods hold nothing."""
    ledger = Ledger()
    place(req(8), range(3), [node_inventory("a")], ledger, lambda i: f"default/web-{i}")
    assert ledger.free_count("a") == 0
    for i in range(3):
        ledger.forget(f"default/web-{i}")
    assert ledger.used_cores("a") == set() and ledger.free_count("a") == 24
    assert one(req(24), [node_inventory("a")], ledger, pod="default/big").cores == CoreRange(0, 24)


def test_processes_of_one_replica_never_share_cores():
    """Multi-process pods got the same cores. Each process gets its own slice of the range."""
    result = one(req(8, processes_per_replica=4), [node_inventory("a")], ledger_with(("a", "0-1")))
    assert result.process_cores == (CoreRange(2, 2), CoreRange(4, 2), CoreRange(6, 2), CoreRange(8, 2))
    assert result.visible_cores == ("0-1", "2-3", "4-5", "6-7")
    assert len({c for part in result.process_cores for c in part.ids}) == 8
