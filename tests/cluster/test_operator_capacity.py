"""20 resources created at once on a small fleet: placement is serialised (no core handed out
twice), the ones that do not fit say why, and they are placed as soon as room appears."""

from __future__ import annotations

import json

import pytest

from neuronplace.placement.conditions import condition, is_ready
from neuronplace.placement.names import CONDITION_PLACED, INFERENCE_LABEL, REASON_UNSCHEDULABLE
from support.builders import inference
from support.cluster import apply, assert_no_shared_cores, get_inference, placed_and_ready

pytestmark = [pytest.mark.cluster, pytest.mark.both_bindings]

COUNT = 20
CORES = 4  # 2 inf2.48xlarge = 48 cores = 12 replicas of 4 cores


def states(cluster, namespace, gone: frozenset[str] = frozenset()) -> dict[str, dict]:
    items = json.loads(cluster.kubectl("get", "ninf", "-n", namespace, "-o", "json").stdout)["items"]
    return {item["metadata"]["name"]: item for item in items if item["metadata"]["name"] not in gone}


def test_twenty_at_once_on_a_small_fleet(local_cluster, operator, namespace, fleet, wait_for):
    nodes = fleet({"inf2.48xlarge": 2})
    apply(local_cluster, namespace, *[inference(f"r{i:02d}", cores=CORES, pool=nodes.pool) for i in range(COUNT)])

    def settled():
        now = states(local_cluster, namespace)
        placed = [n for n, r in now.items() if is_ready(r)]
        waiting = [n for n, r in now.items() if condition(r, CONDITION_PLACED).get("reason") == REASON_UNSCHEDULABLE]
        return (placed, waiting) if len(placed) == 12 and len(waiting) == COUNT - 12 else None

    placed, waiting = wait_for(settled, 120, "12 placed and 8 unschedulable")
    assert_no_shared_cores(local_cluster)
    for name in waiting:
        placed_condition = condition(get_inference(local_cluster, namespace, name), CONDITION_PLACED)
        assert placed_condition["status"] == "False"
        assert "replica 0" in placed_condition["message"] and "cores" in placed_condition["message"], placed_condition
        assert not local_cluster.kubectl(
            "get", "pods", "-n", namespace, "-l", f"{INFERENCE_LABEL}={name}", "-o", "name"
        ).stdout.strip()
        events = local_cluster.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            f"involvedObject.name={name},reason=Unschedulable",
            "-o",
            "name",
        ).stdout.split()
        assert events, f"no Unschedulable event for {name}"

    # Room appears: four placed resources go, four waiting ones take their cores.
    local_cluster.kubectl("delete", "ninf", "-n", namespace, *placed[:4], "--wait=false")

    def refilled():
        now = states(local_cluster, namespace, frozenset(placed[:4]))
        ready = [n for n, r in now.items() if is_ready(r)]
        return len(ready) == 12 and ready

    ready = wait_for(refilled, 120, "four waiting resources placed in the freed room")
    assert len(set(ready) & set(waiting)) == 4
    assert_no_shared_cores(local_cluster)
    for name in ready:
        assert placed_and_ready(local_cluster, namespace, name, 1)
