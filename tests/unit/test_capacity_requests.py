"""Capacity requests: the pod built for a replica that fits nowhere, which requests to create and
delete, that the ledger and the usage never count them, and one reconcile against a fake API (the
order of deletes and creates, scale-down, the setting, the WaitingForCapacity condition)."""

import argparse
import functools
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from neuronplace.cli import run as run_cli
from neuronplace.local.fleet import KWOK_TOLERATION, build_node
from neuronplace.operator.cache import Cache
from neuronplace.operator.reconciler import Reconciler
from neuronplace.operator.settings import OperatorSettings
from neuronplace.operator.writes import Writer
from neuronplace.placement import capacity_requests as cp
from neuronplace.placement.capacity_upkeep import SETTLE_SECONDS
from neuronplace.placement.claims import node_of, pinned_node
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.names import (
    CAPACITY_PRIORITY_CLASS,
    CAPACITY_REQUEST_LABEL,
    CONDITION_PLACED,
    CONDITION_WAITING_FOR_CAPACITY,
    INFERENCE_LABEL,
    NEURONCORE_RESOURCE,
    REASON_CAPACITY_REQUESTED,
    REASON_UNSCHEDULABLE,
    TEMPLATE_HASH_ANNOTATION,
)
from neuronplace.placement.pods import build_pod
from neuronplace.placement.podsecurity import TemplatePolicy, check_template
from neuronplace.placement.replica_pods import ordinal_of
from neuronplace.placement.request import placement_request
from neuronplace.placement.search import place_one
from neuronplace.placement.usage import Usage
from support import builders
from support.builders import kwok_node
from support.fake_api import FakeApi

# The caller's clock: placement reads none, it is given the time.
NOW_NS = 1_795_860_000_000_000_000

NAMESPACE = "ml"
KEY = (NAMESPACE, "bert")
IMAGE = "registry.k8s.io/pause:3.10"
SELECTOR_TERM = {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]}


# The resource every test here reconciles: ml/bert, 2 replicas of 2 cores.
inference = functools.partial(
    builders.inference, "bert", namespace=NAMESPACE, uid="uid-1", generation=1, replicas=2, image="bert:1"
)


def request(replica, uid="uid-1", node=None, wanted_hash="h", deleting=False, name=None):
    pod = cp.build_capacity_request(inference(uid=uid), replica, image=IMAGE)
    pod["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] = wanted_hash
    if name:
        pod["metadata"]["name"] = name
    if node:
        pod["spec"]["nodeName"] = node
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2026-11-30T12:00:00Z"
    return pod


# ---- the pod ---------------------------------------------------------------------------------------


def test_the_request_asks_what_the_replica_needs_where_it_may_go():
    template = {
        "nodeSelector": {"team": "ml"},
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "affinity": {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [SELECTOR_TERM]}}
        },
        "containers": [
            {"name": "model", "image": "bert:1", "resources": {"requests": {"cpu": "3", "memory": "8Gi"}}},
            {"name": "sidecar", "image": "log:1", "resources": {"requests": {"cpu": "500m"}}},
        ],
    }
    placement = {
        "nodeSelector": {"node.kubernetes.io/instance-type": "inf2.48xlarge"},
        "tolerations": [KWOK_TOLERATION],
    }
    inf = inference(
        cores=8,
        processes=2,
        template_spec=template,
        tolerations=placement["tolerations"],
        nodeSelector=placement["nodeSelector"],
    )
    pod = cp.build_capacity_request(inf, 1, image=IMAGE)
    spec = pod["spec"]
    (container,) = spec["containers"]
    # The replica runs its first container once per process: 2 x 3 cpu + the sidecar's 0.5.
    assert container["resources"]["requests"] == {
        "cpu": "6500m",
        "memory": "16Gi",
        NEURONCORE_RESOURCE: "8",
    }
    assert container["resources"]["limits"] == {NEURONCORE_RESOURCE: "8"}
    assert container["image"] == IMAGE
    assert spec["nodeSelector"] == {"team": "ml", "node.kubernetes.io/instance-type": "inf2.48xlarge"}
    assert spec["tolerations"] == [{"key": "gpu", "operator": "Exists"}, KWOK_TOLERATION]
    assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [SELECTOR_TERM]
    }
    assert spec["priorityClassName"] == CAPACITY_PRIORITY_CLASS
    assert spec["terminationGracePeriodSeconds"] == 0
    # Unbound and not pinned: kube-scheduler and the autoscaler may put it on any matching node.
    assert "nodeName" not in spec and pinned_node(pod) is None and node_of(pod) is None
    assert "matchFields" not in json.dumps(spec)  # Karpenter ignores pods that use matchFields


