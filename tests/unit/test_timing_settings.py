"""The operator's timings as settings: every wait a replica or a test sits through is a documented
field, read from ``NEURONPLACE_<FIELD>`` and ``neuronplace run`` flags, validated, and handed to
placement through ``Rules`` (placement reads no settings of its own)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt

import pytest

from neuronplace.cli import run as run_cli
from neuronplace.local.autoscaler import CONSOLIDATE_AFTER, TEST_CONSOLIDATE_AFTER, build_node_pool
from neuronplace.local.operator_process import TEST_TIMINGS, timing_flags
from neuronplace.operator.settings import OperatorSettings
from neuronplace.placement import failures
from neuronplace.placement.capacity_upkeep import SETTLE_SECONDS, to_create_now
from neuronplace.placement.health import HEALTH_SETTLE_SECONDS
from neuronplace.placement.replica_pods import SCHEDULER_SILENCE_SECONDS
from neuronplace.placement.ruling import Rules

TIMINGS = {
    # field: (default, flag, a short value as the cluster tests use)
    "unschedulable_seconds": (10.0, "--unschedulable-seconds", 3.0),
    "scheduler_silence_seconds": (SCHEDULER_SILENCE_SECONDS, "--scheduler-silence-seconds", 8.0),
    "failure_backoff_seconds": (failures.BACKOFF_FIRST_SECONDS, "--failure-backoff-seconds", 1.5),
    "max_failure_backoff_seconds": (failures.BACKOFF_MAX_SECONDS, "--max-failure-backoff-seconds", 12.0),
    "capacity_settle_seconds": (SETTLE_SECONDS, "--capacity-settle-seconds", 0.5),
    "resync_seconds": (30.0, "--resync-seconds", 5.0),
    "health_settle_seconds": (HEALTH_SETTLE_SECONDS, "--health-settle-seconds", 5.0),
}


def test_the_defaults_are_the_documented_ones():
    settings = OperatorSettings()
    assert {name: getattr(settings, name) for name in TIMINGS} == {
        name: default for name, (default, _, _) in TIMINGS.items()
    }
    assert (failures.BACKOFF_FIRST_SECONDS, failures.BACKOFF_MAX_SECONDS) == (10, 300)
    assert SCHEDULER_SILENCE_SECONDS == 30 and SETTLE_SECONDS == 1
    documented = OperatorSettings.__doc__ or ""
    for name in TIMINGS:
        assert f"    {name}: " in documented, f"{name} is not documented in OperatorSettings"


def test_every_timing_is_read_from_the_environment_and_written_back():
    environ = {f"NEURONPLACE_{name.upper()}": str(short) for name, (_, _, short) in TIMINGS.items()}
    settings = OperatorSettings.from_env(environ)
    assert {name: getattr(settings, name) for name in TIMINGS} == {name: s for name, (_, _, s) in TIMINGS.items()}
    assert OperatorSettings.from_env(settings.to_env()) == settings


def test_every_timing_is_a_flag_of_neuronplace_run_that_wins_over_the_environment(monkeypatch):
    for name in TIMINGS:
        monkeypatch.setenv(f"NEURONPLACE_{name.upper()}", "99")
    parser = argparse.ArgumentParser()
    run_cli.configure(parser)
    untouched = run_cli.settings_from_args(parser.parse_args([]))
    assert all(getattr(untouched, name) == 99 for name in TIMINGS), "the environment gives the defaults"
    argv = [part for _, flag, short in TIMINGS.values() for part in (flag, str(short))]
    settings = run_cli.settings_from_args(parser.parse_args(argv))
    assert {name: getattr(settings, name) for name in TIMINGS} == {name: s for name, (_, _, s) in TIMINGS.items()}


@pytest.mark.parametrize("name", sorted(TIMINGS))
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_a_timing_must_be_a_positive_number(name, value):
    with pytest.raises(ValueError, match=f"{name} must be > 0"):
        OperatorSettings(**{name: value})


def test_a_timing_that_is_no_number_is_refused_with_its_variable():
    with pytest.raises(ValueError, match="NEURONPLACE_FAILURE_BACKOFF_SECONDS='soon' is not a valid float"):
        OperatorSettings.from_env({"NEURONPLACE_FAILURE_BACKOFF_SECONDS": "soon"})


def test_the_failure_backoff_cap_is_at_least_its_first_step():
    with pytest.raises(ValueError, match=r"max_failure_backoff_seconds \(5.0\) must be >= failure_backoff_seconds"):
        OperatorSettings(failure_backoff_seconds=10.0, max_failure_backoff_seconds=5.0)
    with pytest.raises(ValueError, match="max_failure_backoff_seconds"):
        OperatorSettings.from_env({"NEURONPLACE_MAX_FAILURE_BACKOFF_SECONDS": "1"})  # below the default 10 s
    assert (
        OperatorSettings(failure_backoff_seconds=2.0, max_failure_backoff_seconds=2.0).max_failure_backoff_seconds == 2
    )


def test_the_error_backoff_stays_a_setting_of_its_own():
    settings = OperatorSettings(error_backoff_seconds=0.1, max_backoff_seconds=1.0)
    assert (settings.failure_backoff_seconds, settings.max_failure_backoff_seconds) == (10, 300)


def test_rules_carry_the_timings_the_ruling_depends_on():
    settings = OperatorSettings(**{name: short for name, (_, _, short) in TIMINGS.items()})
    rules = settings.rules()
    carried = {f.name for f in dataclasses.fields(Rules)}
    defaults = OperatorSettings().rules()
    # The resync is the operator's, not a ruling's; the health settle window is the operator's memory
    # of nodes (operator.node_health), which the ruling sees in the fleet.
    for name in TIMINGS.keys() - {"resync_seconds", "health_settle_seconds"}:
        assert name in carried and getattr(rules, name) == getattr(settings, name), name
        assert getattr(Rules(), name) == getattr(defaults, name), f"{name}: Rules and settings differ by default"


def test_the_capacity_settle_time_is_how_soon_requests_are_looked_at_again():
    assert to_create_now({1: "request"}, settling=True, settle_seconds=0.5) == ({}, 0.5)
    assert to_create_now({1: "request"}, settling=False, settle_seconds=0.5) == ({1: "request"}, None)


def test_the_failure_backoff_of_the_rules_is_what_a_failed_replica_waits():
    backoff = failures.Backoff(first=1.5, cap=12.0)
    assert [backoff.seconds(n) for n in range(1, 6)] == [1.5, 3, 6, 12, 12]
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    ended = failures.Failure(0, "t1", "n1", "OutOfcpu", "no cpu", True, True)
    history = failures.record(None, ended, now, backoff)
    assert history.waiting(now) == 1.5


def test_the_test_beds_timings_are_valid_flags_of_neuronplace_run():
    parser = argparse.ArgumentParser()
    run_cli.configure(parser)
    settings = run_cli.settings_from_args(parser.parse_args(list(timing_flags())))
    assert {name: getattr(settings, name) for name in TEST_TIMINGS} == dict(TEST_TIMINGS)
    assert set(TIMINGS) <= set(TEST_TIMINGS), "every timing a cluster test waits on is short there"
    assert all(TEST_TIMINGS[name] < default for name, (default, _, _) in TIMINGS.items())


def test_the_local_node_pools_consolidate_after_is_a_parameter_with_a_default():
    assert build_node_pool()["spec"]["disruption"]["consolidateAfter"] == CONSOLIDATE_AFTER == "10s"
    quick = build_node_pool(consolidate_after=TEST_CONSOLIDATE_AFTER)
    assert quick["spec"]["disruption"]["consolidateAfter"] == TEST_CONSOLIDATE_AFTER == "3s"
