"""The operator's Prometheus endpoint and JSON logs, on a real operator process and real pods.

Each test runs an operator of its own (``operator_factory``, which stops the shared one: one operator
at a time may allocate cores on a cluster) with ``--metrics-port`` and ``--log-format json`` and
the operator's default timings.
"""

from __future__ import annotations

import json

import pytest

from neuronplace.local.operator_process import free_port
from neuronplace.runtime.coreset import CoreRange
from support.builders import inference
from support.cluster import apply, condition, get_inference, live, placed_and_ready, pods_of
from support.metrics import scrape, value

pytestmark = pytest.mark.cluster


@pytest.fixture
def metrics_operator(operator_factory):
    port = free_port()
    process = operator_factory(
        log_name="neuronplace-operator-metrics.log",
        metrics_port=port,
        log_format="json",
    )
    return process, f"http://127.0.0.1:{port}/metrics"


def test_metrics_follow_placements_and_the_ledger(local_cluster, metrics_operator, namespace, fleet, wait_for):
    _process, url = metrics_operator
    nodes = fleet({"inf2.48xlarge": 2})
    before = scrape(url)

    apply(local_cluster, namespace, inference("served", cores=4, replicas=3, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "served", 3), 90, "3 replicas placed")
    # 2 × 24 cores cannot hold a 32-core replica: a placement failure with reason Unschedulable.
    apply(local_cluster, namespace, inference("too-big", cores=32, replicas=1, pool=nodes.pool))
    wait_for(
        lambda: (
            condition(get_inference(local_cluster, namespace, "too-big"), "Placed").get("reason") == "Unschedulable"
        ),
        60,
        "too-big reported Unschedulable",
    )

    # The pods' annotations are the ledger's source of truth: the gauge must agree with them.
    held = {name: 0 for name in nodes}
    for pod in live(pods_of(local_cluster, namespace, "served")):
        held[pod["spec"]["nodeName"]] += CoreRange.parse(pod["metadata"]["annotations"]["neuronplace.io/cores"]).count

    def scraped_agrees():
        after = scrape(url)
        free = {name: after.get(("neuronplace_node_free_cores", frozenset({("node", name)}))) for name in nodes}
        return after if free == {name: 24 - held[name] for name in nodes} else None

    after = wait_for(scraped_agrees, 30, "free-cores gauge equal to 24 minus the pods' cores per node")

    assert sum(held.values()) == 12
    # Issue 28's series: per-inference replica states, the largest aligned free run per node (the
    # nodes' free cores hold at least one aligned run of 8), time to place, reconciles, build info.

    def states(found, name):
        return {
            # (the label "name" is value()'s own first parameter's name: look the sample up directly)
            state: found.get(
                ("neuronplace_replicas", frozenset(dict(namespace=namespace, name=name, state=state).items())), 0
            )
            for state in ("ready", "starting", "waiting_for_capacity", "pending")
        }

    def three_ready():
        found = scrape(url)
        return found if states(found, "served")["ready"] == 3 else None

    after = wait_for(
        three_ready,
        30,
        "neuronplace_replicas says 3 ready",
    )
    assert states(after, "served") == {"ready": 3, "starting": 0, "waiting_for_capacity": 0, "pending": 0}
    too_big = states(after, "too-big")
    assert too_big["ready"] == too_big["starting"] == 0 and too_big["waiting_for_capacity"] + too_big["pending"] == 1
    for name in nodes:
        largest = value(after, "neuronplace_node_largest_free_aligned_run_cores", node=name)
        assert 8 <= largest <= 24 - held[name], (name, largest, held[name])
    assert value(after, "neuronplace_time_to_place_seconds_count") >= 3
    assert (
        value(after, "neuronplace_reconciles_total", result="success")
        + value(after, "neuronplace_reconciles_total", result="requeue")
        > 0
    )
    assert [labels for name, labels in after if name == "neuronplace_build_info"]
    assert value(after, "neuronplace_placements_total") - value(before, "neuronplace_placements_total") >= 3
    assert value(after, "neuronplace_placement_failures_total", reason="Unschedulable") > value(
        before, "neuronplace_placement_failures_total", reason="Unschedulable"
    )
    assert value(after, "neuronplace_reconcile_duration_seconds_count") > value(
        before, "neuronplace_reconcile_duration_seconds_count"
    )

    # The ledger's size is every managed pod in the cluster (other tests' pods may still be going
    # away, so compare a scrape with a listing taken right after it until the two agree).
    def ledger_size_agrees():
        gauge = value(scrape(url), "neuronplace_ledger_pods", kind="managed")
        pods = json.loads(
            local_cluster.kubectl("get", "pods", "-A", "-l", "neuronplace.io/inference", "-o", "json").stdout
        )["items"]
        return gauge >= 3 and gauge == len([p for p in pods if p["spec"].get("nodeName")])

    wait_for(ledger_size_agrees, 60, "ledger-size gauge equal to the managed pods in the cluster")

    # Deleting the resource frees its cores; the next scrape shows them free again.
    local_cluster.kubectl("delete", "ninf", "served", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(
        lambda: all(value(scrape(url), "neuronplace_node_free_cores", node=name) == 24 for name in nodes),
        60,
        "all cores free again after the resource was deleted",
    )


def test_json_log_format(metrics_operator):
    process, _ = metrics_operator
    text = process.log_path.read_text(errors="replace")
    lines = text.split("===== start")[-1].splitlines()[1:]  # this process's output only
    records = []
    for line in lines:
        if line.strip():
            records.append(json.loads(line))  # every line is a JSON object, or this fails naming it
    assert records, "the operator logged nothing"
    assert any("neuronplace operator started" in record.get("message", "") for record in records)
    assert all("message" in record and "timestamp" in record for record in records)
