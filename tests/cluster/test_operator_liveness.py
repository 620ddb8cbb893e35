"""The operator's /healthz answers while a large backlog is ruled: watch events are folded into the
cache off kopf's event loop (which serves /healthz), so a ruling of a thousand replicas that holds the
cache's lock never keeps the probe waiting, however many pod deletions ask for waiting inferences
to be looked at again."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

from neuronplace.placement.names import CONDITION_PLACED, REASON_UNSCHEDULABLE
from support.builders import inference
from support.cluster import apply, condition, get_inference

pytestmark = pytest.mark.cluster

NAMESPACES = 6  # each with one inference of 1,000 replicas, 999 of them fitting nowhere
REPLICAS = 1000
CHURN_SECONDS = 30
PROBE_LIMIT = 1.0  # seconds /healthz may take


def churn_pods(cluster, namespace: str, count: int = 10) -> None:
    """Create ``count`` plain pods and force-delete them: every deletion may free room, so the
    operator looks at the inferences waiting for room again."""
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"churn-{i}"},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
        }
        for i in range(count)
    ]
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": pods})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=body)
    cluster.kubectl("delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force", "--wait=false")


def test_healthz_answers_within_a_second_while_thousands_of_replicas_are_ruled(
    local_cluster, operator, namespace, fleet, wait_for
):
    nodes = fleet({"inf2.xlarge": 1})  # room for one 2-core replica
    spaces = [f"{namespace}-{i}" for i in range(NAMESPACES)]
    for space in spaces:
        local_cluster.kubectl("create", "namespace", space)
    latencies: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(operator.liveness_url, timeout=10) as response:
                    response.read()
            except OSError as error:
                failures.append(str(error))
            latencies.append(time.monotonic() - started)
            time.sleep(0.1)  # the probe interval: ten a second find any stall of the event loop

    prober = threading.Thread(target=probe, daemon=True)
    try:
        for space in spaces:
            apply(
                local_cluster,
                space,
                inference("big", cores=2, replicas=REPLICAS, pool=nodes.pool, binding="Direct"),
            )
        wait_for(
            lambda: all(
                condition(get_inference(local_cluster, space, "big"), CONDITION_PLACED).get("reason")
                == REASON_UNSCHEDULABLE
                for space in spaces
            ),
            120,
            "every inference ruled (999 replicas unplaceable each)",
        )
        prober.start()
        deadline = time.monotonic() + CHURN_SECONDS
        while time.monotonic() < deadline:
            churn_pods(local_cluster, namespace)
    finally:
        stop.set()
        if prober.is_alive():
            prober.join(15)
        for space in spaces:
            local_cluster.kubectl("delete", "namespace", space, "--wait=false", check=False)
    assert latencies, "the probe never ran"
    slowest = max(latencies)
    print(
        f"/healthz over {len(latencies)} probes: slowest {slowest:.3f}s, median {sorted(latencies)[len(latencies) // 2]:.3f}s"
    )
    assert not failures and slowest < PROBE_LIMIT, (
        f"/healthz took up to {slowest:.2f}s over {len(latencies)} probes ({len(failures)} failed: {failures[:3]})"
    )
