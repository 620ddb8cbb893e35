"""What a tenant with the ``edit`` role can write to a pod (labels, annotations, ownerReferences)
decides nothing the ledger or the operator counts: each rule of issue 24, one pod at a time."""

from __future__ import annotations

import copy
import datetime as dt

from neuronplace.local.fleet import build_node
from neuronplace.operator.cache import Cache
from neuronplace.placement.claims import capacity_request, requested_amount, spec_cores
from neuronplace.placement.fleet import Fleet
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.names import (
    API_VERSION,
    AWS_NEURON_IDS,
    CAPACITY_REQUEST_LABEL,
    CORES_ANNOTATION,
    INFERENCE_LABEL,
    KIND,
    NEURON_DEVICE_RESOURCE,
    NEURONCORE_RESOURCE,
)
from neuronplace.placement.pods import build_pod, pin_to_node
from neuronplace.placement.request import ReplicaPlacement
from neuronplace.placement.ruling import Rules, View, rule
from neuronplace.placement.usage import Usage
from neuronplace.runtime.coreset import CoreRange
from support.builders import inference_uid, managed_pod

TRUSTED = [inference_uid("web")]
NOW = dt.datetime(2026, 12, 6, 12, 0, 0, tzinfo=dt.UTC)


def ready_node(name="n1"):
    node = build_node(name, "inf2.48xlarge")  # 24 cores, 2 per chip
    node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    node["spec"] = {}
    return node


def inf2(name="n1"):
    return inventory_from_node(ready_node(name))


def foreign(name, node="n1", *, cores=0, devices=0, bound=True, gates=(), cpu=None, init=(), sidecars=()):
    """A tenant's pod: bound to ``node`` or pinned to it (by matchFields, as a DaemonSet pod is)."""

    def container(cname, amount, restart=None):
        limits = {NEURONCORE_RESOURCE: str(amount)} if amount else {}
        made = {"name": cname, "resources": {"limits": limits}}
        if restart:
            made["restartPolicy"] = restart
        return made

    main = container("main", cores)
    if devices:
        main["resources"]["limits"][NEURON_DEVICE_RESOURCE] = str(devices)
    if cpu:
        main["resources"]["limits"]["cpu"] = cpu
    spec = {"containers": [main]}
    inits = [container(f"init-{i}", n) for i, n in enumerate(init)]
    inits += [container(f"side-{i}", n, "Always") for i, n in enumerate(sidecars)]
    if inits:
        spec["initContainers"] = inits
    if bound:
        spec["nodeName"] = node
    else:
        spec["affinity"] = pin_to_node(None, node)
    if gates:
        spec["schedulingGates"] = [{"name": gate} for gate in gates]
    return {"metadata": {"name": name, "namespace": "default"}, "spec": spec, "status": {"phase": "Pending"}}


# ---- 1: what a replica holds comes from its spec ----------------------------------------------------


def test_an_edited_annotation_adds_to_what_a_replica_holds_and_never_moves_it():
    pod = managed_pod("web-0", "n1", "0-3")
    ledger = Ledger(TRUSTED)
    ledger.learn_nodes([inf2()])
    ledger.observe(pod)
    pod["metadata"]["annotations"].update({CORES_ANNOTATION: "20-23", AWS_NEURON_IDS: "20,21,22,23"})
    ledger.observe(pod)
    holding = ledger.holding_of("default/web-0")
    assert holding is not None and holding.managed and holding.inference == "default/web"
    assert set(holding.core_ids) == {0, 1, 2, 3, 20, 21, 22, 23}
    assert ledger.inference_cores("default/web") == {"n1": 4}  # it still asks for 4
    try:
        ledger.reserve("n1", CoreRange(0, 4), "default/web-1")
        raise AssertionError("cores 0-3, which web-0's process holds, were given again")
    except ValueError as error:
        assert "held by default/web-0" in str(error)
    assert ledger.problem_of("default/web-0") == "CoresMismatch"
    assert [(i.pod, i.reason) for i in ledger.inconsistencies()] == [("default/web-0", "CoresMismatch")]

    pod["metadata"]["annotations"].update({CORES_ANNOTATION: "0-3", AWS_NEURON_IDS: "0,1,2,3"})
    ledger.observe(pod)  # put back: consistent again, and 20-23 free
    assert ledger.used_cores("n1") == {0, 1, 2, 3} and ledger.inconsistencies() == []