def test_the_request_is_labelled_owned_and_no_replica_pod():
    pod = cp.build_capacity_request(inference(), 3, image=IMAGE)
    meta = pod["metadata"]
    assert meta["name"] == "bert-3-capacity"
    assert meta["labels"][CAPACITY_REQUEST_LABEL] == "bert" and INFERENCE_LABEL not in meta["labels"]
    (owner,) = meta["ownerReferences"]
    assert owner["uid"] == "uid-1" and owner["controller"] and owner["kind"] == "NeuronInference"
    # No NeuronInference's replica can have its name (replica names end in the ordinal).
    assert ordinal_of(pod, "bert") is None and ordinal_of(pod, "bert-3") is None


def test_the_request_passes_the_restricted_pod_security_level():
    pod = cp.build_capacity_request(inference(), 0, image=IMAGE)
    assert (
        check_template({"metadata": {}, "spec": pod["spec"]}, TemplatePolicy(level="restricted"), namespace=NAMESPACE)
        == []
    )


def test_the_priority_class_is_negative_and_never_preempts():
    klass = cp.build_priority_class()
    assert klass["metadata"]["name"] == CAPACITY_PRIORITY_CLASS
    assert -10 <= klass["value"] < 0  # below any replica; cluster-autoscaler ignores pods under -10
    assert klass["preemptionPolicy"] == "Never" and klass["globalDefault"] is False


