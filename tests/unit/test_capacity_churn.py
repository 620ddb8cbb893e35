"""Capacity requests never churn (``placement.request_limits``): they ask only for managed nodes,
avoid the nodes where a waiting replica's request was bound, and at most a few are made per replica
a minute; against a fake kube-scheduler that keeps binding them where the ledger has no room."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.client.rest import ApiException
from test_capacity_requests import IMAGE, KEY, SELECTOR_TERM, conditions, inference, setup

from neuronplace.local.fleet import build_node
from neuronplace.operator.settings import OperatorSettings
from neuronplace.placement import capacity_requests as cp
from neuronplace.placement.fleet import Fleet
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.names import CONDITION_WAITING_FOR_CAPACITY, NEURONCORE_RESOURCE
from neuronplace.placement.request_limits import (
    HOSTNAME_LABEL,
    MAX_PER_WINDOW,
    WINDOW_SECONDS,
    admit,
    excluded_nodes,
    node_expressions,
    with_expressions,
)
from support.builders import kwok_node as ready_node
from support.fake_api import FakeApi

T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def fleet(*names: str, hostname: bool = True) -> Fleet:
    nodes = []
    for name in names:
        node = build_node(name, "inf2.xlarge")
        if not hostname:
            node["metadata"]["labels"].pop(HOSTNAME_LABEL, None)
        nodes.append(inventory_from_node(node))
    return Fleet(nodes)


# ---- pure ------------------------------------------------------------------------------------------


def test_the_operator_s_node_selector_and_the_exclusions_become_required_expressions():
    assert node_expressions("pool=a,neuron,!gpu,zone!=x", {"n2", "gone"}, fleet("n1", "n2")) == [
        {"key": "pool", "operator": "In", "values": ["a"]},
        {"key": "neuron", "operator": "Exists"},
        {"key": "gpu", "operator": "DoesNotExist"},
        {"key": "zone", "operator": "NotIn", "values": ["x"]},
        {"key": HOSTNAME_LABEL, "operator": "NotIn", "values": ["n2"]},
    ]
    assert node_expressions("", {"n1"}, fleet("n1", hostname=False)) == []  # no label: not excludable
    assert node_expressions("", (), fleet("n1")) == []


def test_the_expressions_are_required_in_every_term_of_the_replica_s_own_affinity():
    extra = [{"key": "pool", "operator": "In", "values": ["a"]}]
    other = {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}
    own = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [SELECTOR_TERM, other]}
        }
    }
    terms = with_expressions(own, extra)["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert [term["matchExpressions"][-1] for term in terms["nodeSelectorTerms"]] == extra * 2
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0] == SELECTOR_TERM["matchExpressions"][0]
    alone = with_expressions(None, extra)["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert alone == {"nodeSelectorTerms": [{"matchExpressions": extra}]}
    assert with_expressions(None, []) is None and with_expressions(own, []) == own


def test_a_request_asks_only_for_nodes_the_operator_manages():
    where = node_expressions("pool=neuron", (), fleet())
    pod = cp.build_capacity_request(inference(), 0, image=IMAGE, where=where)
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == {"nodeSelectorTerms": [{"matchExpressions": where}]}
    plain = cp.build_capacity_request(inference(), 0, image=IMAGE)
    assert plain["metadata"]["annotations"] != pod["metadata"]["annotations"]  # another ask, another hash


def test_exclusions_grow_while_a_replica_waits_and_go_when_none_does():
    nodes = fleet("n1", "n2")
    assert excluded_nodes({"n1"}, ["n2", "new"], {0}, nodes) == {"n1", "n2"}  # "new": no node event yet
    assert excluded_nodes({"n1"}, ["n2"], set(), nodes) == frozenset()
    assert excluded_nodes({"gone"}, [], {0}, nodes) == frozenset()


def test_a_replica_gets_at_most_a_few_requests_a_minute():
    made = {0: [T0.timestamp() + s for s in range(MAX_PER_WINDOW)]}
    later = T0 + dt.timedelta(seconds=10)
    held = admit([0, 1], made, later)
    assert held.now == (1,) and set(held.held) == {0}
    assert "held back" in held.held[0] and "12:01:00Z" in held.held[0]
    assert held.retry_after == WINDOW_SECONDS - 10
    assert admit([0], made, T0 + dt.timedelta(seconds=WINDOW_SECONDS)).now == (0,)


@given(st.lists(st.floats(0, 600, allow_nan=False), max_size=80))
def test_no_window_ever_holds_more_than_the_bound(asks):
    made: dict[int, list[float]] = {0: []}
    for second in sorted(asks):
        now = T0 + dt.timedelta(seconds=second)
        if admit([0], made, now).now:
            made[0].append(now.timestamp())
    times = made[0]
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t - start < WINDOW_SECONDS) <= MAX_PER_WINDOW


# ---- against a kube-scheduler that counts differently ------------------------------------------------


class Scheduler(FakeApi):
    """Keeps every request it is given; :meth:`bind` binds the Pending ones to ``node`` wherever
    their node affinity allows it, as kube-scheduler does when it counts room the ledger does not."""

    def __init__(self) -> None:
        super().__init__(binds=True)
        self.bodies: dict[str, dict] = {}

    def create_namespaced_pod(self, namespace, body, **kwargs):
        self.bodies[body["metadata"]["name"]] = body
        return super().create_namespaced_pod(namespace, body, **kwargs)

    def bind(self, cache, node: str, hostname: str | None) -> None:
        for name in list(cache.capacity_requests.get(KEY, {})):
            body = self.bodies[name]
            terms = ((body["spec"].get("affinity") or {}).get("nodeAffinity") or {}).get(
                "requiredDuringSchedulingIgnoredDuringExecution"
            ) or {"nodeSelectorTerms": [{}]}
            if any(_allows(term, hostname) for term in terms["nodeSelectorTerms"]):
                cache.apply_pod("MODIFIED", {**body, "spec": {**body["spec"], "nodeName": node}})


def _allows(term: dict, hostname: str | None) -> bool:
    return not any(
        e["key"] == HOSTNAME_LABEL and e["operator"] == "NotIn" and hostname in e["values"]
        for e in term.get("matchExpressions") or ()
    )


def blocked(pool, hostname: bool = True):
    """One 2-core node whose cores a foreign pod holds in the ledger's count (not in kube-scheduler's)."""
    api = Scheduler()
    _, cache, reconciler = setup(pool, inference(replicas=1, cores=2), nodes=())
    node = ready_node("n1")
    if not hostname:
        node["metadata"]["labels"].pop(HOSTNAME_LABEL)
    cache.observe_node(node)
    reconciler.writer.core = reconciler.writer.custom = api
    blocker = {
        "metadata": {"name": "blocker", "namespace": "tenant"},
        "spec": {
            "nodeName": "n1",
            "containers": [{"name": "c", "image": "x", "resources": {"limits": {NEURONCORE_RESOURCE: "2"}}}],
        },
        "status": {"phase": "Running"},
    }
    cache.apply_pod("ADDED", blocker)
    return api, cache, reconciler


def test_a_request_bound_where_the_replica_cannot_go_is_not_made_again_for_that_node(pool):
    api, cache, reconciler = blocked(pool)
    for _ in range(20):
        reconciler.reconcile(KEY)
        api.bind(cache, "n1", "n1")
    creates = [name for call, name in api.pod_writes() if call == "create"]
    assert creates == ["bert-0-capacity", "bert-0-capacity"], api.calls  # the second avoids n1, and stays Pending
    assert reconciler.excluded[KEY] == {"n1"}
    assert "waiting for a new node" in conditions(api)[CONDITION_WAITING_FOR_CAPACITY]["message"]
    # The blocker goes: the replica is placed, its request goes, so do the exclusions.
    cache.apply_pod("DELETED", {"metadata": {"name": "blocker", "namespace": "tenant"}})
    reconciler.reconcile(KEY)
    assert api.pod_writes()[-2:] == [("delete", "bert-0-capacity"), ("create", "bert-0")]
    assert KEY not in reconciler.excluded


def test_a_node_that_cannot_be_excluded_gets_a_few_requests_a_minute_and_the_status_says_why(pool):
    api, cache, reconciler = blocked(pool, hostname=False)
    for _ in range(20):
        reconciler.reconcile(KEY)
        api.bind(cache, "n1", None)
    creates = [name for call, name in api.pod_writes() if call == "create"]
    assert len(creates) == MAX_PER_WINDOW, api.calls
    assert "held back" in conditions(api)[CONDITION_WAITING_FOR_CAPACITY]["message"]


def test_the_operator_s_node_selector_reaches_its_requests(pool):
    _, _, reconciler = setup(
        pool, inference(replicas=1, cores=2), nodes=(), settings=OperatorSettings(node_selector="pool=neuron")
    )
    reconciler.writer.core = reconciler.writer.custom = api = Scheduler()
    reconciler.reconcile(KEY)
    body = api.bodies["bert-0-capacity"]
    terms = body["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["neuron"]}]}]
    }


def test_a_request_bound_where_the_ledger_still_has_room_is_kept_and_its_node_not_excluded(pool):
    # The request's binding may come before the operator sees its new node Ready: nothing is
    # wrong there, and the replica is placed on it as soon as it is.
    api, cache, reconciler = setup(pool, inference(replicas=1, cores=2), nodes=())
    reconciler.writer.core = reconciler.writer.custom = api = Scheduler()
    reconciler.reconcile(KEY)
    not_ready = ready_node("n2")
    not_ready["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    cache.apply_node("ADDED", not_ready)
    api.bind(cache, "n2", "n2")
    reconciler.reconcile(KEY)
    assert [call for call, _ in api.pod_writes()] == ["create"] and KEY not in reconciler.excluded
    cache.apply_node("MODIFIED", ready_node("n2"))
    reconciler.reconcile(KEY)
    assert api.pod_writes()[1:] == [("delete", "bert-0-capacity"), ("create", "bert-0")]


def test_a_request_the_api_server_refuses_is_tried_no_more_often_than_the_bound(pool):
    # A namespace being deleted refuses every create (403): the tries count like creations, so
    # reconciles that come at once (the namespace's pods going) do not try again at once.
    _, _, reconciler = setup(pool, inference(replicas=1, cores=2), nodes=())
    refusing = FakeApi(create_error=ApiException(status=403, reason="namespace is being terminated"))
    reconciler.writer.core = reconciler.writer.custom = refusing
    for _ in range(20):
        reconciler.reconcile(KEY)
    tries = [name for verb, name in refusing.pod_writes() if verb == "create"]
    assert tries == ["bert-0-capacity"] * MAX_PER_WINDOW, tries