def test_an_edited_label_is_reported_and_changes_nothing_held():
    pod = managed_pod("web-0", "n1", "0-3")
    pod["metadata"]["labels"][INFERENCE_LABEL] = "other"
    ledger = Ledger.from_pods([pod], TRUSTED)
    assert ledger.holding_of("default/web-0").managed and ledger.used_cores("n1") == {0, 1, 2, 3}
    assert ledger.problem_of("default/web-0") == "CoresMismatch"


def test_a_pod_that_gains_an_owner_reference_is_not_ours():
    pod = foreign("web-0", cores=4)
    pod["metadata"]["labels"] = {INFERENCE_LABEL: "web"}
    pod["metadata"]["annotations"] = {CORES_ANNOTATION: "0-3", AWS_NEURON_IDS: "0,1,2,3"}
    pod["metadata"]["ownerReferences"] = [
        {"apiVersion": API_VERSION, "kind": KIND, "name": "web", "uid": inference_uid("web"), "controller": True}
    ]
    ledger = Ledger.from_pods([pod], TRUSTED)
    holding = ledger.holding_of("default/web-0")
    assert holding is not None and not holding.managed  # no NEURONPLACE_NODE_CORES in its spec
    assert ledger.inference_cores("default/web") == {}
    cache = Cache()
    cache.remember_inference({"metadata": {"namespace": "default", "name": "web", "uid": inference_uid("web")}})
    cache.observe_pod(pod)
    assert cache.pods_of_inference(("default", "web")) == []  # counts nowhere as a replica


def test_the_spec_range_of_a_multi_process_replica_is_its_whole_range():
    inference = {
        "metadata": {"name": "web", "namespace": "default", "uid": "u"},
        "spec": {"coresPerReplica": 4, "template": {"spec": {"containers": [{"name": "m", "image": "m:1"}]}}},
    }
    placement = ReplicaPlacement(0, "n1", CoreRange(8, 4), (CoreRange(8, 2), CoreRange(10, 2)), ("0-1", "2-3"), (4, 5))
    pod = build_pod(inference, placement, now_ns=0)
    assert spec_cores(pod) == CoreRange(8, 4)
    for container in pod["spec"]["containers"]:
        container["env"] = [e for e in container["env"] if e["name"] != "NEURONPLACE_NODE_CORES"]
        break
    assert spec_cores(pod) is None  # one process without its range: the spec says nothing


# ---- 3: foreign pods hold only when they can run -----------------------------------------------------


def test_a_gated_pinned_pod_holds_nothing_until_its_gates_are_gone():
    pod = foreign("blocker", cores=24, bound=False, gates=("tenant/hold",))
    ledger = Ledger()
    ledger.learn_nodes([inf2()])
    ledger.observe(pod)
    assert ledger.free_count("n1") == 24 and ledger.foreign() == []
    assert [(i.pod, i.reason) for i in ledger.inconsistencies()] == [("default/blocker", "SchedulingGated")]
    del pod["spec"]["schedulingGates"]
    ledger.observe(pod)
    assert ledger.free_count("n1") == 0 and ledger.inconsistencies() == []


def test_a_pinned_pod_asking_more_than_the_node_has_holds_nothing():
    ledger = Ledger()
    ledger.observe(foreign("greedy", cores=2, bound=False, cpu="100000"))
    ledger.observe(foreign("huge", cores=48, bound=False))
    ledger.observe(foreign("fits", cores=2, bound=False))
    ledger.learn_nodes([inf2()])  # known only now: the pods are judged again
    assert [h.pod for h in ledger.holdings("n1")] == ["default/fits"]
    assert ledger.free_count("n1") == 22
    assert [(i.pod, i.reason) for i in ledger.inconsistencies()] == [
        ("default/greedy", "ExceedsNode"),
        ("default/huge", "ExceedsNode"),
    ]
    ledger.observe(foreign("huge", cores=48, bound=True))  # bound pods always hold
    assert ledger.free_count("n1") == 0


def test_our_own_pinned_replica_holds_from_creation():
    pod = managed_pod("web-0", "n1", "0-3")
    del pod["spec"]["nodeName"]
    pod["spec"]["affinity"] = pin_to_node(None, "n1")
    pod["spec"]["schedulingGates"] = [{"name": "x"}]
    ledger = Ledger(TRUSTED)
    ledger.learn_nodes([inf2()])
    ledger.observe(pod)
    assert ledger.used_cores("n1") == {0, 1, 2, 3}


