"""The operator restarted half-way (SIGKILL in the middle of a scale-up, SIGTERM at rest): the
ledger is rebuilt from the pods, so nothing is duplicated, lost or moved."""

from __future__ import annotations

import pytest
from operator_support import (
    apply,
    assert_no_shared_cores,
    inference,
    live,
    placed_and_ready,
    pods_of,
)

pytestmark = pytest.mark.cluster

NAMES = ("alpha", "beta", "gamma")
REPLICAS = 10


def snapshot(cluster, namespace) -> dict[str, tuple[str, str, str]]:
    return {p["metadata"]["name"]: (p["metadata"]["uid"], p["spec"]["nodeName"],
                                    p["metadata"]["annotations"]["neuronplace.io/cores"])
            for name in NAMES for p in live(pods_of(cluster, namespace, name))}


def test_sigkill_during_scale_up_loses_and_duplicates_nothing(local_cluster, operator, namespace, fleet, wait_for):
    nodes = fleet({"inf2.48xlarge": 3})
    apply(local_cluster, namespace, *[inference(n, cores=2, replicas=1, pool=nodes.pool) for n in NAMES])
    for name in NAMES:
        wait_for(lambda: placed_and_ready(local_cluster, namespace, name, 1), 60, f"{name} placed")
    for name in NAMES:
        local_cluster.kubectl("scale", "ninf", name, "-n", namespace, f"--replicas={REPLICAS}", "--timeout=0s")
    # Kill as soon as the scale-up is visibly under way but not finished.
    wait_for(lambda: len(snapshot(local_cluster, namespace)) > len(NAMES), 30, "scale-up started", interval=0.02)
    operator.kill()
    at_kill = snapshot(local_cluster, namespace)
    operator.start()
    for name in NAMES:
        wait_for(lambda: placed_and_ready(local_cluster, namespace, name, REPLICAS), 120, f"{name} at {REPLICAS}")
    after = snapshot(local_cluster, namespace)
    assert sorted(after) == sorted(f"{n}-{i}" for n in NAMES for i in range(REPLICAS))
    for pod, (uid, node, cores) in at_kill.items():
        assert after[pod] == (uid, node, cores), f"{pod} was recreated or moved by the restart"
    all_pods = [p for name in NAMES for p in pods_of(local_cluster, namespace, name)]
    assert len(all_pods) == len(NAMES) * REPLICAS, "duplicate or leftover pods"
    assert_no_shared_cores(local_cluster)


def test_restart_at_rest_changes_nothing(local_cluster, operator, namespace, fleet, wait_for):
    nodes = fleet({"inf2.48xlarge": 1})
    apply(local_cluster, namespace, inference("alpha", cores=4, replicas=3, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "alpha", 3), 60, "alpha placed")
    before = snapshot(local_cluster, namespace)
    operator.restart()
    # A new resource after the restart must not be handed cores that live pods hold.
    apply(local_cluster, namespace, inference("beta", cores=4, replicas=3, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "beta", 3), 60, "beta placed")
    after = snapshot(local_cluster, namespace)
    assert {k: v for k, v in after.items() if k.startswith("alpha")} == before
    assert_no_shared_cores(local_cluster)
