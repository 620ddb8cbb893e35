"""One reconcile against an injected fake API: what each kind of failed pod create does to the
ledger, the status written, the Events and the requeue delay."""

import functools
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from kubernetes.client.rest import ApiException

from neuronplace.operator.cache import Cache
from neuronplace.operator.reconciler import Reconciler
from neuronplace.operator.settings import OperatorSettings
from neuronplace.operator.writes import Temporary, Writer
from neuronplace.placement.conditions import condition
from neuronplace.placement.names import (
    CONDITION_PLACED,
    REASON_INVALID_SPEC,
    REASON_NAMESPACE_NOT_SERVED,
    REASON_PLACED,
    REASON_POD_REJECTED,
    REASON_UNSCHEDULABLE,
)
from support import builders
from support.builders import kwok_node
from support.fake_api import FakeApi

NAMESPACE = "ml"
KEY = (NAMESPACE, "bert")
SETTINGS = OperatorSettings(max_backoff_seconds=30.0)


# The resource every test here reconciles: ml/bert, 2 replicas of 2 cores.
inference = functools.partial(
    builders.inference, "bert", namespace=NAMESPACE, uid="uid-1", generation=1, replicas=2, image="bert:1"
)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def setup(api: FakeApi, pool, resource: dict, nodes=("n1",)) -> tuple[Cache, Reconciler]:
    cache = Cache()
    for name in nodes:
        cache.observe_node(kwok_node(name))
    cache.apply_inference("ADDED", resource)
    return cache, Reconciler(SETTINGS, cache, Writer(core=api, custom=api), pool)


def placed_condition(api: FakeApi) -> dict:
    return dict(condition({"status": api.statuses[-1]}, CONDITION_PLACED))


def test_created_pods_are_cached_and_reported(pool):
    api = FakeApi()
    cache, reconciler = setup(api, pool, inference(replicas=2, cores=1))
    assert reconciler.reconcile(KEY) is None
    assert sorted(api.created) == ["bert-0", "bert-1"]
    assert cache.ledger.holds("ml/bert-0") and cache.ledger.holds("ml/bert-1")
    assert len(cache.pods_of_inference(KEY)) == 2
    assert not cache.inflight
    assert (REASON_PLACED, "Normal") in api.events
    assert placed_condition(api)["status"] == "True"


def test_a_refused_pod_is_permanent_for_this_generation(pool):
    refused = ApiException(status=422, reason="Unprocessable Entity")
    refused.body = json.dumps({"message": "spec.containers[0].image: Invalid value"})
    api = FakeApi(create_error=refused)
    cache, reconciler = setup(api, pool, inference(replicas=1))
    assert reconciler.reconcile(KEY) is None
    assert not cache.ledger.holds("ml/bert-0")  # the reservation is given back
    placed = placed_condition(api)
    assert placed["status"] == "False" and placed["reason"] == REASON_POD_REJECTED
    assert "Invalid value" in placed["message"]
    assert api.events == [(REASON_POD_REJECTED, "Warning")]

    # Not tried again while the spec stays the same ...
    api.create_error = None
    reconciler.reconcile(KEY)
    assert api.created == []
    # ... and tried again once it changes.
    cache.apply_inference("MODIFIED", inference(replicas=1, generation=2, image="bert:2"))
    reconciler.reconcile(KEY)
    assert api.created == ["bert-0"]


def test_a_conflict_keeps_the_reservation_and_retries_soon(pool):
    api = FakeApi(create_error=ApiException(status=409, reason="Conflict"))
    cache, reconciler = setup(api, pool, inference(replicas=1))
    assert reconciler.reconcile(KEY) == pytest.approx(0.2)
    assert cache.ledger.holds("ml/bert-0")  # the watch event of the existing pod replaces it
    assert not cache.inflight