def test_a_changed_spec_changes_the_hash():
    one = cp.build_capacity_request(inference(cores=2), 0, image=IMAGE)
    two = cp.build_capacity_request(inference(cores=4), 0, image=IMAGE)
    again = cp.build_capacity_request(inference(cores=2), 1, image=IMAGE)
    hashes = [p["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] for p in (one, two, again)]
    assert hashes[0] != hashes[1] and hashes[0] == hashes[2]


# ---- which to create and delete ------------------------------------------------------------------


def test_exactly_one_request_per_waiting_replica():
    assert cp.plan("uid-1", {0, 1}, [], "h") == cp.Plan(create=(0, 1))
    existing = [request(0), request(1), request(1, name="bert-1-capacity-dup"), request(2)]
    plan = cp.plan("uid-1", {0, 1}, existing, "h")
    assert plan.create == () and sorted(plan.delete) == ["bert-1-capacity-dup", "bert-2-capacity"]
    assert plan.assigned == {0: "bert-0-capacity", 1: "bert-1-capacity"}


def test_requests_go_when_placed_scaled_down_or_outdated():
    existing = [request(0), request(1, wanted_hash="old")]
    gone = cp.plan("uid-1", set(), existing, "h")
    assert gone.create == () and sorted(gone.delete) == ["bert-0-capacity", "bert-1-capacity"]
    # Any request asking the right thing stands for any waiting replica; the outdated one goes.
    swapped = cp.plan("uid-1", {1}, existing, "h")
    assert swapped == cp.Plan(delete=("bert-1-capacity",), assigned={1: "bert-0-capacity"})


def test_a_bound_request_is_kept_before_a_pending_one():
    existing = [request(3), request(2, node="n9")]
    assert cp.plan("uid-1", {0}, existing, "h") == cp.Plan(delete=("bert-3-capacity",), assigned={0: "bert-2-capacity"})


def test_an_older_namesakes_and_deleting_requests_are_left_alone():
    existing = [request(0, uid="old-uid"), request(1, deleting=True)]
    assert cp.plan("uid-1", {0, 1}, existing, "h") == cp.Plan(create=(0, 1))


def test_displaced_requests_are_the_newest_that_do_not_fit():
    bound = [("a", 8), ("b", 8), ("c", 4)]
    assert cp.displaced(24, bound) == []
    assert cp.displaced(16, bound) == ["c"]
    assert cp.displaced(10, bound) == ["c", "b"]
    assert cp.displaced(0, bound) == ["c", "b", "a"]


# ---- never counted -------------------------------------------------------------------------------


def test_a_bound_request_holds_no_cores_once_its_owner_is_trusted():
    node = build_node("n1", "inf2.48xlarge")
    pod = request(0, node="n1")
    ledger = Ledger()
    ledger.learn_nodes([inventory_from_node(node)])
    ledger.observe(pod)
    assert ledger.free_count("n1") == 24 - 2  # unknown owner: foreign, held conservatively
    ledger.trust("uid-1")
    assert ledger.free_count("n1") == 24 and not ledger.holdings("n1")


def test_a_pod_that_only_looks_like_a_request_still_holds_cores():
    node = build_node("n1", "inf2.48xlarge")
    pod = request(0, node="n1")
    pod["metadata"]["labels"][CAPACITY_REQUEST_LABEL] = "someone-else"  # not its controller's name
    ledger = Ledger(["uid-1"])
    ledger.learn_nodes([inventory_from_node(node)])
    ledger.observe(pod)
    assert ledger.free_count("n1") == 22


def test_the_usage_never_counts_a_request():
    usage = Usage.from_pods([request(0, node="n1")])
    assert usage.used("n1") == {} and usage.pods() == set()


# ---- one reconcile against a fake API ------------------------------------------------------------


def pod_writes(api: FakeApi) -> list[tuple[str, str]]:
    """:meth:`FakeApi.pod_writes`; a capacity request is always deleted at once (grace 0)."""
    for verb, _namespace, name, grace in api.calls:
        assert verb != "delete" or grace == 0 or not name.endswith("-capacity"), (name, grace)
    return api.pod_writes()


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def setup(pool, resource, nodes=("n1",), settings=None, binds=True):
    """A reconciler in Scheduler binding (capacity requests need it) whose replica pods kube-scheduler
    binds at once (``binds``), so they count on their node at once (see the settle test)."""
    settings = settings or OperatorSettings()
    api = FakeApi(binds=binds)
    cache = Cache()
    for name in nodes:
        cache.observe_node(kwok_node(name))
    cache.apply_inference("ADDED", resource)
    return api, cache, Reconciler(settings, cache, Writer(core=api, custom=api), pool)


def conditions(api):
    return {c["type"]: c for c in api.statuses[-1]["conditions"]}


def test_a_replica_that_fits_nowhere_gets_one_request_and_the_status_says_so(pool):
    api, cache, reconciler = setup(pool, inference(replicas=2, cores=2))  # one 2-core node: room for one
    reconciler.reconcile(KEY)
    assert pod_writes(api) == [("create", "bert-0"), ("create", "bert-1-capacity")]
    assert conditions(api)[CONDITION_PLACED]["reason"] == REASON_UNSCHEDULABLE
    waiting = conditions(api)[CONDITION_WAITING_FOR_CAPACITY]
    assert waiting["status"] == "True" and waiting["reason"] == REASON_CAPACITY_REQUESTED
    assert waiting["message"].startswith("replica 1: waiting for a new node")
    # The request is cached for its resource and counted nowhere.
    assert set(cache.capacity_requests[KEY]) == {"bert-1-capacity"}
    assert cache.ledger.free_count("n1") == 0 and not cache.usage.held_by("ml/bert-1-capacity")
    reconciler.reconcile(KEY)  # nothing new: the request is there
    assert len(pod_writes(api)) == 2


def test_when_a_node_comes_the_request_goes_before_the_replica_is_created(pool):
    api, cache, reconciler = setup(pool, inference(replicas=2, cores=2))
    reconciler.reconcile(KEY)
    # kube-scheduler binds the request to the node the autoscaler made; the node appears.
    cache.apply_pod("MODIFIED", request_as_bound(cache, "n2"))
    cache.apply_node("ADDED", kwok_node("n2"))
    api.calls.clear()
    reconciler.reconcile(KEY)
    assert pod_writes(api) == [("delete", "bert-1-capacity"), ("create", "bert-1")]
    assert KEY not in cache.capacity_requests
    assert CONDITION_WAITING_FOR_CAPACITY not in conditions(api)


def test_a_replica_placed_on_a_node_deletes_the_requests_there_that_no_longer_fit(pool):
    api, cache, reconciler = setup(pool, inference(replicas=2, cores=2), nodes=())
    reconciler.reconcile(KEY)
    assert sorted(cache.capacity_requests[KEY]) == ["bert-0-capacity", "bert-1-capacity"]
    # Both requests were bound to a new 2-core node; only one replica fits there, the other's
    # request must go too, or kube-scheduler would count 4 cores on a 2-core node.
    for name in ("bert-0-capacity", "bert-1-capacity"):
        cache.apply_pod("MODIFIED", request_as_bound(cache, "n2", name))
    cache.apply_node("ADDED", kwok_node("n2"))
    api.calls.clear()
    reconciler.reconcile(KEY)
    deleted = [name for call, name in pod_writes(api) if call == "delete"]
    assert sorted(deleted) == ["bert-0-capacity", "bert-1-capacity"]
    assert pod_writes(api).index(("create", "bert-0")) > max(pod_writes(api).index(("delete", n)) for n in deleted)
    assert pod_writes(api)[-1] == ("create", "bert-1-capacity")  # still waiting: asks again


def test_scaling_to_zero_or_an_invalid_spec_leaves_no_request(pool):
    api, cache, reconciler = setup(pool, inference(replicas=2, cores=2))
    reconciler.reconcile(KEY)
    cache.apply_inference("MODIFIED", inference(replicas=1, cores=2))
    reconciler.reconcile(KEY)
    assert ("delete", "bert-1-capacity") in pod_writes(api) and KEY not in cache.capacity_requests
    cache.apply_inference("MODIFIED", inference(replicas=3, cores=2))
    reconciler.reconcile(KEY)
    assert len(cache.capacity_requests[KEY]) == 2
    bad = inference(replicas=3, cores=2)
    bad["spec"]["template"]["spec"]["nodeName"] = "n1"
    cache.apply_inference("MODIFIED", bad)
    reconciler.reconcile(KEY)
    assert KEY not in cache.capacity_requests


def test_with_the_setting_off_no_request_is_made(pool):
    api, _, reconciler = setup(
        pool, inference(replicas=2, cores=2), settings=OperatorSettings(binding="Direct", capacity_requests=False)
    )
    reconciler.reconcile(KEY)
    assert pod_writes(api) == [("create", "bert-0")]
    assert CONDITION_WAITING_FOR_CAPACITY not in conditions(api)


def request_as_bound(cache, node, name="bert-1-capacity"):
    pod = cp.build_capacity_request(cache.inferences[KEY], int(name.split("-")[1]), image=IMAGE)
    pod["spec"]["nodeName"] = node
    return pod


# ---- the setting -----------------------------------------------------------------------------------


def test_the_setting_from_env_and_flag():
    assert OperatorSettings().capacity_requests is True
    assert OperatorSettings.from_env({"NEURONPLACE_CAPACITY_REQUESTS": "false"}).capacity_requests is False
    env = OperatorSettings(capacity_request_image="example/pause:1").to_env()
    assert OperatorSettings.from_env(env).capacity_request_image == "example/pause:1"
    parser = argparse.ArgumentParser()
    run_cli.configure(parser)
    settings = run_cli.settings_from_args(
        parser.parse_args(["--no-capacity-requests", "--capacity-request-image", "x/pause:2"])
    )
    assert settings.capacity_requests is False and settings.capacity_request_image == "x/pause:2"
    with pytest.raises(ValueError):
        OperatorSettings(capacity_request_image=" ")


def test_the_chart_installs_the_same_priority_class():
    template = (Path(__file__).parents[2] / "charts/neuronplace/templates/priorityclass.yaml").read_text()
    klass = cp.build_priority_class()
    assert f"\nvalue: {klass['value']}\n" in template
    assert f"\npreemptionPolicy: {klass['preemptionPolicy']}\n" in template
    values = yaml.safe_load((Path(__file__).parents[2] / "charts/neuronplace/values.yaml").read_text())["operator"]
    defaults = OperatorSettings()
    assert values["capacityPriorityClass"] == defaults.capacity_priority_class == klass["metadata"]["name"]
    assert values["capacityRequestImage"] == defaults.capacity_request_image
    assert values["capacityRequests"] is defaults.capacity_requests


def test_a_replica_kept_off_a_node_only_by_how_its_free_cores_lie_gets_no_request(pool):
    api, cache, reconciler = setup(pool, inference(replicas=1, cores=2), nodes=())
    cache.observe_node(kwok_node("big", "inf2.48xlarge"))
    # A foreign pod holds every odd core: 12 cores are free by count, no two of them side by side.
    odd = ",".join(str(core) for core in range(1, 24, 2))
    foreign = {
        "metadata": {"name": "other", "namespace": "tenant", "annotations": {"AWS_NEURON_IDS": odd}},
        "spec": {
            "nodeName": "big",
            "containers": [{"name": "c", "image": "x", "resources": {"limits": {NEURONCORE_RESOURCE: "12"}}}],
        },
        "status": {"phase": "Running"},
    }
    cache.apply_pod("ADDED", foreign)
    reconciler.reconcile(KEY)
    assert pod_writes(api) == []  # kube-scheduler would bind a request to "big": no node would be added
    placed = conditions(api)[CONDITION_PLACED]
    assert placed["reason"] == REASON_UNSCHEDULABLE and "no capacity request" in placed["message"]
    assert "big" in placed["message"] and CONDITION_WAITING_FOR_CAPACITY not in conditions(api)
    cache.apply_pod("DELETED", foreign)  # now the replica fits there
    reconciler.reconcile(KEY)
    assert pod_writes(api) == [("create", "bert-0")]


def test_no_request_is_made_while_a_pinned_replica_pod_waits_to_be_bound(pool):
    # kube-scheduler does not count a pinned pod on its node until it binds it: a request made
    # meanwhile could be bound into the room that pod is about to take.
    api, cache, reconciler = setup(pool, inference(replicas=2, cores=2), binds=False)
    assert reconciler.reconcile(KEY) == SETTLE_SECONDS
    assert pod_writes(api) == [("create", "bert-0")]
    assert "asked once the placed replica pods are bound" in conditions(api)[CONDITION_WAITING_FOR_CAPACITY]["message"]
    bound = build_pod(
        cache.inferences[KEY],
        place_one(
            placement_request(cache.inferences[KEY], "device-local"),
            0,
            [inventory_from_node(kwok_node("n1"))],
            Ledger(),
            "ml/bert-0",
        ),
        binding="Direct",
        now_ns=NOW_NS,
    )
    cache.apply_pod("MODIFIED", bound)
    assert not cache.unbound
    reconciler.reconcile(KEY)
    assert pod_writes(api) == [("create", "bert-0"), ("create", "bert-1-capacity")]


def test_a_request_bound_where_the_ledger_has_no_room_goes_at_the_next_reconcile(pool):
    # kube-scheduler bound the request into room a replica pod took before it counted that pod:
    # the request goes (the replica keeps its cores) and a Pending one replaces it.
    api, cache, reconciler = setup(pool, inference(replicas=2, cores=2))  # one 2-core node: room for one
    reconciler.reconcile(KEY)
    assert pod_writes(api) == [("create", "bert-0"), ("create", "bert-1-capacity")]
    cache.apply_pod("MODIFIED", request_as_bound(cache, "n1"))
    reconciler.reconcile(KEY)
    assert pod_writes(api)[2:] == [("delete", "bert-1-capacity"), ("create", "bert-1-capacity")]


def test_direct_binding_makes_no_capacity_request(pool):
    # Direct binding promises nothing else places pods on the nodes; a request is a pod
    # kube-scheduler places, and could be bound into room a bound replica pod is about to take.
    api, cache, reconciler = setup(pool, inference(replicas=2, cores=2), settings=OperatorSettings(binding="Direct"))
    reconciler.reconcile(KEY)
    assert pod_writes(api) == [("create", "bert-0")]
    assert conditions(api)[CONDITION_PLACED]["reason"] == REASON_UNSCHEDULABLE
    assert CONDITION_WAITING_FOR_CAPACITY not in conditions(api) and not cache.capacity_requests.get(KEY)


def test_a_replica_placed_where_another_replicas_request_was_bound_keeps_the_pending_one(pool):
    # Karpenter makes two nodes for two requests; the first node appears with replica 1's request
    # bound there, and replica 0 is placed on it. Replica 1's request goes (replica 0 takes its
    # room); replica 0's, still Pending for the node being made, now stands for replica 1: no new
    # request, so no third node.
    api, cache, reconciler = setup(pool, inference(replicas=2, cores=2), nodes=())
    reconciler.reconcile(KEY)
    cache.apply_pod("MODIFIED", request_as_bound(cache, "n2", "bert-1-capacity"))
    cache.apply_node("ADDED", kwok_node("n2"))
    api.calls.clear()
    reconciler.reconcile(KEY)
    assert pod_writes(api) == [("delete", "bert-1-capacity"), ("create", "bert-0")]
    assert set(cache.capacity_requests[KEY]) == {"bert-0-capacity"}
    waiting = conditions(api)[CONDITION_WAITING_FOR_CAPACITY]["message"]
    assert waiting.startswith("replica 1: waiting for a new node (capacity request bert-0-capacity"), waiting


def test_a_look_alike_of_higher_priority_is_no_request():
    # The API server resolves every pod's priority; a pod shaped as a request but that no replica
    # could preempt holds what it asks, like any foreign pod.
    node = build_node("n1", "inf2.48xlarge")
    pod = request(0, node="n1")
    pod["spec"]["priority"] = 1000
    ledger = Ledger(["uid-1"])
    ledger.learn_nodes([inventory_from_node(node)])
    ledger.observe(pod)
    assert ledger.free_count("n1") == 22
    assert Usage.from_pods([pod]).used("n1")
    pod["spec"]["priority"] = -1  # as the operator's own requests resolve
    assert not Usage.from_pods([pod]).used("n1")
