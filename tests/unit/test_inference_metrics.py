"""The metrics issue 28 added: largest aligned free run per node, replicas by state per inference,
capacity wait, time to place, reconciles by result and build info (pure parts and the exposition)."""

import platform

from prometheus_client import generate_latest

from neuronplace.operator import inference_metrics as im
from neuronplace.operator.metrics import OperatorMetrics, largest_aligned_by_node, snapshot_ledger
from neuronplace.placement.fitting import largest_aligned_fit
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.topology import topology_for
from support.builders import inference_uid, managed_pod, node_inventory
from support.metrics import samples

TRUSTED = [inference_uid("web")]
INF2 = topology_for("inf2.48xlarge")  # 12 chips of 2 cores


def mask(*ranges: tuple[int, int]) -> int:
    """Bits of the inclusive core ranges."""
    return sum(1 << core for first, last in ranges for core in range(first, last + 1))


def test_largest_aligned_fit_needs_an_aligned_start_not_just_free_cores():
    assert largest_aligned_fit(mask((0, 23)), 24, INF2) == 24
    # 4-23 free: 20 in a row, but 20 and 16 cores have no aligned start in it; 12 starts at 12.
    assert largest_aligned_fit(mask((4, 23)), 24, INF2) == 12
    # Single free cores on different chips: one core, never two.
    assert largest_aligned_fit(mask((1, 1), (2, 2)), 24, INF2) == 1
    assert largest_aligned_fit(mask((1, 2)), 24, INF2) == 1  # 1-2 crosses a chip boundary
    assert largest_aligned_fit(0, 24, INF2) == 0


def test_largest_aligned_by_node_reads_the_ledger_and_skips_unknown_topology():
    inventories = {"a": node_inventory("a"), "u": node_inventory("u", "m5.large", "8")}
    ledger = Ledger.from_pods([managed_pod("web-0", "a", "0-3")], TRUSTED)
    assert largest_aligned_by_node(ledger, inventories) == {"a": 12}


def status(placements, ready, waiting_since=None):
    conditions = [{"type": "Placed", "status": "False"}]
    if waiting_since:
        conditions.append({"type": "WaitingForCapacity", "status": "True", "lastTransitionTime": waiting_since})
    return {
        "placements": [{"replica": r} for r in placements],
        "readyReplicas": ready,
        "conditions": conditions,
    }


def test_replica_states_add_up_to_the_wanted_replicas():
    # 5 wanted: 0-2 have pods (2 ready), a surplus pod 7 is going, 2 of the 2 missing wait for a node.
    view = im.inference_view(status([0, 1, 2, 7], ready=2, waiting_since="2026-01-01T00:00:00Z"), 5, waiting=2)
    assert view.replicas == {"ready": 2, "starting": 1, "waiting_for_capacity": 2, "pending": 0}
    assert view.waiting_since == 1767225600.0
    # A surplus ready pod does not make a wanted replica ready; missing ones without a request pend.
    view = im.inference_view(status([0, 7], ready=2), 3, waiting=0)
    assert view.replicas == {"ready": 1, "starting": 0, "waiting_for_capacity": 0, "pending": 2}
    assert view.waiting_since is None
    assert im.missing_replicas(status([0, 7], 0), 3) == {1, 2}
    assert im.desired_replicas({"spec": {}}) == 1 and im.desired_replicas({"spec": {"replicas": "x"}}) == 0


def test_missing_replicas_time_from_first_seen_to_created():
    missing = im.MissingReplicas()
    key = ("ns", "web")
    missing.missing(key, [0, 1], 10.0)
    missing.missing(key, [1, 2], 12.0)  # 1 keeps its first time
    assert missing.placed(key, [1, 2], 15.0) == [5.0, 3.0]
    # The status says 0 got a pod some other way (e.g. a 409 whose pod was ours): its time is dropped.
    missing.missing(key, [3], 16.0, only=True)
    assert missing.placed(key, [0, 3], 20.0) == [0.0, 4.0]
    missing.missing(key, [4], 1.0)
    missing.forget(key)
    assert missing.placed(key, [4], 5.0) == [0.0]


def test_new_series_in_the_exposition_and_gone_with_their_inference():
    metrics = OperatorMetrics()
    metrics.inferences._clock = lambda: 1767225600.0 + 90
    metrics.inference_observed(("ns", "web"), im.inference_view(status([0], 1, "2026-01-01T00:00:00Z"), 2, 1))
    metrics.reconciled("success")
    metrics.reconciled("success")
    metrics.reconciled("error")
    metrics.missed([0.3, 40.0])
    inventories = {"a": node_inventory("a")}
    ledger = Ledger.from_pods([managed_pod("web-0", "a", "0-3")], TRUSTED)
    metrics.watch_ledger(lambda: snapshot_ledger(ledger, inventories))
    found = samples(generate_latest(metrics.registry).decode())

    def replicas(state):
        return found[("neuronplace_replicas", frozenset({("namespace", "ns"), ("name", "web"), ("state", state)}))]

    assert [replicas(s) for s in im.STATES] == [1, 0, 1, 0]
    assert found[("neuronplace_capacity_wait_seconds", frozenset({("namespace", "ns"), ("name", "web")}))] == 90
    assert found[("neuronplace_reconciles_total", frozenset({("result", "success")}))] == 2
    assert found[("neuronplace_reconciles_total", frozenset({("result", "error")}))] == 1
    assert found[("neuronplace_time_to_place_seconds_count", frozenset())] == 2
    assert found[("neuronplace_time_to_place_seconds_bucket", frozenset({("le", "0.5")}))] == 1
    assert found[("neuronplace_node_largest_free_aligned_run_cores", frozenset({("node", "a")}))] == 12
    (info,) = [labels for name, labels in found if name == "neuronplace_build_info"]
    assert dict(info)["python"] == platform.python_version() and dict(info)["version"]

    metrics.inference_gone(("ns", "web"))
    after = samples(generate_latest(metrics.registry).decode())
    assert not [k for k in after if k[0] in ("neuronplace_replicas", "neuronplace_capacity_wait_seconds")]
