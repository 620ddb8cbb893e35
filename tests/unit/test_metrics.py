"""Operator metrics: the ledger gauges' pure computation, the exposition, and the HTTP endpoint."""

import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from neuronplace.operator.metrics import (
    LedgerSnapshot,
    OperatorMetrics,
    failure_reason,
    free_cores_by_node,
    snapshot_ledger,
)
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.names import AWS_NEURON_IDS, CORES_ANNOTATION, INFERENCE_LABEL
from neuronplace.runtime.coreset import CoreRange
from support.builders import foreign_pod, inference_uid, managed_pod, node_inventory
from support.metrics import samples

TRUSTED = [inference_uid("web")]


def test_free_cores_subtract_managed_and_foreign_holdings():
    inventories = {"a": node_inventory("a"), "b": node_inventory("b", "trn1.32xlarge", "32"), "c": node_inventory("c")}
    ledger = Ledger.from_pods(
        [managed_pod("web-0", "a", "0-3"), managed_pod("web-1", "a", "8-11"), foreign_pod("x", "b", 2)], TRUSTED
    )
    ledger.learn_nodes(inventories.values())
    assert free_cores_by_node(ledger, inventories) == {"a": 16, "b": 30, "c": 24}


def test_free_cores_ignore_holdings_beyond_the_usable_cores():
    # The device plugin advertises 20 of the 24 cores: a range on 20-23 takes nothing usable.
    inventories = {"a": node_inventory("a", cores="20")}
    ledger = Ledger.from_pods([managed_pod("web-0", "a", "20-23"), managed_pod("web-1", "a", "0-1")], TRUSTED)
    assert free_cores_by_node(ledger, inventories) == {"a": 18}


def test_unknown_nodes_report_zero_and_unmanaged_nodes_are_absent():
    unknown = inventory_from_node(
        {"metadata": {"name": "u", "labels": {}}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    )
    ledger = Ledger.from_pods([managed_pod("web-0", "elsewhere", "0-1")], TRUSTED)
    assert free_cores_by_node(ledger, {"u": unknown}) == {"u": 0}


def test_snapshot_counts_managed_and_foreign_pods():
    inventories = {"a": node_inventory("a")}
    ledger = Ledger.from_pods(
        [managed_pod("web-0", "a", "0-3"), foreign_pod("x", "a", 2), foreign_pod("y", "a", 1)], TRUSTED
    )
    ledger.learn_nodes(inventories.values())
    snapshot = snapshot_ledger(ledger, inventories)
    assert snapshot == LedgerSnapshot(
        {"a": 24 - 4 - 3},
        managed_pods=1,
        foreign_pods=2,
        largest_aligned={"a": 10},
        device_management={"a": "DevicePlugin"},
    )


def test_snapshot_counts_inconsistent_claims_on_managed_nodes_by_reason():
    inventories = {"a": node_inventory("a")}
    fake = {  # hand-made: our label and a whole node's range, no owner, no request
        "metadata": {
            "name": "fake",
            "namespace": "x",
            "labels": {INFERENCE_LABEL: "web"},
            "annotations": {CORES_ANNOTATION: "0-23"},
        },
        "spec": {"nodeName": "a", "containers": [{"name": "c"}]},
        "status": {"phase": "Running"},
    }
    short = foreign_pod("short", "a", 4)
    short["metadata"]["annotations"] = {AWS_NEURON_IDS: "0,1"}
    elsewhere = foreign_pod("elsewhere", "unmanaged", 4)
    elsewhere["metadata"]["annotations"] = {AWS_NEURON_IDS: "0"}
    ledger = Ledger.from_pods([fake, short, elsewhere], TRUSTED)
    ledger.learn_nodes(inventories.values())
    snapshot = snapshot_ledger(ledger, inventories)
    assert snapshot.inconsistent == {("a", "NotOwned"): 1, ("a", "NeuronIdsMismatch"): 1}
    # The fake claims 0-23 and requests nothing: it holds nothing; the short one holds 0,1 + 2 assumed.
    assert snapshot.free_cores == {"a": 20}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 31), st.integers(1, 8)), max_size=40))
def test_free_plus_held_is_the_usable_cores(requests):
    """Whatever gets reserved, each node's free cores + the cores its holdings use = its usable cores."""
    inventories = {
        f"n{i}": node_inventory(f"n{i}", *(("trn1.32xlarge", "32") if i % 2 else ("inf2.48xlarge", "24")))
        for i in range(4)
    }
    ledger = Ledger()
    ledger.learn_nodes(inventories.values())
    for index, (n, start, count) in enumerate(requests):
        name = f"n{n}"
        cores = CoreRange(start, count)
        if cores.end < inventories[name].cores and not ledger.used_mask(name) & sum(1 << c for c in cores.ids):
            ledger.reserve(name, cores, f"default/p{index}")
    free = free_cores_by_node(ledger, inventories)
    for name, inventory in inventories.items():
        held = sum(h.count for h in ledger.holdings(name))
        assert free[name] + held == inventory.cores
        assert free[name] == ledger.free_count(name)  # agrees with the allocator's own index


