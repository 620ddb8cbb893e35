"""A replica's volumes → the nodes its pod can use (placement/volumes.py), and the allocator honouring it."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neuronplace.placement.fleet import Fleet
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.names import (
    BINDING_DIRECT,
    BINDING_SCHEDULER,
    REASON_UNSCHEDULABLE,
    REASON_VOLUME_NEEDS_SCHEDULER,
)
from neuronplace.placement.request import PlacementRequest, ReplicaPlacement, Unplaceable
from neuronplace.placement.search import place_one
from neuronplace.placement.volumes import (
    VolumeConstraint,
    claim_names,
    consumer_node,
    volume_constraint,
)
from support import builders
from support.builders import on_hosts, pv, pvc, storage_class, uses

NS = "default"  # support.builders.pvc's namespace
NODES = ("inf2-a", "inf2-b", "inf2-c")


def node(name, zone="z1"):
    labels = {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}
    return builders.node_inventory(name, labels=labels)


def fleet():
    return [node("inf2-a", "z1"), node("inf2-b", "z1"), node("inf2-c", "z2")]


def constraint(pod_spec, claims=(), volumes=(), classes=(), binding=BINDING_SCHEDULER):
    return volume_constraint(
        pod_spec,
        NS,
        {(c["metadata"]["namespace"], c["metadata"]["name"]): c for c in claims},
        {v["metadata"]["name"]: v for v in volumes},
        {c["metadata"]["name"]: c for c in classes},
        binding=binding,
    )


def allowed_nodes(result):
    """The nodes of ``fleet()`` that would take a replica with this constraint, each tried alone."""
    assert result.problem is None, result.problem
    request = PlacementRequest(inference=f"{NS}/web", cores_per_replica=2, volume_terms=result.node_terms)
    return {
        candidate.name
        for candidate in fleet()
        if isinstance(place_one(request, 0, [candidate], Ledger(), f"{NS}/web-0"), ReplicaPlacement)
    }


# ---- bound claims -----------------------------------------------------------------------------


def test_a_claim_bound_to_a_local_volume_allows_only_that_volumes_node():
    result = constraint(
        uses("data"),
        claims=[pvc("data", bound_to="pv-b")],
        volumes=[pv("pv-b", affinity=on_hosts("inf2-b"), phase="Bound")],
    )
    assert allowed_nodes(result) == {"inf2-b"}


def test_match_fields_on_the_node_name_count_too():
    affinity = {
        "required": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["inf2-c"]}]}]
        }
    }
    result = constraint(
        uses("data"), claims=[pvc("data", bound_to="pv")], volumes=[pv("pv", affinity=affinity, phase="Bound")]
    )
    assert allowed_nodes(result) == {"inf2-c"}


def test_terms_are_ored_and_expressions_anded_as_kubernetes_does():
    affinity = {
        "required": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["z1"]},
                        {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["inf2-a"]},
                    ]
                },
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["inf2-c"]}]},
            ]
        }
    }
    result = constraint(
        uses("data"), claims=[pvc("data", bound_to="pv")], volumes=[pv("pv", affinity=affinity, phase="Bound")]
    )
    assert allowed_nodes(result) == {"inf2-b", "inf2-c"}


def test_several_claims_must_all_hold():
    claims = [pvc("one", bound_to="pv-1"), pvc("two", bound_to="pv-2")]
    volumes = [
        pv("pv-1", affinity=on_hosts("inf2-a", "inf2-b"), phase="Bound"),
        pv("pv-2", affinity=on_hosts("inf2-b", "inf2-c"), phase="Bound"),
    ]
    result = constraint(uses("one", "two"), claims=claims, volumes=volumes)
    assert len(result.node_terms) == 2
    assert allowed_nodes(result) == {"inf2-b"}


def test_claims_whose_volumes_share_no_node_place_nowhere_and_say_why():
    claims = [pvc("one", bound_to="pv-1"), pvc("two", bound_to="pv-2")]
    volumes = [
        pv("pv-1", affinity=on_hosts("inf2-a"), phase="Bound"),
        pv("pv-2", affinity=on_hosts("inf2-c"), phase="Bound"),
    ]
    result = constraint(uses("one", "two"), claims=claims, volumes=volumes)
    request = PlacementRequest(inference=f"{NS}/web", cores_per_replica=2, volume_terms=result.node_terms)
    placed = place_one(request, 0, fleet(), Ledger(), f"{NS}/web-0")
    assert isinstance(placed, Unplaceable)
    assert "no node can take it: 3 where its volumes cannot be used" in placed.message, placed.message


def test_a_bound_volume_without_node_affinity_restricts_nothing():
    result = constraint(uses("data"), claims=[pvc("data", bound_to="nfs")], volumes=[pv("nfs", phase="Bound")])
    assert result.node_terms == () and result.problem is None
    assert allowed_nodes(result) == set(NODES)


def test_bound_claims_work_with_direct_binding_too():
    result = constraint(
        uses("data"),
        claims=[pvc("data", bound_to="pv-a")],
        volumes=[pv("pv-a", affinity=on_hosts("inf2-a"), phase="Bound")],
        binding=BINDING_DIRECT,
    )
    assert allowed_nodes(result) == {"inf2-a"}


def test_a_claim_bound_to_a_missing_volume_waits():
    result = constraint(uses("data"), claims=[pvc("data", bound_to="gone")])
    assert result.reason == REASON_UNSCHEDULABLE
    assert 'bound to persistentvolume "gone", which was not found' in result.problem


def test_a_malformed_volume_affinity_is_a_problem_not_an_exception():
    affinity = {"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "Near"}]}]}}
    result = constraint(uses("data"), claims=[pvc("data", bound_to="pv")], volumes=[pv("pv", affinity=affinity)])
    assert 'persistentvolume "pv" has a node affinity no node can match' in result.problem


# ---- claims the scheduler would wait for ---------------------------------------------------------


def test_a_missing_claim_waits_with_the_schedulers_words():
    result = constraint(uses("nope"))
    assert result.problem == 'persistentvolumeclaim "nope" not found'
    assert result.reason == REASON_UNSCHEDULABLE


def test_a_claim_being_deleted_waits():
    claim = pvc("data", bound_to="pv", deletionTimestamp="2026-11-30T12:00:00Z")
    result = constraint(uses("data"), claims=[claim], volumes=[pv("pv", phase="Bound")])
    assert result.problem == 'persistentvolumeclaim "data" is being deleted'


def test_an_unbound_immediate_claim_waits():
    result = constraint(
        uses("data"), claims=[pvc("data", storage_class="fast")], classes=[storage_class("fast", mode="Immediate")]
    )
    assert "pod has unbound immediate PersistentVolumeClaims" in result.problem
    # No class at all: only the volume controller binds it, at once, as for Immediate.
    result = constraint(uses("data"), claims=[pvc("data", storage_class="")])
    assert "unbound immediate" in result.problem


def test_a_claim_of_an_unknown_class_waits():
    result = constraint(uses("data"), claims=[pvc("data", storage_class="ghost")])
    assert 'storageclass.storage.k8s.io "ghost" not found' in result.problem


def test_a_lost_claim_waits():
    claim = pvc("data", bound_to="pv")
    claim["status"]["phase"] = "Lost"
    assert "lost its persistentvolume" in constraint(uses("data"), claims=[claim]).problem


# ---- WaitForFirstConsumer ----------------------------------------------------------------------------


def test_wait_for_first_consumer_without_provisioner_goes_where_an_available_volume_fits():
    volumes = [
        pv("small-a", affinity=on_hosts("inf2-a"), size="1Gi"),  # too small
        pv("rwx-b", affinity=on_hosts("inf2-b"), modes=("ReadWriteMany",)),  # wrong access mode
        pv("taken-a", affinity=on_hosts("inf2-a"), phase="Bound"),  # not Available
        pv("other-class-a", affinity=on_hosts("inf2-a"), storage_class="slow"),
        pv("block-a", affinity=on_hosts("inf2-a"), volumeMode="Block"),
        pv("kept-a", affinity=on_hosts("inf2-a"), claimRef={"namespace": NS, "name": "someone-else"}),
        pv("fits-c", affinity=on_hosts("inf2-c"), size="5Gi"),
    ]
    result = constraint(uses("data"), claims=[pvc("data")], volumes=volumes, classes=[storage_class("local")])
    assert allowed_nodes(result) == {"inf2-c"}


def test_every_fitting_volume_adds_its_nodes():
    volumes = [pv("on-a", affinity=on_hosts("inf2-a")), pv("on-c", affinity=on_hosts("inf2-c"), size="20Gi")]
    result = constraint(uses("data"), claims=[pvc("data")], volumes=volumes, classes=[storage_class("local")])
    assert allowed_nodes(result) == {"inf2-a", "inf2-c"}


def test_a_volume_kept_for_this_claim_counts_and_a_named_volume_is_the_only_one():
    kept = pv("kept-b", affinity=on_hosts("inf2-b"), claimRef={"namespace": NS, "name": "data"})
    other = pv("free-a", affinity=on_hosts("inf2-a"))
    result = constraint(uses("data"), claims=[pvc("data")], volumes=[kept, other], classes=[storage_class("local")])
    assert allowed_nodes(result) == {"inf2-a", "inf2-b"}
    named = pvc("data")
    named["spec"]["volumeName"] = "kept-b"
    result = constraint(uses("data"), claims=[named], volumes=[kept, other], classes=[storage_class("local")])
    assert allowed_nodes(result) == {"inf2-b"}


def test_a_fitting_volume_usable_anywhere_restricts_nothing():
    volumes = [pv("on-a", affinity=on_hosts("inf2-a")), pv("anywhere")]
    result = constraint(uses("data"), claims=[pvc("data")], volumes=volumes, classes=[storage_class("local")])
    assert result.node_terms == ()


def test_no_fitting_volume_waits_and_says_what_the_claim_needs():
    result = constraint(
        uses("data"),
        claims=[pvc("data", size="50Gi")],
        volumes=[pv("small", affinity=on_hosts("inf2-a"))],
        classes=[storage_class("local")],
    )
    assert result.reason == REASON_UNSCHEDULABLE
    assert "no Available persistentvolume of storage class local offers 50Gi ReadWriteOnce" in result.problem
    assert "didn't find available persistent volumes to bind" in result.problem


def test_capacity_compares_quantities_not_strings():
    volumes = [pv("on-b", affinity=on_hosts("inf2-b"), size="1Ti")]
    result = constraint(
        uses("data"), claims=[pvc("data", size="900G")], volumes=volumes, classes=[storage_class("local")]
    )
    assert allowed_nodes(result) == {"inf2-b"}


def test_direct_binding_refuses_a_claim_only_the_scheduler_can_bind():
    result = constraint(
        uses("data"),
        claims=[pvc("data")],
        volumes=[pv("on-a", affinity=on_hosts("inf2-a"))],
        classes=[storage_class("local")],
        binding=BINDING_DIRECT,
    )
    assert result.reason == REASON_VOLUME_NEEDS_SCHEDULER
    assert "WaitForFirstConsumer" in result.problem and "binding Scheduler" in result.problem


def test_a_provisioner_class_allows_its_topologies():
    zoned = storage_class(
        "ebs",
        provisioner="ebs.csi.aws.com",
        allowedTopologies=[{"matchLabelExpressions": [{"key": "topology.kubernetes.io/zone", "values": ["z2"]}]}],
    )
    result = constraint(uses("data"), claims=[pvc("data", storage_class="ebs")], classes=[zoned])
    assert allowed_nodes(result) == {"inf2-c"}
    anywhere = storage_class("gp3", provisioner="ebs.csi.aws.com")
    result = constraint(uses("data"), claims=[pvc("data", storage_class="gp3")], classes=[anywhere])
    assert result.node_terms == () and result.problem is None


def test_an_unset_class_means_the_default_class():
    claim = pvc("data", storage_class=None)
    classes = [storage_class("local", default=True), storage_class("other", mode="Immediate")]
    result = constraint(
        uses("data"), claims=[claim], volumes=[pv("on-b", affinity=on_hosts("inf2-b"))], classes=classes
    )
    assert allowed_nodes(result) == {"inf2-b"}


def test_replicas_sharing_a_claim_that_waits_for_a_local_volume_follow_the_first_one():
    volumes = [pv("on-a", affinity=on_hosts("inf2-a")), pv("on-b", affinity=on_hosts("inf2-b"))]
    result = constraint(uses("data"), claims=[pvc("data")], volumes=volumes, classes=[storage_class("local")])
    assert result.first_consumer
    assert allowed_nodes(result) == {"inf2-a", "inf2-b"}
    # Once a replica went to inf2-b, the claim will be bound to the volume there: the others follow.
    followed = VolumeConstraint(node_terms=result.on_node("inf2-b"))
    assert allowed_nodes(followed) == {"inf2-b"}
    assert allowed_nodes(VolumeConstraint(node_terms=result.on_node("inf2-c"))) == set()  # no volume there


def test_only_unbound_claims_of_pre_made_local_volumes_make_replicas_follow():
    local = [storage_class("local")]
    bound = constraint(
        uses("data"), claims=[pvc("data", bound_to="pv")], volumes=[pv("pv", phase="Bound")], classes=local
    )
    provisioned = constraint(
        uses("data"), claims=[pvc("data", storage_class="gp3")], classes=[storage_class("gp3", provisioner="ebs")]
    )
    template = {"storageClassName": "local", "accessModes": ["ReadWriteOnce"]}
    ephemeral = constraint(uses(ephemeral=template), volumes=[pv("on-a", affinity=on_hosts("inf2-a"))], classes=local)
    assert not bound.first_consumer and not provisioned.first_consumer and not ephemeral.first_consumer


def test_the_consumer_node_is_a_live_pods_node_bound_or_pinned():
    def pod(node=None, pinned=None, phase="Pending", deleting=False):
        spec = {"nodeName": node}
        if pinned:
            term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [pinned]}]}
            spec["affinity"] = {
                "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
            }
        meta = {"deletionTimestamp": "2026-11-30T12:00:00Z"} if deleting else {}
        return {"metadata": meta, "spec": spec, "status": {"phase": phase}}

    assert consumer_node([]) is None
    assert consumer_node([pod(pinned="inf2-c")]) == "inf2-c"
    assert consumer_node([pod(node="inf2-a", phase="Failed"), pod(node="inf2-b", deleting=True)]) is None
    assert consumer_node([pod(node="inf2-a", phase="Failed"), pod(node="inf2-b", phase="Running")]) == "inf2-b"


# ---- generic ephemeral volumes ----------------------------------------------------------------------


def test_an_ephemeral_volume_is_matched_from_its_claim_template():
    template = {
        "storageClassName": "local",
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "1Gi"}},
    }
    volumes = [
        pv("on-a", affinity=on_hosts("inf2-a")),
        pv("kept-b", affinity=on_hosts("inf2-b"), claimRef={"namespace": NS, "name": "web-0-scratch"}),
    ]
    result = constraint(uses(ephemeral=template), volumes=volumes, classes=[storage_class("local")])
    assert allowed_nodes(result) == {"inf2-a"}
    direct = constraint(
        uses(ephemeral=template), volumes=volumes, classes=[storage_class("local")], binding=BINDING_DIRECT
    )
    assert direct.reason == REASON_VOLUME_NEEDS_SCHEDULER and 'ephemeral volume "scratch"' in direct.problem


def test_an_ephemeral_volume_of_an_immediate_class_restricts_nothing():
    template = {
        "storageClassName": "fast",
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "1Gi"}},
    }
    result = constraint(uses(ephemeral=template), classes=[storage_class("fast", mode="Immediate")])
    assert result.node_terms == () and result.problem is None


def test_claim_names_lists_the_named_claims_only():
    spec = uses("a", "b", ephemeral={"storageClassName": "x"})
    spec["volumes"].append({"name": "cfg", "configMap": {"name": "c"}})
    assert claim_names(spec) == {"a", "b"}
    assert claim_names({"containers": []}) == frozenset()


# ---- the allocator's hook ---------------------------------------------------------------------------


def test_malformed_volume_terms_are_refused_by_the_request():
    with pytest.raises(ValueError, match="operator must be one of"):
        PlacementRequest(
            inference="a/b",
            cores_per_replica=2,
            volume_terms=(({"matchExpressions": [{"key": "k", "operator": "Near", "values": ["x"]}]},),),
        )


def test_requests_that_differ_only_in_volume_terms_do_not_share_cached_eligibility():
    shared = Fleet(fleet())
    for host in NODES:
        terms = (tuple(on_hosts(host)["required"]["nodeSelectorTerms"]),)
        request = PlacementRequest(inference=f"{NS}/web", cores_per_replica=2, volume_terms=terms)
        placed = place_one(request, 0, shared, Ledger(), f"{NS}/web-0")
        assert isinstance(placed, ReplicaPlacement) and placed.node == host


@given(st.lists(st.sets(st.sampled_from(NODES), min_size=1), min_size=1, max_size=3))
def test_placement_never_lands_where_a_bound_volume_cannot_be_used(hosts_per_claim):
    claims = [pvc(f"c{i}", bound_to=f"pv-{i}") for i in range(len(hosts_per_claim))]
    volumes = [pv(f"pv-{i}", affinity=on_hosts(*sorted(h)), phase="Bound") for i, h in enumerate(hosts_per_claim)]
    result = constraint(uses(*(c["metadata"]["name"] for c in claims)), claims=claims, volumes=volumes)
    usable = set(NODES).intersection(*hosts_per_claim)
    assert allowed_nodes(result) == usable
