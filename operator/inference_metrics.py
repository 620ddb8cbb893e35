"""Per-NeuronInference metrics: replicas by state, how long replicas have waited for capacity, and
how long a missing replica took to get a pod.

Series are per inference (``namespace``, ``name``) and a fixed set of states, so their number is
bounded by the NeuronInferences the operator serves (four ``neuronplace_replicas`` series each, one
``neuronplace_capacity_wait_seconds`` while it waits); an inference's series go when it does. No
label names a pod, node or replica ordinal. ``time_to_place`` is a histogram without labels.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from neuronplace.operator.keys import Key
from neuronplace.placement.names import CONDITION_WAITING_FOR_CAPACITY

# The states of a wanted replica (``neuronplace_replicas{state}``); they add up to spec.replicas.
READY = "ready"  # its pod is Ready
STARTING = "starting"  # its pod exists (pinned, bound or running) and is not Ready yet
WAITING_FOR_CAPACITY = "waiting_for_capacity"  # no pod: fits on no node, a capacity request asks for one
PENDING = "pending"  # no pod for any other reason (no room and no request, backoff, refused, invalid spec)
STATES = (READY, STARTING, WAITING_FOR_CAPACITY, PENDING)

# From a few milliseconds (room free, one pod create) to the minutes a new node takes to join.
TIME_TO_PLACE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


@dataclass(frozen=True)
class InferenceView:
    """What the per-inference gauges report for one NeuronInference."""

    replicas: Mapping[str, int]  # state → wanted replicas in it
    waiting_since: float | None = None  # Unix seconds its WaitingForCapacity condition turned True


def desired_replicas(inference: Mapping) -> int:
    """``spec.replicas`` (1 when absent, 0 when not a number: validation refuses such a spec)."""
    replicas = (inference.get("spec") or {}).get("replicas", 1)
    return replicas if isinstance(replicas, int) and not isinstance(replicas, bool) else 0


def missing_replicas(status: Mapping, desired: int) -> set[int]:
    """The wanted replicas (ordinals below ``desired``) without a live pod in ``status.placements``."""
    return set(range(max(desired, 0))) - {entry.get("replica") for entry in status.get("placements") or []}


def inference_view(status: Mapping, desired: int, waiting: int) -> InferenceView:
    """The gauges of an inference from the ``status`` the operator just built for it, its
    ``desired`` replicas and how many of them the ruling has ``waiting`` for a new node."""
    desired = max(desired, 0)
    placed = desired - len(missing_replicas(status, desired))
    ready = min(status.get("readyReplicas") or 0, placed)
    waiting = min(waiting, desired - placed)
    replicas = {READY: ready, STARTING: placed - ready, WAITING_FOR_CAPACITY: waiting}
    replicas[PENDING] = desired - placed - waiting
    since = None
    for condition in status.get("conditions") or []:
        if condition.get("type") == CONDITION_WAITING_FOR_CAPACITY and condition.get("status") == "True":
            stamp = dt.datetime.strptime(condition["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ")
            since = stamp.replace(tzinfo=dt.UTC).timestamp()
    return InferenceView(replicas, since)


class InferenceCollector(Collector):
    """The latest :class:`InferenceView` of every inference, read at each scrape."""

    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        self._views: dict[Key, InferenceView] = {}
        self._guard = threading.Lock()

    def observe(self, key: Key, view: InferenceView) -> None:
        with self._guard:
            self._views[key] = view

    def forget(self, key: Key) -> None:
        with self._guard:
            self._views.pop(key, None)

    def collect(self):
        with self._guard:
            views = sorted(self._views.items())
        now = self._clock()
        replicas = GaugeMetricFamily(
            "neuronplace_replicas",
            "Wanted replicas of a NeuronInference by state (ready, starting, waiting_for_capacity, pending)",
            labels=["namespace", "name", "state"],
        )
        wait = GaugeMetricFamily(
            "neuronplace_capacity_wait_seconds",
            "Seconds since a NeuronInference's WaitingForCapacity condition turned True (absent when not waiting)",
            labels=["namespace", "name"],
        )
        for (namespace, name), view in views:
            for state in STATES:
                replicas.add_metric([namespace, name, state], view.replicas.get(state, 0))
            if view.waiting_since is not None:
                wait.add_metric([namespace, name], max(now - view.waiting_since, 0.0))
        yield replicas
        yield wait


class MissingReplicas:
    """When each replica was first found without a pod (monotonic seconds), until its pod is created."""

    def __init__(self) -> None:
        self._since: dict[Key, dict[int, float]] = {}
        self._guard = threading.Lock()

    def missing(self, key: Key, replicas: Iterable[int], now: float, *, only: bool = False) -> None:
        """``replicas`` have no pod at ``now``; ``only``: and every other replica has one, or is
        not wanted (what the status just built says), so its time is dropped."""
        with self._guard:
            before = self._since.get(key) or {}
            since = {r: before.get(r, now) for r in replicas}
            if not only:
                since = {**before, **since}
            if since:
                self._since[key] = since
            else:
                self._since.pop(key, None)

    def placed(self, key: Key, replicas: Iterable[int], now: float) -> list[float]:
        """``replicas`` got their pods at ``now``: how long each was missing."""
        with self._guard:
            since = self._since.get(key) or {}
            took = [now - since.pop(replica, now) for replica in replicas]
            if not since:
                self._since.pop(key, None)
            return took

    def forget(self, key: Key) -> None:
        with self._guard:
            self._since.pop(key, None)