def test_failure_reasons_by_http_status():
    assert [failure_reason(code) for code in (400, 422, 403, 409, 429, 500, None)] == [
        "PodRejected",
        "PodRejected",
        "PodForbidden",
        "Conflict",
        "Throttled",
        "ApiError",
        "ApiError",
    ]


def test_counters_histogram_and_ledger_gauges_in_the_exposition():
    metrics = OperatorMetrics()
    metrics.placed(3)
    metrics.placed(0)
    metrics.failed("Unschedulable", 2)
    metrics.failed("PodRejected")
    with metrics.time_reconcile():
        pass
    with pytest.raises(RuntimeError), metrics.time_reconcile():
        raise RuntimeError("a failed reconcile is timed too")

    inventories = {"a": node_inventory("a")}
    ledger = Ledger.from_pods([managed_pod("web-0", "a", "0-3")], TRUSTED)
    metrics.watch_ledger(lambda: snapshot_ledger(ledger, inventories))
    first = samples(generate_latest(metrics.registry).decode())
    assert first[("neuronplace_placements_total", frozenset())] == 3
    assert first[("neuronplace_placement_failures_total", frozenset({("reason", "Unschedulable")}))] == 2
    assert first[("neuronplace_placement_failures_total", frozenset({("reason", "PodRejected")}))] == 1
    assert first[("neuronplace_reconcile_duration_seconds_count", frozenset())] == 2
    assert first[("neuronplace_node_free_cores", frozenset({("node", "a")}))] == 20
    assert first[("neuronplace_ledger_pods", frozenset({("kind", "managed")}))] == 1
    assert first[("neuronplace_ledger_pods", frozenset({("kind", "foreign")}))] == 0
    assert not [key for key in first if key[0] == "neuronplace_node_inconsistent_claims"]
    assert ("process_resident_memory_bytes", frozenset()) in first

    # Gauges are read at scrape time: the next scrape sees the ledger as it is then.
    ledger.forget("default/web-0")
    inventories["b"] = node_inventory("b", "trn1.32xlarge", "32")
    second = samples(generate_latest(metrics.registry).decode())
    assert second[("neuronplace_node_free_cores", frozenset({("node", "a")}))] == 24
    assert second[("neuronplace_node_free_cores", frozenset({("node", "b")}))] == 32
    assert second[("neuronplace_ledger_pods", frozenset({("kind", "managed")}))] == 0

    ledger.distrust(inference_uid("web"))
    ledger.observe(managed_pod("web-0", "a", "0-3"))  # its NeuronInference is gone: not ours any more
    third = samples(generate_latest(metrics.registry).decode())
    assert third[("neuronplace_node_inconsistent_claims", frozenset({("node", "a"), ("reason", "NotOwned")}))] == 1
    assert third[("neuronplace_ledger_pods", frozenset({("kind", "foreign")}))] == 1


def test_watch_ledger_replaces_the_previous_source():
    metrics = OperatorMetrics()
    metrics.watch_ledger(lambda: LedgerSnapshot({"old": 1}, 0, 0))
    metrics.watch_ledger(lambda: LedgerSnapshot({"new": 2}, 0, 0))
    values = samples(generate_latest(metrics.registry).decode())
    assert values[("neuronplace_node_free_cores", frozenset({("node", "new")}))] == 2
    assert ("neuronplace_node_free_cores", frozenset({("node", "old")})) not in values


def test_the_operator_reads_the_ledger_under_the_cache_lock():
    from neuronplace.operator.cache import Cache

    cache = Cache()
    seen_locked = []

    def read(ledger, inventories):
        seen_locked.append(cache._lock.locked())
        return snapshot_ledger(ledger, inventories)

    metrics = OperatorMetrics()
    metrics.watch_ledger(lambda: cache.read_ledger(read))
    samples(generate_latest(metrics.registry).decode())
    assert seen_locked == [True]


def test_serve_exposes_metrics_over_http_and_stops():
    metrics = OperatorMetrics()
    metrics.placed(5)
    port = metrics.serve(0, "127.0.0.1")
    try:
        with pytest.raises(RuntimeError, match="already served"):
            metrics.serve(0, "127.0.0.1")
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "neuronplace_placements_total 5.0" in body
    finally:
        metrics.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


@pytest.mark.parametrize(("address", "reachable_on_another_address"), [("127.0.0.1", False), ("0.0.0.0", True)])
def test_the_metrics_address_narrows_who_can_connect(address, reachable_on_another_address):
    # 127.0.0.2 is this host too (all of 127/8 is loopback), but not the address 127.0.0.1 is bound to.
    metrics = OperatorMetrics()
    port = metrics.serve(0, address)
    try:
        if reachable_on_another_address:
            with urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=5) as response:
                assert response.status == 200
        else:
            with pytest.raises(OSError):
                urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=2)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                assert response.status == 200
    finally:
        metrics.stop()
