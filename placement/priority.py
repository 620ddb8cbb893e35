"""Pod priority: which templates may name which PriorityClass, and the order of waiting inferences (pure).

A PriorityClass of value 1,000,000,000 or more is a system class (``system-cluster-critical``,
``system-node-critical``; no user-defined class may go higher). Such a pod preempts other
tenants' pods, and a kubelet admits it by evicting pods whose CPU and memory placement never
saw, so a template naming one is refused unless the operator allows it. The classes are read
from the cluster; the two built-in ones are known by name even before that.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, TypeVar

K = TypeVar("K")
SYSTEM_PRIORITY = 1_000_000_000
BUILT_IN_CLASSES = {"system-cluster-critical": 2_000_000_000, "system-node-critical": 2_000_001_000}


def class_name(inference: Mapping[str, Any]) -> str | None:
    """The template's ``priorityClassName``, or None."""
    spec = inference.get("spec") or {}
    template = spec.get("template") if isinstance(spec, Mapping) else None
    pod_spec = template.get("spec") if isinstance(template, Mapping) else None
    name = pod_spec.get("priorityClassName") if isinstance(pod_spec, Mapping) else None
    return name if isinstance(name, str) and name else None


def class_value(name: str | None, classes: Mapping[str, int]) -> int | None:
    """The value of the class ``name`` (None: no class named, or none of that name is known)."""
    if name is None:
        return None
    return classes.get(name, BUILT_IN_CLASSES.get(name))


def priority_refusal(inference: Mapping[str, Any], classes: Mapping[str, int], allow_system: bool) -> str | None:
    """Why the template's priority class is refused, or None.

    A class nobody knows is left to the API server, which refuses the pod naming it.
    """
    name = class_name(inference)
    value = class_value(name, classes)
    if allow_system or value is None or value < SYSTEM_PRIORITY:
        return None
    return (
        f"spec.template.spec.priorityClassName {name} has priority {value}, a system priority "
        f"(>= {SYSTEM_PRIORITY}): such pods preempt other tenants' pods and make the kubelet evict pods to "
        "admit them. Use a class below it, or ask the operator's administrator to set "
        "NEURONPLACE_ALLOW_SYSTEM_PRIORITY=true"
    )


def waiting_order(inferences: Mapping[K, Mapping[str, Any]], classes: Mapping[str, int]) -> list[K]:
    """The keys of ``inferences`` (waiting for room) in the order they are served.

    Higher priority first (a template without a class has priority 0: no globalDefault class is
    assumed). Within one priority, round-robin across namespaces: first the oldest inference of
    every namespace, then the second oldest of every namespace, and so on; within a round, the
    older first. So one namespace with a thousand waiting inferences delays another namespace's
    oldest by at most one place per namespace, never by a thousand. Ties keep the given order.
    """
    by_priority: dict[int, dict[str, list[tuple[str, K]]]] = {}
    for key, inference in inferences.items():
        meta = inference.get("metadata") or {}
        created = str(meta.get("creationTimestamp") or dt.datetime.max.isoformat())
        priority = class_value(class_name(inference), classes) or 0
        namespace = str(meta.get("namespace") or "")
        by_priority.setdefault(priority, {}).setdefault(namespace, []).append((created, key))
    order: list[K] = []
    for priority in sorted(by_priority, reverse=True):
        queues = [sorted(queue, key=lambda entry: entry[0]) for queue in by_priority[priority].values()]
        for turn in range(max(len(queue) for queue in queues)):
            round_ = [queue[turn] for queue in queues if turn < len(queue)]
            order.extend(key for _, key in sorted(round_, key=lambda entry: entry[0]))
    return order
