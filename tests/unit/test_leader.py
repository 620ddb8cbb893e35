"""The elector (``neuronplace.operator.leader``) against an in-memory Lease store with the API
server's optimistic concurrency (409 on a stale resourceVersion) and an injected monotonic clock:
acquiring, renewing, a restart under the same identity, release, the write fence and its exit."""

from __future__ import annotations

import argparse
import copy
import json

import pytest
from kubernetes.client.rest import ApiException

from neuronplace.operator import leader as ld
from neuronplace.operator.settings import OperatorSettings
from support.fake_api import Response


class Leases:
    """``CoordinationV1Api``'s Lease calls on one namespace, as the API server answers them."""

    def __init__(self) -> None:
        self.stored: dict[str, dict] = {}
        self.version = 0
        self.writes = 0

    def read_namespaced_lease(self, name, namespace, **_):
        if name not in self.stored:
            raise ApiException(status=404)
        return Response(self.stored[name])

    def _store(self, body: dict) -> None:
        self.version += 1
        self.writes += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.stored[body["metadata"]["name"]] = stored

    def create_namespaced_lease(self, namespace, body, **_):
        if body["metadata"]["name"] in self.stored:
            raise ApiException(status=409)
        self._store(body)

    def replace_namespaced_lease(self, name, namespace, body, **_):
        if self.stored[name]["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"]:
            raise ApiException(status=409)
        self._store(body)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Exited(Exception):
    pass


@pytest.fixture(autouse=True)
def no_exit(monkeypatch):
    """The fence ends the process; here it raises :class:`Exited` with the exit status instead."""

    def exit_(code):
        raise Exited(code)

    monkeypatch.setattr(ld.os, "_exit", exit_)


def elector(leases: Leases, clock: Clock, name: str) -> ld.Elector:
    return ld.Elector(OperatorSettings(pod_name=name), leases, lambda: None, clock)


def test_an_absent_lease_is_taken_at_the_first_attempt_and_renewed_with_its_version():
    leases, clock = Leases(), Clock()
    a = elector(leases, clock, "a")
    a.attempt()
    assert a.leading and leases.stored["neuronplace"]["spec"]["holderIdentity"] == "a"
    clock.now += 2
    a.attempt()
    assert leases.writes == 2 and a.renewed_at == clock.now


def test_a_follower_waits_a_lease_duration_after_the_last_change_it_saw():
    leases, clock = Leases(), Clock()
    a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
    a.attempt()
    b.attempt()
    assert not b.leading and b.holder == "a"
    clock.now += 14.9
    b.attempt()
    assert not b.leading
    clock.now += 0.1
    b.attempt()
    assert b.leading
    assert leases.stored["neuronplace"]["spec"]["leaseTransitions"] == 1


def test_a_restart_under_the_same_identity_takes_the_lease_back_at_once():
    leases, clock = Leases(), Clock()
    elector(leases, clock, "a").attempt()
    again = elector(leases, clock, "a")
    again.attempt()
    assert again.leading


def test_a_stale_version_loses_the_race():
    leases, clock = Leases(), Clock()
    a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
    leases.create_namespaced_lease("default", {"metadata": {"name": "neuronplace"}, "spec": {}})
    stale = leases.read_namespaced_lease("neuronplace", "default")
    b.attempt()  # free: b takes it
    a._read = lambda: json.loads(stale.data)  # a read before b wrote
    a.attempt()
    assert b.leading and not a.leading


def test_the_fence_refuses_a_write_past_the_renew_deadline_and_exits():
    leases, clock = Leases(), Clock()
    a = elector(leases, clock, "a")
    a.attempt()
    with a.writing():
        pass
    clock.now += 9.9
    with a.writing():
        pass
    clock.now += 0.1
    wrote = []
    with pytest.raises(Exited) as exited:
        with a.writing():
            wrote.append(1)
    assert exited.value.args == (ld.LOST_EXIT_CODE,) and wrote == []


def test_a_leader_that_wakes_late_exits_before_any_request():
    leases, clock = Leases(), Clock()
    a = elector(leases, clock, "a")
    a.attempt()
    clock.now += 30  # frozen
    with pytest.raises(Exited):
        a.attempt()
    assert leases.writes == 1


def test_a_follower_writes_nothing():
    leases, clock = Leases(), Clock()
    elector(leases, clock, "a").attempt()
    b = elector(leases, clock, "b")
    b.attempt()
    with pytest.raises(ld.NotLeading):
        with b.writing():
            pass


def test_release_clears_the_holder_so_a_follower_takes_it_at_once():
    leases, clock = Leases(), Clock()
    a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
    a.attempt()
    b.attempt()
    a.release()
    assert leases.stored["neuronplace"]["spec"]["holderIdentity"] is None
    with pytest.raises(ld.NotLeading):
        with a.writing():
            pass
    b.attempt()
    assert b.leading


def test_settings_flags_and_variables():
    from neuronplace.cli import run as run_cli

    assert OperatorSettings().lease_namespace() == "default"
    assert OperatorSettings(operator_namespace="ops").lease_namespace() == "ops"
    assert OperatorSettings(operator_namespace="ops", leader_election_namespace="le").lease_namespace() == "le"
    environ = {"NEURONPLACE_LEADER_ELECTION": "false", "NEURONPLACE_POD_NAME": "op-0"}
    assert not OperatorSettings.from_env(environ).leader_election
    assert ld.identity(OperatorSettings.from_env(environ)) == "op-0"
    assert ld.identity(OperatorSettings()).endswith(f"_{ld.os.getpid()}")
    parser = argparse.ArgumentParser()
    run_cli.configure(parser)
    flags = "--no-leader-election --leader-election-id x --lease-duration-seconds 30 --renew-deadline-seconds 20"
    settings = run_cli.settings_from_args(parser.parse_args(flags.split()))
    assert (settings.leader_election, settings.leader_election_id, settings.lease_duration_seconds) == (False, "x", 30)
    assert settings.renew_deadline_seconds == 20 and settings.retry_period_seconds == 2
    with pytest.raises(ValueError, match="lease duration > renew deadline"):
        OperatorSettings(renew_deadline_seconds=15)
    with pytest.raises(ValueError, match="leader_election_id"):
        OperatorSettings(leader_election_id=" ")


def test_every_write_passes_the_fence_and_is_counted():
    from neuronplace.operator import metrics as mx
    from neuronplace.operator.writes import Writer
    from support.fake_api import FakeApi

    leases, clock = Leases(), Clock()
    elector(leases, clock, "a").attempt()
    follower = elector(leases, clock, "b")
    follower.attempt()
    api = FakeApi()
    pod = {"metadata": {"name": "web-0", "namespace": "ns"}, "spec": {}}

    def counted() -> float:
        labels = {"verb": "create", "resource": "pods"}
        return mx.METRICS.registry.get_sample_value("neuronplace_api_writes_total", labels) or 0.0

    before = counted()
    with pytest.raises(ld.NotLeading):
        Writer(api, api, follower.writing).create_pod("ns", pod)
    assert api.calls == [] and counted() == before
    clock.now += 15
    follower.attempt()  # the Lease expired: b leads
    Writer(api, api, follower.writing).create_pod("ns", pod)
    assert api.pod_writes() == [("create", "web-0")] and counted() == before + 1