# ---- 8b: requests counted as kube-scheduler counts them -----------------------------------------


def test_sidecar_init_containers_hold_their_cores_for_the_pods_life():
    pod = foreign("side", cores=2, init=(3,), sidecars=(4,))
    # sidecars run beside the app containers: 2 + 4; the plain init container ran before: 3 + (no sidecar yet)
    assert requested_amount(pod, NEURONCORE_RESOURCE) == 6
    ledger = Ledger()
    ledger.learn_nodes([inf2()])
    ledger.observe(pod)
    assert ledger.free_count("n1") == 24 - 6


def test_devices_and_cores_together_hold_both():
    ledger = Ledger()
    ledger.learn_nodes([inf2()])
    ledger.observe(foreign("both", cores=2, devices=3))
    assert ledger.free_count("n1") == 24 - 2 - 3 * 2


# ---- 4: capacity requests are recognised by their name too -----------------------------------------


def test_a_capacity_request_is_recognised_by_its_name_not_its_label_alone():
    pod = foreign("web-0-capacity", cores=2)
    pod["metadata"]["labels"] = {CAPACITY_REQUEST_LABEL: "web"}
    pod["metadata"]["ownerReferences"] = [
        {"apiVersion": API_VERSION, "kind": KIND, "name": "web", "uid": inference_uid("web"), "controller": True}
    ]
    assert capacity_request(pod)
    for name in ("web-0", "other-0-capacity", "web-x-capacity", "web--capacity"):
        renamed = copy.deepcopy(pod)
        renamed["metadata"]["name"] = name
        assert not capacity_request(renamed), name
        assert Ledger.from_pods([renamed], TRUSTED).holds(f"default/{name}")  # it holds what it asks


def test_a_pinned_look_alike_does_not_hold_back_capacity_requests():
    cache = Cache()
    cache.remember_inference({"metadata": {"namespace": "default", "name": "web", "uid": inference_uid("web")}})
    look_alike = foreign("look-alike", cores=2, bound=False)
    look_alike["metadata"]["labels"] = {INFERENCE_LABEL: "web"}
    cache.observe_pod(look_alike)
    assert not cache.settling()
    ours = managed_pod("web-0", "n1", "0-1")
    del ours["spec"]["nodeName"]
    ours["spec"]["affinity"] = pin_to_node(None, "n1")
    cache.observe_pod(ours)
    assert cache.settling()  # our own pinned replica does


# ---- 6: a name another pod holds ------------------------------------------------------------------


def test_a_replica_whose_name_a_foreign_pod_holds_is_not_created_and_its_cores_stay_held():
    node = ready_node()
    squatter = foreign("web-0", cores=4)
    squatter["metadata"]["namespace"] = "ml"
    ledger, usage = Ledger(), Usage()
    ledger.observe(squatter)
    usage.observe(squatter)
    inference = {
        "metadata": {"name": "web", "namespace": "ml", "uid": "uid-web", "generation": 1},
        "spec": {
            "replicas": 2,
            "coresPerReplica": 2,
            "template": {"spec": {"containers": [{"name": "m", "image": "m:1"}]}},
        },
    }
    view = View(pods=(), nodes={"n1": node}, fleet=Fleet([inventory_from_node(node)]), ledger=ledger, usage=usage)
    ruling = rule(inference, view, Rules(), NOW)
    assert ruling.name_taken == (0,)
    assert [c.pod["metadata"]["name"] for c in ruling.creations] == ["web-1"]
    holding = ledger.holding_of("ml/web-0")
    assert holding is not None and not holding.managed and holding.count == 4  # still the squatter's
    assert not set(ledger.holding_of("ml/web-1").core_ids) & set(holding.core_ids)


def test_the_usage_does_not_count_pinned_pods_that_cannot_run():
    allocatable = inf2().allocatable
    usage = Usage()
    usage.observe(foreign("gated", cores=2, cpu="1", bound=False, gates=("x",)), allocatable)
    usage.observe(foreign("greedy", cpu="100000", bound=False), allocatable)
    assert usage.used("n1") == {}
    usage.observe(foreign("fits", cpu="1", bound=False), allocatable)
    usage.observe(foreign("bound", cpu="100000"), allocatable)  # bound: the kubelet has it, it counts
    assert usage.used("n1")["cpu"] == 100001 * 1000 and usage.used("n1")["pods"] == 2
