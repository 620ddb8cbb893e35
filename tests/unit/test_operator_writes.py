"""The operator's writes with an injected fake API: which failures are retried (and after how long),
which are permanent, and which are not failures at all."""

import json

import pytest
from kubernetes.client.rest import ApiException
from urllib3.exceptions import MaxRetryError, ProtocolError

from neuronplace.operator.workqueue import Retry
from neuronplace.operator.writes import CONFLICT_RETRY, THROTTLE_RETRY, Permanent, Temporary, Writer, classify
from support.builders import inference
from support.fake_api import FakeApi

NAMESPACE = "default"


def api_error(status: int, message: str | None = None, headers: dict | None = None) -> ApiException:
    error = ApiException(status=status, reason="Reason")
    if message is not None:
        error.body = json.dumps({"kind": "Status", "message": message})
    error.headers = headers
    return error


def writer(api: FakeApi) -> Writer:
    return Writer(core=api, custom=api)


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": NAMESPACE}, "spec": {}}
INFERENCE = inference("web", namespace=NAMESPACE, uid="uid-web")


# ---- the mapping --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 422])
def test_a_refused_object_is_permanent(status):
    outcome = classify(api_error(status, "spec.containers[0].image: Required value"))
    assert isinstance(outcome, Permanent) and not isinstance(outcome, Retry)
    assert outcome.status == status
    assert outcome.message == "spec.containers[0].image: Required value"


def test_a_conflict_is_retried_soon():
    outcome = classify(api_error(409, "already exists"))
    assert isinstance(outcome, Temporary) and outcome.delay == CONFLICT_RETRY == 0.2


@pytest.mark.parametrize(
    ("headers", "delay"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "7"}, 7.0),
        ({"Retry-After": "0"}, 0.1),
        ({"Retry-After": "soon"}, THROTTLE_RETRY),
        (None, THROTTLE_RETRY),
    ],
)
def test_throttling_is_retried_after_retry_after(headers, delay):
    outcome = classify(api_error(429, "too many requests", headers))
    assert isinstance(outcome, Temporary) and outcome.status == 429
    assert outcome.delay == delay


@pytest.mark.parametrize("status", [403, 404, 500, 502, 503, 504])
def test_other_answers_are_temporary_with_the_queues_backoff(status):
    outcome = classify(api_error(status))
    assert isinstance(outcome, Temporary) and isinstance(outcome, Retry)
    assert outcome.delay is None and outcome.status == status
    assert outcome.message == "Reason"  # no Status body: the HTTP reason


@pytest.mark.parametrize(
    "error",
    [
        ProtocolError("connection reset"),
        MaxRetryError(None, "/api", "refused"),
        TimeoutError("timed out"),
        ConnectionRefusedError(),
    ],
)
def test_no_answer_at_all_is_temporary(error):
    outcome = classify(error)
    assert isinstance(outcome, Temporary) and outcome.status is None and outcome.delay is None
    assert outcome.message


# ---- the writes ---------------------------------------------------------------------------------


def test_create_returns_the_stored_pod():
    api = FakeApi()
    created = writer(api).create_pod(NAMESPACE, POD)
    assert created["metadata"]["uid"] == "u1"
    assert api.calls[0][:3] == ("create", NAMESPACE, "web-0")
    assert api.calls[0][3]["_request_timeout"]  # never a call without a timeout


@pytest.mark.parametrize(
    ("error", "kind", "delay"),
    [
        (api_error(422, "bad pod"), Permanent, None),
        (api_error(409), Temporary, CONFLICT_RETRY),
        (api_error(429, headers={"Retry-After": "2"}), Temporary, 2.0),
        (api_error(403, "exceeded quota"), Temporary, None),
        (api_error(500), Temporary, None),
        (ProtocolError("reset"), Temporary, None),
    ],
)
def test_a_failed_create_raises_its_kind(error, kind, delay):
    with pytest.raises(kind) as raised:
        writer(FakeApi(error)).create_pod(NAMESPACE, POD)
    assert getattr(raised.value, "delay", None) == delay
    assert raised.value.__cause__ is error


def test_a_bug_is_not_disguised_as_an_api_error():
    with pytest.raises(KeyError):
        writer(FakeApi(KeyError("metadata"))).create_pod(NAMESPACE, POD)


@pytest.mark.parametrize("force", [False, True])
def test_delete_passes_the_grace_period_and_a_missing_pod_is_not_an_error(force):
    api = FakeApi()
    assert writer(api).delete_pod(NAMESPACE, "web-0", force=force) is True
    assert api.calls == [("delete", NAMESPACE, "web-0", 0 if force else None)]
    assert writer(FakeApi(api_error(404))).delete_pod(NAMESPACE, "web-0") is False


def test_delete_failures_are_classified():
    with pytest.raises(Temporary) as raised:
        writer(FakeApi(api_error(429, headers={"Retry-After": "4"}))).delete_pod(NAMESPACE, "web-0")
    assert raised.value.delay == 4.0
    with pytest.raises(Temporary) as raised:
        writer(FakeApi(api_error(503))).delete_pod(NAMESPACE, "web-0")
    assert raised.value.delay is None


def test_status_patch_and_its_failures():
    api = FakeApi()
    assert writer(api).patch_status(NAMESPACE, "web", {"replicas": 1}) is True
    assert api.calls == [("patch", NAMESPACE, "web", {"status": {"replicas": 1}})]
    assert writer(FakeApi(api_error(404))).patch_status(NAMESPACE, "web", {}) is False
    with pytest.raises(Temporary) as raised:
        writer(FakeApi(api_error(409))).patch_status(NAMESPACE, "web", {})
    assert raised.value.delay == CONFLICT_RETRY
    with pytest.raises(Permanent):
        writer(FakeApi(api_error(422, "status.replicas: Invalid value"))).patch_status(NAMESPACE, "web", {})


def test_events_are_posted_and_their_failures_swallowed():
    api = FakeApi()
    assert writer(api).post_event(INFERENCE, "Placed", "replica 0 → web-0") is True
    assert api.calls == [("event", NAMESPACE, "Placed", "replica 0 → web-0")]
    assert api.responses[0].drained  # the connection goes back to the pool
    for error in (api_error(403), api_error(500), ProtocolError("reset"), RuntimeError("bug")):
        assert writer(FakeApi(error)).post_event(INFERENCE, "Placed", "x") is False
