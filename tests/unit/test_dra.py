"""Nodes managed by the Neuron DRA driver: inventory from ResourceSlices, ResourceClaims in the
ledger, and the ruling's DRA path (claims built, pods referencing them, refusals). Slices and claims
are built by hand in the driver's documented form (``placement/neuron_dra``)."""

from __future__ import annotations

import datetime as dt

from neuronplace.operator.writes import CONFLICT_RETRY
from neuronplace.placement.claims import read_pod
from neuronplace.placement.dra import dra_nodes
from neuronplace.placement.fleet import Fleet
from neuronplace.placement.inventory import BOTH_DEVICE_MANAGERS, inventory_from_node
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.names import (
    API_VERSION,
    ENV_VISIBLE_CORES,
    INSTANCE_TYPE_LABEL,
    KIND,
    NEURONCORE_RESOURCE,
    REASON_DRA_NEEDS_SCHEDULER,
)
from neuronplace.placement.neuron_dra import DEVICE_CLASS, DRIVER, device_name
from neuronplace.placement.resource_claims import read_resource_claim, resource_claim_key
from neuronplace.placement.ruling import Rules, View, rule
from neuronplace.placement.status import placement_entry
from neuronplace.placement.usage import Usage
from support import builders

NOW = dt.datetime(2026, 12, 6, 12, 0, 0, tzinfo=dt.UTC)
NS = "ml"


def slice_for(node, chips=16, groups=True, generation=1):
    """The driver's ResourceSlice for a trn2 node: one device per chip, groups of 4 and 8 in order."""
    devices = []
    for chip in range(chips):
        attributes = {"deviceId": {"int": chip}, "instanceType": {"string": "trn2.48xlarge"}}
        if groups:
            attributes["topology4_id"] = {"int": chip // 4}
            attributes["topology8_id"] = {"int": chip // 8}
        devices.append({"name": device_name(chip), "attributes": attributes})
    return {
        "metadata": {"name": f"{node}-neuron"},
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": generation, "resourceSliceCount": 1},
            "devices": devices,
        },
    }


def dra_node(name="trn2-a", **slice_args):
    """A trn2 node with no Neuron allocatable and the driver's slice: its inventory."""
    body = builders.node(name, "trn2.48xlarge")
    del body["status"]["allocatable"][NEURONCORE_RESOURCE]
    body["status"]["allocatable"]["pods"] = "110"
    return inventory_from_node(body, dra_nodes([slice_for(name, **slice_args)])[name])


def claim(name, node, chips, namespace=NS, owner=None):
    """A ResourceClaim allocated by kube-scheduler on ``node`` with the driver's devices ``chips``."""
    meta = {"name": name, "namespace": namespace}
    if owner is not None:
        meta["ownerReferences"] = [
            {"apiVersion": API_VERSION, "kind": KIND, "name": owner, "uid": f"uid-{owner}", "controller": True}
        ]
    return {
        "metadata": meta,
        "spec": {"devices": {"requests": [{"name": "neuron", "exactly": {"deviceClassName": DEVICE_CLASS}}]}},
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": "neuron", "driver": DRIVER, "pool": node, "device": device_name(c)} for c in chips
                    ]
                },
                "nodeSelector": {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
                    ]
                },
            }
        },
    }


def inference(name="llm", replicas=1, cores=16, processes=1, **placement):
    body = builders.inference(
        name,
        namespace=NS,
        uid=f"uid-{name}",
        generation=1,
        replicas=replicas,
        cores=cores,
        strategy=None,
        tolerations=(),
        labels={},
        template_spec={"containers": [{"name": "model", "image": "llm:1"}]},
    )
    body["spec"]["processesPerReplica"] = processes
    body["spec"].setdefault("placement", {}).update(placement)
    return body


def ruling_on(nodes, body, ledger=None):
    view = View(pods=(), nodes={}, fleet=Fleet(nodes), ledger=ledger or Ledger(), usage=Usage())
    return rule(body, view, Rules(), NOW), view


# ---- inventory ---------------------------------------------------------------------------------------