def test_throttling_is_raised_to_the_queue_with_retry_after(pool):
    throttled = ApiException(status=429, reason="Too Many Requests")
    throttled.headers = {"Retry-After": "3"}
    api = FakeApi(create_error=throttled)
    cache, reconciler = setup(api, pool, inference(replicas=1))
    with pytest.raises(Temporary) as raised:
        reconciler.reconcile(KEY)
    assert raised.value.delay == 3.0
    assert not cache.ledger.holds("ml/bert-0")


def test_forbidden_is_reported_once_and_retried_slowly(pool):
    forbidden = ApiException(status=403, reason="Forbidden")
    forbidden.body = json.dumps({"message": "exceeded quota: pods"})
    api = FakeApi(create_error=forbidden)
    _, reconciler = setup(api, pool, inference(replicas=1))
    assert reconciler.reconcile(KEY) == SETTINGS.max_backoff_seconds
    assert reconciler.reconcile(KEY) == SETTINGS.max_backoff_seconds
    assert api.events == [("PodForbidden", "Warning")]  # the same warning is posted once
    assert "exceeded quota" in placed_condition(api)["message"]


def test_a_server_error_is_raised_to_the_queue_for_backoff(pool):
    api = FakeApi(create_error=ApiException(status=503, reason="Service Unavailable"))
    cache, reconciler = setup(api, pool, inference(replicas=1))
    with pytest.raises(Temporary) as raised:
        reconciler.reconcile(KEY)
    assert raised.value.delay is None
    assert not cache.ledger.holds("ml/bert-0")


def test_no_room_is_reported_and_the_resource_waits_for_room(pool):
    api = FakeApi()
    cache, reconciler = setup(api, pool, inference(replicas=2, cores=2))  # one 2-core node: room for one
    reconciler.reconcile(KEY)
    assert api.created == ["bert-0"]
    assert KEY in cache.waiting_for_room
    assert placed_condition(api)["reason"] == REASON_UNSCHEDULABLE
    # A node appearing wakes it up.
    assert KEY in cache.apply_node("ADDED", kwok_node("n2"))


def test_an_invalid_spec_gets_a_status_and_no_pods(pool):
    api = FakeApi()
    bad = inference()
    bad["spec"]["template"]["spec"]["nodeName"] = "n1"
    _, reconciler = setup(api, pool, bad)
    assert reconciler.reconcile(KEY) is None
    assert api.created == []
    assert placed_condition(api)["reason"] == REASON_INVALID_SPEC


@pytest.mark.parametrize(
    ("operator_namespace", "serve", "served"),
    [(NAMESPACE, False, False), (NAMESPACE, True, True), ("neuronplace", False, True), ("", False, True)],
)
def test_the_operators_own_namespace_gets_no_pods_unless_served(pool, operator_namespace, serve, served):
    api = FakeApi()
    cache = Cache()
    cache.observe_node(kwok_node("n1"))
    cache.apply_inference("ADDED", inference(replicas=1, cores=1))
    settings = OperatorSettings(operator_namespace=operator_namespace, serve_operator_namespace=serve)
    Reconciler(settings, cache, Writer(core=api, custom=api), pool).reconcile(KEY)
    if served:
        assert api.created == ["bert-0"]
    else:
        assert api.created == [] and not cache.ledger.pods()
        placed = placed_condition(api)
        assert placed["status"] == "False" and placed["reason"] == REASON_NAMESPACE_NOT_SERVED
        assert "the operator's own namespace" in placed["message"]
        assert (REASON_NAMESPACE_NOT_SERVED, "Warning") in api.events


def test_forget_drops_what_was_remembered(pool):
    refused = ApiException(status=400, reason="Bad Request")
    api = FakeApi(create_error=refused)
    cache, reconciler = setup(api, pool, inference(replicas=1))
    reconciler.reconcile(KEY)
    assert KEY in reconciler.refused
    # The resource is deleted and created again under the same name (generation 1 again).
    cache.apply_inference("DELETED", inference())
    reconciler.forget(KEY)
    cache.apply_inference("ADDED", inference(replicas=1))
    api.create_error = None
    reconciler.reconcile(KEY)
    assert api.created == ["bert-0"]
