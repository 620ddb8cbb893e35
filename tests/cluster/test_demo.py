"""The README's first command, run as a user runs it: ``neuronplace demo --down``.

It starts its own named cluster beside the session's (two clusters at once are supported), so
this proves the whole path: build/cached binaries, cluster, CRD, operator, the shipped examples, core map.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from neuronplace.local.cluster import list_clusters
from neuronplace.local.examples import example_resources
from neuronplace.placement.names import KIND
from neuronplace.runtime.coreset import CoreRange

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LEGEND_POD = re.compile(r"\b[A-Za-z] (\S+)/(\S+)-(\d+) (\d+(?:-\d+)?)")


def test_demo_places_every_example_and_tears_down():
    name = f"np-demo-{os.getpid()}"
    result = subprocess.run(
        [sys.executable, "-m", "neuronplace.cli", "demo", "--name", name, "--down"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout

    expected = {
        document["metadata"]["name"]: document["spec"].get("replicas", 1)
        for document in example_resources()
        if document.get("kind") == KIND
    }
    assert expected, "the shipped examples hold NeuronInference resources"

    # The printer columns: every example READY == REPLICAS.
    for example, replicas in expected.items():
        row = re.search(rf"^\S+\s+{re.escape(example)}\s+(\d+)\s+(\d+)\s", output, re.MULTILINE)
        assert row, f"{example} missing from the demo's table:\n{output}"
        assert (int(row.group(1)), int(row.group(2))) == (replicas, replicas)

    # The core map names every replica once, and no two replicas share a core on a node.
    legend = LEGEND_POD.findall(output)
    placed = {(pod, int(ordinal)) for _, pod, ordinal, _ in legend}
    assert placed == {(example, i) for example, replicas in expected.items() for i in range(replicas)}
    sections = re.split(r"^(?=\S+\s+\S+\s+\d+ cores, \d+ free$)", output, flags=re.MULTILINE)
    for section in sections:
        ranges = [CoreRange.parse(cores) for *_, cores in LEGEND_POD.findall(section)]
        for i, first in enumerate(ranges):
            assert not any(first.overlaps(second) for second in ranges[i + 1 :]), section

    assert name not in {cluster.name for cluster in list_clusters()}, "--down leaves no cluster behind"