def test_a_node_named_by_the_drivers_slices_is_dra_managed_with_its_chips_cores():
    inventory = dra_node()
    assert inventory.problem is None and inventory.dra is not None
    assert inventory.cores == 64  # 16 chips x 4 cores (LNC 2)
    assert inventory.dra.group_attribute(4) == "neuron.aws.com/topology4_id"
    assert inventory.dra.group_attribute(16) is None  # no EFA device groups published
    # Without the slice the same node has no cores at all.
    body = builders.node("trn2-a", "trn2.48xlarge")
    del body["status"]["allocatable"][NEURONCORE_RESOURCE]
    assert inventory_from_node(body).problem_kind == "no NeuronCores"


def test_only_the_newest_generation_of_a_pool_counts():
    old, new = slice_for("trn2-a", chips=16, generation=1), slice_for("trn2-a", chips=8, generation=2)
    assert dra_nodes([old, new])["trn2-a"].chips == tuple(range(8))


def test_a_node_with_both_the_device_plugin_and_dra_slices_is_refused_and_says_why():
    body = builders.node("trn2-a", "trn2.48xlarge")  # neuroncore allocatable present
    inventory = inventory_from_node(body, dra_nodes([slice_for("trn2-a")])["trn2-a"])
    assert inventory.problem_kind == BOTH_DEVICE_MANAGERS
    assert "device plugin" in inventory.problem and "DRA driver" in inventory.problem
    result, _ = ruling_on([inventory], inference(cores=4))
    assert not result.creations and "managed by both" in result.problem.message


# ---- ResourceClaims in the ledger --------------------------------------------------------------------


def test_a_foreign_allocated_claim_holds_its_chips_cores():
    ledger = Ledger()
    ledger.learn_nodes([dra_node()])
    ledger.observe_claim(claim("theirs", "trn2-a", [0, 1], namespace="other"))
    assert ledger.used_cores("trn2-a") == set(range(8))
    [holding] = ledger.foreign()
    assert holding.pod == resource_claim_key("other", "theirs") and not holding.managed
    assert ledger.pods() == set()  # claims are not pods
    ledger.forget_claim("other", "theirs")
    assert ledger.used_cores("trn2-a") == set()


def test_a_claim_of_a_trusted_inference_is_ours_and_an_untrusted_one_is_foreign():
    read = read_resource_claim(claim("llm-0", "trn2-a", [4, 5], owner="llm"))
    assert read is not None and read.managed and read.ids == (4, 5) and read.ids_unit == "device"
    ledger = Ledger()
    ledger.learn_nodes([dra_node()])
    ledger.observe_claim(claim("llm-0", "trn2-a", [4, 5], owner="llm"))
    assert [h.pod for h in ledger.foreign()] == [resource_claim_key(NS, "llm-0")]
    ledger.trust("uid-llm")
    assert ledger.foreign() == [] and ledger.used_cores("trn2-a") == set(range(16, 24))


def test_an_unallocated_claim_leaves_the_reservation_until_the_allocation_replaces_it():
    body = inference(cores=8)
    result, view = ruling_on([dra_node()], body)
    [creation] = result.creations
    key = resource_claim_key(NS, "llm-0")
    assert view.ledger.holding_of(key).count == 8
    unallocated = {**creation.resource_claim, "status": {}}
    view.ledger.observe_claim(unallocated)
    assert view.ledger.holding_of(key).count == 8
    view.ledger.trust("uid-llm")
    view.ledger.observe_claim(claim("llm-0", "trn2-a", [6, 7], owner="llm"))
    assert view.ledger.used_cores("trn2-a") == set(range(24, 32))  # where kube-scheduler put it


def test_a_pod_taking_chips_through_a_claim_holds_nothing_itself():
    result, _ = ruling_on([dra_node()], inference(cores=8))
    read = read_pod({**result.creations[0].pod, "spec": {**result.creations[0].pod["spec"], "nodeName": "trn2-a"}})
    assert read is not None and read.ours is None and read.theirs is None


# ---- the ruling's DRA path ---------------------------------------------------------------------------


