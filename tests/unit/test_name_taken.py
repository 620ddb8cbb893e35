"""A replica whose pod name another pod holds (issue 24, item 6): the operator reports it and waits
the failure backoff, and never loops on the API server's 409."""

from __future__ import annotations

import datetime as dt
from unittest import mock

from kubernetes.client.rest import ApiException
from test_capacity_requests import KEY, inference, pool, setup  # noqa: F401  (pool is a fixture)

from neuronplace.operator import reconciler as rc
from neuronplace.placement.names import CONDITION_REPLICA_FAILURE


def squat(api, name):
    """Make the fake API server answer 409 to every create of the pod ``name``."""
    create = api.create_namespaced_pod

    def create_or_conflict(namespace, body, **kwargs):
        if body["metadata"]["name"] == name:
            api.calls.append(("create", name))
            raise ApiException(status=409, reason="AlreadyExists")
        return create(namespace, body, **kwargs)

    api.create_namespaced_pod = create_or_conflict


def test_a_409_that_persists_is_a_name_taken_failure_with_the_backoff(pool):  # noqa: F811
    api, cache, reconciler = setup(pool, inference(replicas=1, cores=2))
    squat(api, "bert-0")
    start = dt.datetime(2026, 12, 6, 12, 0, 0, tzinfo=dt.UTC)
    now = [start]  # the reconciler's clock, moved by hand
    with mock.patch.object(rc.dt, "datetime", wraps=dt.datetime) as clock:
        clock.now.side_effect = lambda tz=None: now[0]
        assert reconciler.reconcile(KEY) == rc.CONFLICT_RETRY  # the cache may be behind: look again soon
        assert cache.ledger.holds("ml/bert-0")  # the reservation is kept meanwhile
        now[0] = start + dt.timedelta(seconds=1)
        reconciler.reconcile(KEY)
        now[0] = start + dt.timedelta(seconds=rc.NAME_TAKEN_AFTER + 1)
        retry = reconciler.reconcile(KEY)  # still 409 after NAME_TAKEN_AFTER: someone else's pod
        assert reconciler.reconcile(KEY) is not None  # within the backoff: no create at all
    assert retry is not None and retry >= 9  # the failure backoff (10 s), not a hot loop
    assert not cache.ledger.holds("ml/bert-0")  # nothing stays reserved for a pod that is not ours
    failure = {c["type"]: c for c in api.statuses[-1]["conditions"]}[CONDITION_REPLICA_FAILURE]
    assert failure["reason"] == "NameTaken" and "pod ml/bert-0 exists" in failure["message"]
    assert [c for c in api.calls if c == ("create", "bert-0")] == [("create", "bert-0")] * 3
