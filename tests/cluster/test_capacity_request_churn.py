"""Capacity requests never churn on a real control plane: a pod the ledger counts on a node and
kube-scheduler does not (pinned there, for a scheduler that does not exist, so nobody ever binds it)
makes kube-scheduler bind a waiting replica's capacity request to that node. The operator used to
delete it and make another, which was bound there again: thousands of pod events a minute. Now the
next request avoids that node (``placement.request_limits``) and waits Pending for a new one."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from neuronplace.local.fleet import KWOK_TOLERATION
from neuronplace.placement.names import (
    CAPACITY_REQUEST_LABEL,
    CONDITION_WAITING_FOR_CAPACITY,
    NEURONCORE_RESOURCE,
)
from neuronplace.placement.request_limits import MAX_PER_WINDOW
from support.builders import inference
from support.cluster import apply, condition, get_inference, pods_of

pytestmark = pytest.mark.cluster

WATCH_SECONDS = 40


def never_bound_blocker(node: str) -> dict:
    """A pod pinned to ``node`` asking for its two NeuronCores, for a scheduler nobody runs: the
    ledger counts it there (a pinned pod without scheduling gates that fits), kube-scheduler never
    does."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "blocker"},
        "spec": {
            "schedulerName": "nobody",
            "tolerations": [KWOK_TOLERATION],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
                        ]
                    }
                }
            },
            "containers": [
                {
                    "name": "c",
                    "image": "x",
                    "resources": {"requests": {NEURONCORE_RESOURCE: "2"}, "limits": {NEURONCORE_RESOURCE: "2"}},
                }
            ],
        },
    }


def watch_requests(cluster, namespace: str) -> subprocess.Popen:
    """``kubectl get -w`` of the namespace's capacity requests: one line per event, type, uid, node."""
    template = '{.type} {.object.metadata.uid} {.object.spec.nodeName}{"\\n"}'
    return subprocess.Popen(
        [
            str(cluster.bin_dir / "kubectl"),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "get",
            "pods",
            "-n",
            namespace,
            "-l",
            CAPACITY_REQUEST_LABEL,
            "--watch",
            "--output-watch-events",
            "-o",
            f"jsonpath={template}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def test_a_request_bound_where_the_replica_cannot_go_is_not_made_again_there(
    local_cluster, operator, namespace, fleet, wait_for
):
    nodes = fleet({"inf2.xlarge": 1})  # two NeuronCores
    node = nodes[0]
    local_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(never_bound_blocker(node)))
    watcher = watch_requests(local_cluster, namespace)
    try:
        apply(local_cluster, namespace, inference("web", cores=2, pool=nodes.pool, binding="Scheduler"))
        wait_for(
            lambda: (
                condition(get_inference(local_cluster, namespace, "web"), CONDITION_WAITING_FOR_CAPACITY).get("status")
                == "True"
            ),
            60,
            "the replica waiting for capacity",
        )
        # Counting creations for a while: nothing announces that a loop will never start. The
        # window is 40 s, two thirds of the rate bound's 60 s, so more than its 3 means a loop.
        time.sleep(WATCH_SECONDS)
    finally:
        watcher.terminate()
        output, _ = watcher.communicate(timeout=10)
    events = [line.split() for line in output.splitlines() if line.strip()]
    made = {fields[1] for fields in events if fields[0] == "ADDED"}
    bound_there = {fields[1] for fields in events if len(fields) > 2 and fields[2] == node}
    assert bound_there, f"kube-scheduler never bound a request to {node}: no disagreement was set up ({events[:5]})"
    assert len(made) <= MAX_PER_WINDOW, f"{len(made)} capacity requests made in {WATCH_SECONDS}s ({len(events)} events)"
    assert not pods_of(local_cluster, namespace, "web")  # the blocker still holds the node's cores
    waiting = condition(get_inference(local_cluster, namespace, "web"), CONDITION_WAITING_FOR_CAPACITY)
    assert "waiting for a new node" in waiting["message"] or "held back" in waiting["message"], waiting