def test_a_dra_replica_gets_a_claim_for_connected_chips_and_zero_based_process_cores():
    result, _ = ruling_on([dra_node()], inference(cores=16, processes=2))
    [creation] = result.creations
    spec = creation.resource_claim["spec"]["devices"]
    assert spec["requests"][0]["exactly"] == {
        "deviceClassName": DEVICE_CLASS,
        "allocationMode": "ExactCount",
        "count": 4,
    }
    assert spec["constraints"] == [{"requests": ["neuron"], "matchAttribute": "neuron.aws.com/topology4_id"}]
    assert spec["config"][0]["opaque"]["parameters"]["logicalNeuronCore"] == 2
    owner = creation.resource_claim["metadata"]["ownerReferences"][0]
    assert owner["kind"] == KIND and owner["controller"] is True and owner["uid"] == "uid-llm"
    pod = creation.pod
    assert creation.resource_claim["metadata"]["name"] == pod["metadata"]["name"] == "llm-0"
    assert pod["spec"]["resourceClaims"] == [{"name": "neuron", "resourceClaimName": "llm-0"}]
    visible = [next(e["value"] for e in c["env"] if e["name"] == ENV_VISIBLE_CORES) for c in pod["spec"]["containers"]]
    assert visible == ["0-7", "8-15"]
    for container in pod["spec"]["containers"]:
        assert container["resources"]["claims"] == [{"name": "neuron"}]
        assert not any(k.startswith("aws.amazon.com/neuron") for k in container["resources"].get("limits", {}))
    assert pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert placement_entry(pod, 2)["deviceManagement"] == "DRA"
    assert placement_entry(pod, 2)["resourceClaim"] == "llm-0"


def test_four_chips_never_straddle_a_group_of_four():
    ledger = Ledger()
    ledger.learn_nodes([dra_node()])
    ledger.observe_claim(claim("theirs", "trn2-a", [0, 1], namespace="other"))  # chips 0-1 taken
    result, _ = ruling_on([dra_node()], inference(replicas=1, cores=16), ledger=ledger)
    [creation] = result.creations
    assert creation.placement.devices == (4, 5, 6, 7)


def test_cores_filling_no_whole_chip_are_refused_unless_whole_chips_rounds_up():
    result, _ = ruling_on([dra_node()], inference(cores=6))
    assert not result.creations
    assert "6 cores fill no whole chips" in result.problem.message and "2 cores idle" in result.problem.message
    result, view = ruling_on([dra_node()], inference(cores=6, wholeChips=True))
    [creation] = result.creations
    assert creation.resource_claim["spec"]["devices"]["requests"][0]["exactly"]["count"] == 2
    assert view.ledger.holding_of(resource_claim_key(NS, "llm-0")).count == 8


def test_direct_binding_cannot_use_dra_nodes():
    result, _ = ruling_on([dra_node()], inference(cores=8, binding="Direct", deviceManagement="DRA"))
    assert not result.creations and result.problem.reason == REASON_DRA_NEEDS_SCHEDULER
    assert "Direct binding cannot allocate ResourceClaims" in result.problem.message
    result, _ = ruling_on([dra_node()], inference(cores=8, binding="Direct"))  # Auto: said beside the rest
    assert not result.creations and "Direct binding cannot allocate ResourceClaims" in result.problem.message


def test_auto_uses_the_device_plugin_nodes_first_then_dra_and_device_plugin_only_keeps_off_dra():
    body = builders.node("inf2-a", "inf2.48xlarge")  # 24 cores
    body["status"]["allocatable"]["pods"] = "110"
    plugin = inventory_from_node(body)
    result, _ = ruling_on([plugin, dra_node()], inference(replicas=2, cores=16))
    kinds = [(c.placement.node, c.resource_claim is not None) for c in result.creations]
    assert kinds == [("inf2-a", False), ("trn2-a", True)]
    result, _ = ruling_on([plugin, dra_node()], inference(replicas=2, cores=16, deviceManagement="DevicePlugin"))
    assert [c.placement.node for c in result.creations] == ["inf2-a"]
    result, _ = ruling_on([plugin, dra_node()], inference(replicas=1, cores=4, deviceManagement="DRA"))
    assert [c.placement.node for c in result.creations] == ["trn2-a"]


