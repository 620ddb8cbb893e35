"""`neuronplace cores` (and `kubectl neuronplace cores`, the same program as a kubectl plugin)
against the live cluster: the map shows every replica's cores and what is free."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.builders import inference
from support.cluster import apply, placed_and_ready, pods_of

pytestmark = pytest.mark.cluster


def test_core_map_of_a_live_cluster(local_cluster, operator, namespace, fleet, wait_for, tmp_path):
    nodes = fleet({"inf2.48xlarge": 1})
    apply(local_cluster, namespace, inference("svc", cores=4, replicas=2, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "svc", 2), 60, "svc placed")
    ranges = {
        p["metadata"]["name"]: p["metadata"]["annotations"]["neuronplace.io/cores"]
        for p in pods_of(local_cluster, namespace, "svc")
    }
    png = tmp_path / "cores.png"
    selector = f"neuronplace.io/pool={nodes.pool}"
    result = subprocess.run(
        [sys.executable, "-m", "neuronplace.cli", "cores", "--selector", selector, "--png", str(png)],
        env=local_cluster.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(nodes[0]) and "24 cores, 16 free" in lines[0]
    assert lines[1].split() == ["AA", "AA", "BB", "BB"] + [".."] * 8
    for pod, cores in ranges.items():
        assert f"{namespace}/{pod} {cores}" in lines[2]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # kubectl refuses flags before a plugin's name, so no --kubeconfig here: KUBECONFIG is in env().
    plugin = subprocess.run(
        [str(local_cluster.bin_dir / "kubectl"), "neuronplace", "cores", "--selector", selector],
        env=local_cluster.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plugin.returncode == 0, plugin.stderr
    assert plugin.stdout.splitlines()[:3] == lines[:3]
