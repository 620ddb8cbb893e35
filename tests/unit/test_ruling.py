"""The whole decision for one inference (``placement.ruling.rule``): refusals, and the same answer
from ``neuronplace plan --cluster-state`` as from the operator on the same world."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from neuronplace.cli.main import main
from neuronplace.cli.plan import fleet_objects
from neuronplace.operator.cache import Cache
from neuronplace.operator.reconciler import Reconciler
from neuronplace.operator.settings import OperatorSettings
from neuronplace.operator.storage import CLAIMS, CLASSES, VOLUMES
from neuronplace.operator.writes import Writer
from neuronplace.placement.claims import node_of
from neuronplace.placement.fleet import Fleet
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.names import (
    CORES_ANNOTATION,
    REASON_INVALID_SPEC,
    REASON_NAMESPACE_NOT_SERVED,
)
from neuronplace.placement.podsecurity import TemplatePolicy
from neuronplace.placement.ruling import Rules, View, rule
from neuronplace.placement.usage import Usage
from support import builders
from support.builders import on_hosts
from support.fake_api import FakeApi

NOW = dt.datetime(2026, 12, 6, 12, 0, 0, tzinfo=dt.UTC)
NS = "ml"


def inference(name="bert", *, created="2026-12-01T00:00:00Z", replicas=2, cores=2, **template_spec):
    """ml/NAME created at ``created``; ``template_spec``'s keys go into its pod template's spec."""
    return builders.inference(
        name,
        namespace=NS,
        uid=f"uid-{name}",
        generation=1,
        created=created,
        replicas=replicas,
        cores=cores,
        strategy=None,
        tolerations=(),
        labels={},
        template_spec={"containers": [{"name": "model", "image": "bert:1"}], **template_spec},
    )


def empty_view(**kwargs) -> View:
    return View(pods=(), nodes={}, fleet=Fleet([]), ledger=Ledger(), usage=Usage(), **kwargs)


# ---- refusals --------------------------------------------------------------------------------------


def test_invalid_specs_are_refused_and_nothing_else_happens():
    cases = [
        ({"spec": None}, "spec is missing"),
        ({"spec": {**inference()["spec"], "coresPerReplica": 0}}, "coresPerReplica"),
        ({"spec": {**inference()["spec"], "coresPerReplica": "8"}}, "coresPerReplica"),
        ({"spec": {**inference()["spec"], "processesPerReplica": 3}}, "processesPerReplica"),
        ({"spec": {**inference()["spec"], "replicas": -1}}, "replicas"),
        ({"spec": {**inference()["spec"], "placement": {"strategy": "Random"}}}, "strategy"),
        (
            {"spec": {**inference()["spec"], "placement": {"binding": "Kubelet"}}},
            "binding must be one of Scheduler, Direct",
        ),
        ({"spec": {**inference()["spec"], "template": {"spec": {"containers": []}}}}, "containers"),
        ({"spec": inference(nodeName="x")["spec"]}, "nodeName"),
        ({"spec": inference(hostNetwork=True)["spec"]}, "hostNetwork"),
    ]
    for override, expected in cases:
        ruling = rule({**inference(), **override}, empty_view(), Rules(), NOW)
        assert ruling.refusal is not None and ruling.refusal.reason == REASON_INVALID_SPEC, override
        assert expected in ruling.refusal.message, (override, ruling.refusal.message)
        assert ruling.creations == () and ruling.deletions == () and ruling.request_creations == {}


def test_privileged_templates_pass_when_the_rules_allow_them():
    privileged = inference(hostNetwork=True)
    assert rule(privileged, empty_view(), Rules(), NOW).refusal is not None
    allowed = rule(privileged, empty_view(), Rules(policy=TemplatePolicy(allow_privileged=True)), NOW)
    assert allowed.refusal is None and [r for r, _ in allowed.unplaceable] == [0, 1]  # no nodes at all


def test_a_system_priority_class_is_refused_unless_allowed():
    critical = inference(priorityClassName="system-node-critical")
    refused = rule(critical, empty_view(), Rules(), NOW)
    assert refused.refusal is not None and "system priority" in refused.refusal.message
    assert rule(critical, empty_view(), Rules(allow_system_priority=True), NOW).refusal is None


def test_the_operators_own_namespace_is_not_served():
    ruling = rule(inference(), empty_view(), Rules(operator_namespace=NS), NOW)
    assert ruling.refusal is not None and ruling.refusal.reason == REASON_NAMESPACE_NOT_SERVED
    assert (
        rule(inference(), empty_view(), Rules(operator_namespace=NS, serve_operator_namespace=True), NOW).refusal
        is None
    )


def test_a_refused_generation_creates_nothing_until_the_spec_changes():
    from neuronplace.placement.status import Problem

    problem = Problem("PodRejected", "the API server refused pod bert-0: no")
    same = rule(inference(), empty_view(refused=(1, problem)), Rules(), NOW)
    assert same.problem == problem and same.creations == () and same.unplaceable == ()
    newer = rule(inference(), empty_view(refused=(0, problem)), Rules(), NOW)
    assert newer.problem != problem and [r for r, _ in newer.unplaceable] == [0, 1]


# ---- plan and operator agree -------------------------------------------------------------------


def world() -> tuple[list[dict], list[dict]]:
    """Two empty inf2.48xlarge (24 cores each) with a foreign pod holding 8 cores of the first;
    PriorityClasses; a claim bound to a local volume on the second node; five inferences:

    - ``high`` (priority 1000, newest) and ``low`` (priority 10): 2 × 8 cores each. Served by
      priority, ``high`` bin-packs onto the first node's 16 free cores and ``low`` goes to the
      second; served in the order given, it would be the other way round;
    - ``data`` (1 × 4 cores) uses the claim: only the second node will do;
    - ``huge`` (1 × 16 cores) then fits nowhere and waits for a new node (a capacity request);
    - ``critical`` names a system priority class: refused.
    """
    nodes, _ = fleet_objects("inf2.48xlarge=2")
    first, second = (n["metadata"]["name"] for n in nodes)
    foreign = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "legacy", "namespace": "other", "annotations": {"AWS_NEURON_IDS": "0,1,2,3,4,5,6,7"}},
        "spec": {
            "nodeName": first,
            "containers": [{"name": "c", "resources": {"limits": {"aws.amazon.com/neuroncore": "8"}}}],
        },
        "status": {"phase": "Running"},
    }
    classes = [
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": value}
        for name, value in (("high", 1000), ("low", 10))
    ]
    storage = [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": "local"},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "WaitForFirstConsumer",
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": "pv-data"},
            "spec": {
                "storageClassName": "local",
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteOnce"],
                "claimRef": {"namespace": NS, "name": "data"},
                "nodeAffinity": on_hosts(second),
            },
            "status": {"phase": "Bound"},
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": NS},
            "spec": {
                "storageClassName": "local",
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "5Gi"}},
                "volumeName": "pv-data",
            },
            "status": {"phase": "Bound"},
        },
    ]
    volume = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}
    inferences = [
        inference("low", cores=8, created="2026-12-01T00:00:00Z", priorityClassName="low"),
        inference("data", replicas=1, cores=4, created="2026-12-01T00:00:01Z", **volume),
        inference("huge", replicas=1, cores=16, created="2026-12-01T00:00:02Z"),
        inference("high", cores=8, created="2026-12-02T00:00:00Z", priorityClassName="high"),
        inference(
            "critical", replicas=1, cores=1, created="2026-12-01T00:00:03Z", priorityClassName="system-node-critical"
        ),
    ]
    return [*nodes, foreign, *classes, *storage], inferences


def planned(tmp_path, capsys, objects, inferences) -> tuple[int, dict]:
    """``neuronplace plan --cluster-state`` on the world: exit code and the rows by (inference, replica)."""
    state = tmp_path / "state.yaml"
    state.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objects}))
    files = tmp_path / "inferences.yaml"
    files.write_text(yaml.safe_dump_all(inferences))
    code = main(["plan", "--cluster-state", str(state), str(files)])
    out = capsys.readouterr().out
    table, reasons = out.split("\n\n")[0].splitlines()[1:], out.split("Cannot be placed:")[1]
    rows = {}
    for line in table:
        cells = line.split()
        rows[(cells[0].split("/")[1], cells[1])] = tuple(cells[2:5])
    return code, {"rows": rows, "reasons": reasons, "order": [c.split()[0].split("/")[1] for c in table]}


def operated(objects, inferences) -> tuple[dict, list[dict], list[tuple[str, str]]]:
    """The operator on the same world: its cache fed as its watches feed it, every inference
    reconciled in the order it serves waiting ones. Returns the replicas' pods (node, cores) by
    (inference, replica), the statuses written, and the API calls."""
    kinds = {"PersistentVolumeClaim": CLAIMS, "PersistentVolume": VOLUMES, "StorageClass": CLASSES}
    cache = Cache()
    for obj in objects:
        if obj["kind"] == "Node":
            cache.apply_node("ADDED", obj)
        elif obj["kind"] == "Pod":
            cache.apply_pod("ADDED", obj)
        elif obj["kind"] == "PriorityClass":
            cache.apply_priority_class("ADDED", obj)
        else:
            cache.apply_storage(kinds[obj["kind"]], "ADDED", obj)
    keys = [cache.apply_inference("ADDED", body) for body in inferences]
    api = FakeApi(binds=True)  # kube-scheduler binds each pinned pod at once
    with ThreadPoolExecutor(max_workers=4) as pool:
        reconciler = Reconciler(OperatorSettings(), cache, Writer(core=api, custom=api), pool)
        for key in cache.in_waiting_order(keys):
            reconciler.reconcile(key)
    placed = {}
    for key in keys:
        for pod in cache.status_view(key, {})[1]:
            name = pod["metadata"]["name"]
            placed[(key[1], name.rsplit("-", 1)[1])] = (node_of(pod), pod["metadata"]["annotations"][CORES_ANNOTATION])
    return placed, api.statuses, api.pod_writes()


def test_plan_gives_the_operators_answer(tmp_path, capsys):
    objects, inferences = world()
    code, plan = planned(tmp_path, capsys, objects, inferences)
    pods, statuses, calls = operated(objects, inferences)

    first, second = "inf2-48xlarge-0", "inf2-48xlarge-1"
    expected = {
        ("high", "0"): (first, "8-15"),
        ("high", "1"): (first, "16-23"),
        ("low", "0"): (second, "0-7"),
        ("low", "1"): (second, "8-15"),
        ("data", "0"): (second, "16-19"),
    }
    assert pods == expected  # the operator
    assert {key: row[1:] for key, row in plan["rows"].items() if row[0] == "placed"} == expected  # the plan
    # Served by priority, as the operator serves: the system class first (then refused), then high.
    assert plan["order"][:3] == ["critical", "high", "high"]

    # Neither places the replica that fits nowhere, and both say why in the same words.
    assert plan["rows"][("huge", "0")][0] == "unplaceable"
    placed_messages = [
        c["message"] for status in statuses for c in status.get("conditions", ()) if c["type"] == "Placed"
    ]
    why = next(m for m in placed_messages if m.startswith("replica 0: needs 16 contiguous cores"))
    assert f"huge replica 0: {why.removeprefix('replica 0: ')}" in plan["reasons"]
    assert ("create", "huge-0-capacity") in calls  # the operator asks an autoscaler for a node
    assert "the operator keeps a capacity request for it" in plan["reasons"]

    # The system priority class is refused by both.
    assert plan["rows"][("critical", "-")][0] == "invalid"
    assert not any(name.startswith("critical") for _, name in calls)
    assert any("system priority" in m for m in placed_messages)
    assert code == 1  # something cannot be placed


@pytest.mark.parametrize("binding", ["Scheduler", "Direct"])
def test_direct_binding_asks_no_autoscaler(binding):
    objects, inferences = world()
    cache = Cache()
    for node in (o for o in objects if o["kind"] == "Node"):
        cache.apply_node("ADDED", node)
    huge = inferences[2]
    huge["spec"]["placement"] = {"binding": binding, "tolerations": []}
    key = cache.apply_inference("ADDED", huge)
    cache.apply_inference("ADDED", {**inference("filler", replicas=2, cores=16)})
    # Both nodes taken by 16-core replicas first: 8 cores free on each, no 16-core run.
    filler = cache.rule((NS, "filler"), Rules(binding=binding), NOW, {}, None)
    assert filler is not None and len(filler[1].creations) == 2
    ruled = cache.rule(key, Rules(binding=binding), NOW, {}, None)
    assert ruled is not None
    ruling = ruled[1]
    assert [r for r, _ in ruling.unplaceable] == [0]
    assert bool(ruling.request_creations) == (binding == "Scheduler")