def test_inventory_label_instance_type_is_what_the_lnc_config_follows():
    body = builders.node("trn2-b", "trn2.48xlarge", labels={"neuronplace.io/lnc": "1"})
    del body["status"]["allocatable"][NEURONCORE_RESOURCE]
    body["status"]["allocatable"]["pods"] = "110"
    node = inventory_from_node(body, dra_nodes([slice_for("trn2-b")])["trn2-b"])
    assert node.labels[INSTANCE_TYPE_LABEL] == "trn2.48xlarge" and node.cores == 128
    result, _ = ruling_on([node], inference(cores=8))
    assert result.creations[0].resource_claim["spec"]["devices"]["config"][0]["opaque"]["parameters"] == {
        "apiVersion": f"{DRIVER}/v1",
        "kind": "NeuronConfig",
        "logicalNeuronCore": 1,
    }


# ---- the operator's side, without an API server --------------------------------------------------


def test_the_metric_names_each_managed_nodes_device_management_and_claims_are_not_counted_as_pods():
    from neuronplace.operator.metrics import snapshot_ledger

    plugin = inventory_from_node(builders.node("inf2-a", "inf2.48xlarge"))
    both = inventory_from_node(builders.node("trn2-b", "trn2.48xlarge"), dra_nodes([slice_for("trn2-b")])["trn2-b"])
    inventories = {"inf2-a": plugin, "trn2-a": dra_node(), "trn2-b": both}
    ledger = Ledger()
    ledger.learn_nodes(inventories.values())
    ledger.observe_claim(claim("theirs", "trn2-a", [0], namespace="other"))
    snapshot = snapshot_ledger(ledger, inventories)
    assert snapshot.device_management == {"inf2-a": "DevicePlugin", "trn2-a": "DRA", "trn2-b": "Both"}
    assert snapshot.foreign_pods == 0 and snapshot.free_cores["trn2-a"] == 60


def test_the_cache_follows_slices_and_claims_and_sweeps_claims_no_pod_uses():
    from neuronplace.operator.cache import Cache

    cache = Cache()
    body = builders.node("trn2-a", "trn2.48xlarge")
    del body["status"]["allocatable"][NEURONCORE_RESOURCE]
    cache.apply_node("ADDED", body)
    assert cache.inventories["trn2-a"].problem_kind == "no NeuronCores"
    cache.apply_resource_slice("ADDED", slice_for("trn2-a"))
    assert cache.inventories["trn2-a"].dra is not None and cache.fleet().by_name["trn2-a"].cores == 64
    cache.apply_inference("ADDED", inference())
    ours = claim("llm-0", "trn2-a", [0, 1], owner="llm")
    cache.apply_resource_claim("ADDED", ours)
    cache.ledger.learn_nodes(cache.fleet().nodes)  # as every ruling does: the chips' cores become known
    assert cache.ledger.used_cores("trn2-a") == set(range(8))
    assert cache.unused_resource_claims((NS, "llm")) == ["llm-0"]  # no pod uses it: the sweep deletes it
    cache.apply_resource_claim("DELETED", ours)
    assert cache.ledger.used_cores("trn2-a") == set() and cache.unused_resource_claims((NS, "llm")) == []
    cache.apply_resource_slice("DELETED", slice_for("trn2-a"))
    assert cache.inventories["trn2-a"].dra is None


def test_a_restarted_operator_holds_a_pending_claims_chips_from_its_pods_spec():
    from neuronplace.operator.cache import Cache

    node = builders.node("trn2-a", "trn2.48xlarge")
    del node["status"]["allocatable"][NEURONCORE_RESOURCE]
    node["status"]["allocatable"]["pods"] = "110"
    result, _ = ruling_on([dra_node()], inference(cores=6, wholeChips=True))  # 2 chips, 6 cores used
    [creation] = result.creations
    pod = {**creation.pod, "metadata": {**creation.pod["metadata"], "uid": "pod-uid"}}
    cache = Cache()  # a fresh operator: slices, node, then the pod; its claim not allocated yet
    cache.apply_resource_slice("ADDED", slice_for("trn2-a"))
    cache.apply_node("ADDED", node)
    cache.apply_resource_claim("ADDED", {**creation.resource_claim, "status": {}})
    cache.apply_pod("ADDED", pod)
    key = resource_claim_key(NS, "llm-0")
    assert cache.ledger.holding_of(key).core_ids == tuple(range(8))  # both whole chips
    cache.apply_inference("ADDED", inference())
    cache.apply_resource_claim("MODIFIED", claim("llm-0", "trn2-a", [5, 9], owner="llm"))
    cache.ledger.learn_nodes(cache.fleet().nodes)
    assert cache.ledger.used_cores("trn2-a") == set(range(20, 24)) | set(range(36, 40))  # kube-scheduler's
    cache.apply_pod("DELETED", pod)
    assert cache.ledger.holding_of(key) is not None  # an allocated claim holds until deallocated


