"""``kubectl get ninf`` on the local cluster: by default the reasons of the Placed, Ready and
WaitingForCapacity conditions (empty while a condition is absent); ``-o wide`` adds Strategy and
Binding."""

from __future__ import annotations

import re

import pytest

from neuronplace.placement.names import (
    REASON_CAPACITY_REQUESTED,
    REASON_NOT_READY,
    REASON_PLACED,
    REASON_READY,
    REASON_UNSCHEDULABLE,
)
from support.builders import inference
from support.cluster import apply, condition, get_inference, placed_and_ready

pytestmark = pytest.mark.cluster


def table(text: str) -> dict[str, dict[str, str]]:
    """kubectl's table by row name and column header, cut at the headers' positions (an empty cell
    stays empty instead of shifting the cells after it)."""
    header, *rows = [line for line in text.splitlines() if line.strip()]
    cells = list(re.finditer(r"\S+", header))
    names, starts = [cell.group() for cell in cells], [cell.start() for cell in cells]
    ends = [*starts[1:], None]
    return {
        row.split()[0]: {name: row[start:end].strip() for name, start, end in zip(names, starts, ends)} for row in rows
    }


def test_default_columns_show_the_conditions_reasons_and_wide_the_strategy(
    local_cluster, operator, binding, namespace, fleet, wait_for
):
    nodes = fleet({"inf2.xlarge": 1})  # two NeuronCores
    apply(local_cluster, namespace, inference("fits", cores=1, pool=nodes.pool))
    apply(local_cluster, namespace, inference("waits", cores=8, pool=nodes.pool))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "fits", 1), 90, "fits placed and ready")
    wait_for(
        lambda: condition(get_inference(local_cluster, namespace, "waits"), "WaitingForCapacity").get("reason"),
        60,
        "waits WaitingForCapacity",
    )

    shown = table(local_cluster.kubectl("get", "ninf", "-n", namespace).stdout)
    assert list(shown["fits"]) == [
        "NAME",
        "REPLICAS",
        "READYREPLICAS",
        "CORES",
        "PLACED",
        "READY",
        "WAITINGFORCAPACITY",
        "AGE",
    ]
    fits, waits = shown["fits"], shown["waits"]
    assert (fits["REPLICAS"], fits["READYREPLICAS"], fits["CORES"]) == ("1", "1", "1")
    assert (fits["PLACED"], fits["READY"], fits["WAITINGFORCAPACITY"]) == (REASON_PLACED, REASON_READY, "")
    assert (waits["PLACED"], waits["READY"], waits["WAITINGFORCAPACITY"]) == (
        REASON_UNSCHEDULABLE,
        REASON_NOT_READY,
        REASON_CAPACITY_REQUESTED,
    )

    wide = table(local_cluster.kubectl("get", "ninf", "-n", namespace, "-o", "wide").stdout)
    assert (wide["fits"]["STRATEGY"], wide["fits"]["BINDING"]) == ("BinPack", binding)
    assert list(wide["fits"])[-3:] == ["STRATEGY", "BINDING", "AGE"]
