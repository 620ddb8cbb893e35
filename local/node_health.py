"""Neuron hardware faults on the local control plane's simulated nodes: health conditions and
lowered allocatable, as the detectors and the device plugin write them on a real node.

On EKS the Neuron node problem detector and the node monitoring agent write a node condition
(``NeuronHealth``, ``AcceleratedHardwareReady``; see ``placement/health.py``) and the device plugin
lowers ``status.allocatable``. Here the same fields are written through the node's ``status``
subresource, as those agents do. kwok keeps them: its Stages (``kwok-stages.yaml``) write only the
conditions they know (strategic merge by ``type``) and carry ``status.allocatable`` over as it is;
a cluster test checks that both survive kwok's rewrite of the node's status.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass

from neuronplace.placement.health import STATUSES

_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_REASON = re.compile(r"^[A-Za-z0-9_.,:-]*$")
_RESOURCE = re.compile(r"^[a-z0-9.-]+/[a-z0-9.-]+$|^[a-z]+$")


@dataclass(frozen=True)
class ConditionChange:
    type_: str
    status: str
    reason: str


def parse_condition(text: str) -> ConditionChange:
    """``Type=Status[:Reason]`` (``NeuronHealth=True:NeuronHasError_HBM_UNCORRECTABLE_ERROR``)."""
    type_, equals, rest = text.partition("=")
    status, _, reason = rest.partition(":")
    if not equals or not _TYPE.match(type_) or status not in STATUSES or not _REASON.match(reason):
        raise ValueError(
            f"--condition {text!r} must be Type=Status[:Reason], Status one of {', '.join(STATUSES)}, e.g. "
            "NeuronHealth=True:NeuronHasError_HBM_UNCORRECTABLE_ERROR or AcceleratedHardwareReady=False:NeuronDMAError"
        )
    return ConditionChange(type_, status, reason)


def parse_allocatable(text: str) -> tuple[str, int]:
    """``resource=count`` (``aws.amazon.com/neuron=11``): a whole number, as extended resources are."""
    resource, equals, count = text.partition("=")
    if not equals or not _RESOURCE.match(resource) or not count.isdigit():
        raise ValueError(
            f"--allocatable {text!r} must be resource=count (a whole number), e.g. aws.amazon.com/neuron=11"
        )
    return resource, int(count)


def condition_patch(change: ConditionChange, now: dt.datetime) -> dict:
    """The status patch (strategic merge: conditions by type) that sets one condition."""
    stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "status": {
            "conditions": [
                {
                    "type": change.type_,
                    "status": change.status,
                    "reason": change.reason or change.status,
                    "message": f"set by neuronplace local node ({change.reason or change.status})",
                    "lastTransitionTime": stamp,
                    "lastHeartbeatTime": stamp,
                }
            ]
        }
    }


def set_condition(cluster, node: str, change: ConditionChange) -> None:
    """Write one condition on ``node`` (``cluster``: a :class:`~neuronplace.local.cluster.LocalCluster`)."""
    patch = json.dumps(condition_patch(change, dt.datetime.now(dt.UTC)))
    cluster.kubectl("patch", "node", node, "--subresource=status", "--type=strategic", "-p", patch, timeout=30)


def clear_condition(cluster, node: str, type_: str) -> bool:
    """Remove the condition ``type_`` from ``node``; False when it had none. The JSON patch tests
    the entry first, so a concurrent rewrite of the list fails the patch instead of removing another."""
    conditions = cluster.get_json("node", node).get("status", {}).get("conditions") or []
    for index, entry in enumerate(conditions):
        if entry.get("type") == type_:
            path = f"/status/conditions/{index}/type"
            ops = [
                {"op": "test", "path": path, "value": type_},
                {"op": "remove", "path": f"/status/conditions/{index}"},
            ]
            cluster.kubectl(
                "patch", "node", node, "--subresource=status", "--type=json", "-p", json.dumps(ops), timeout=30
            )
            return True
    return False


def set_allocatable(cluster, node: str, resource: str, count: int) -> None:
    """Set ``status.allocatable[resource]`` of ``node`` (capacity stays), as the device plugin does
    when devices turn unhealthy."""
    patch = json.dumps({"status": {"allocatable": {resource: str(count)}}})
    cluster.kubectl("patch", "node", node, "--subresource=status", "--type=merge", "-p", patch, timeout=30)