# ---- the reconciler's ResourceClaim writes, against a fake API ---------------------------------------


class ClaimsApi:
    """The fake API (support.fake_api) with ResourceClaims: ``existing`` holds what the server has."""

    def __init__(self, pod_error=None):
        from support.fake_api import FakeApi

        self.api = FakeApi(create_error=pod_error, binds=False)
        self.existing: dict[str, dict] = {}
        self.claim_calls: list[tuple[str, str]] = []

    def __getattr__(self, name):
        return getattr(self.api, name)

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kwargs):
        from kubernetes.client.rest import ApiException

        name = body["metadata"]["name"]
        self.claim_calls.append(("create", name))
        if name in self.existing:
            raise ApiException(status=409, reason="AlreadyExists")
        self.existing[name] = body
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kwargs):
        from kubernetes.client.rest import ApiException

        self.claim_calls.append(("get", name))
        if name not in self.existing:
            raise ApiException(status=404, reason="NotFound")
        return self.existing[name]

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kwargs):
        self.claim_calls.append(("delete", name))
        self.existing.pop(name, None)
        return {}


def dra_reconciler(api):
    from concurrent.futures import ThreadPoolExecutor

    from neuronplace.local.fleet import build_node
    from neuronplace.operator.cache import Cache
    from neuronplace.operator.reconciler import Reconciler
    from neuronplace.operator.settings import OperatorSettings
    from neuronplace.operator.writes import Writer

    cache = Cache()
    cache.apply_resource_slice("ADDED", slice_for("trn2-a"))
    node = build_node("trn2-a", "trn2.48xlarge", dra=True)
    node.setdefault("status", {})["conditions"] = [{"type": "Ready", "status": "True"}]
    cache.observe_node(node)
    body = inference(cores=8, binding="Scheduler", deviceManagement="DRA")
    body["spec"]["placement"]["tolerations"] = node["spec"].get("taints") or []
    cache.apply_inference("ADDED", body)
    pool = ThreadPoolExecutor(max_workers=2)
    return cache, Reconciler(OperatorSettings(), cache, Writer(core=api, custom=api), pool)


def test_the_claim_is_made_before_the_pod_and_deleted_when_the_pod_is_refused():
    from kubernetes.client.rest import ApiException

    api = ClaimsApi(pod_error=ApiException(status=422, reason="Invalid"))
    cache, reconciler = dra_reconciler(api)
    reconciler.reconcile((NS, "llm"))
    assert api.claim_calls == [("create", "llm-0"), ("delete", "llm-0")]
    assert api.pod_writes() == [("create", "llm-0")]
    assert cache.ledger.holding_of(resource_claim_key(NS, "llm-0")) is None  # the reservation went back


def test_a_leftover_claim_of_ours_is_adopted_and_anothers_is_left_alone():
    api = ClaimsApi()
    _, reconciler = dra_reconciler(api)
    result, _ = ruling_on([dra_node()], inference(cores=8))
    api.existing["llm-0"] = result.creations[0].resource_claim  # left by a killed operator, unallocated
    reconciler.reconcile((NS, "llm"))
    assert api.claim_calls == [("create", "llm-0"), ("get", "llm-0")] and api.pod_writes() == [("create", "llm-0")]

    api = ClaimsApi()
    _, reconciler = dra_reconciler(api)
    api.existing["llm-0"] = {"metadata": {"name": "llm-0", "namespace": NS}, "spec": {}}  # a tenant's
    assert reconciler.reconcile((NS, "llm")) == CONFLICT_RETRY  # as a 409: NameTaken once it persists
    assert api.claim_calls == [("create", "llm-0"), ("get", "llm-0")] and api.pod_writes() == []
    assert "llm-0" in api.existing
