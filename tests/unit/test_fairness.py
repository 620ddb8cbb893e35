"""Fairness among inferences waiting for room: the waiting order (priority, then round-robin across
namespaces, then age), the bound on the retries one event makes, and watch events that never block
kopf's event loop (which also answers /healthz) while a ruling holds the cache's lock."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import kopf
import pytest
from hypothesis import given
from hypothesis import strategies as st

from neuronplace.operator import handlers
from neuronplace.operator.cache import Cache
from neuronplace.operator.controller import Controller
from neuronplace.operator.keys import DELETED
from neuronplace.operator.settings import OperatorSettings
from neuronplace.placement.priority import waiting_order


def inference(namespace: str, name: str, created: str, class_name: str | None = None) -> dict:
    spec: dict = {"containers": [{"name": "m"}]}
    if class_name:
        spec["priorityClassName"] = class_name
    return {
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
        "spec": {"template": {"spec": spec}},
    }


def at(minute: int) -> str:
    return f"2026-11-30T{10 + minute // 60:02d}:{minute % 60:02d}:00Z"


def test_one_namespace_with_many_waiting_delays_another_by_one_place_per_round():
    waiting = {("big", f"b{i}"): inference("big", f"b{i}", at(i)) for i in range(1000)}
    waiting[("small", "s0")] = inference("small", "s0", at(500))
    order = waiting_order(waiting, {})
    assert order[:3] == [("big", "b0"), ("small", "s0"), ("big", "b1")]
    assert sorted(order) == sorted(waiting)


def test_priority_first_then_round_robin_across_namespaces_then_age():
    classes = {"high": 1000}
    waiting = {
        ("a", "a-old"): inference("a", "a-old", at(1)),
        ("a", "a-mid"): inference("a", "a-mid", at(2)),
        ("a", "a-new"): inference("a", "a-new", at(3)),
        ("b", "b-late"): inference("b", "b-late", at(5)),
        ("b", "b-high"): inference("b", "b-high", at(9), "high"),
        ("c", "c-first"): inference("c", "c-first", at(0)),
    }
    assert [name for _, name in waiting_order(waiting, classes)] == [
        "b-high",  # priority first
        "c-first",  # round 1: every namespace's oldest, older first
        "a-old",
        "b-late",
        "a-mid",  # round 2: only a has more
        "a-new",
    ]


def test_ties_keep_the_order_given():
    waiting = {("ns", name): inference("ns", name, at(0)) for name in ("z", "a", "m")}
    assert [name for _, name in waiting_order(waiting, {})] == ["z", "a", "m"]


@given(
    st.lists(
        st.tuples(st.sampled_from("abcd"), st.integers(0, 50), st.sampled_from([None, "high", "low"])),
        max_size=40,
    )
)
def test_within_a_priority_no_namespace_gets_two_turns_ahead_of_another(entries):
    classes = {"high": 10, "low": -10}
    waiting = {
        (namespace, f"i{index}"): inference(namespace, f"i{index}", at(minute), class_name)
        for index, (namespace, minute, class_name) in enumerate(entries)
    }
    order = waiting_order(waiting, classes)
    assert sorted(order) == sorted(waiting)
    priority = [classes.get(waiting[key]["spec"]["template"]["spec"].get("priorityClassName"), 0) for key in order]
    assert priority == sorted(priority, reverse=True)
    for level in set(priority):
        block = [key for key, p in zip(order, priority) if p == level]
        total = Counter(namespace for namespace, _ in block)
        served: Counter = Counter()
        for namespace, _ in block:
            # A namespace's k-th turn comes only once every namespace with k turns' worth has had k-1.
            assert all(served[other] >= served[namespace] for other in total if total[other] > served[namespace])
            served[namespace] += 1
        for namespace in total:  # a namespace's own inferences, oldest first
            ages = [waiting[key]["metadata"]["creationTimestamp"] for key in block if key[0] == namespace]
            assert ages == sorted(ages)


def waiting_cache(count: int) -> Cache:
    cache = Cache()
    for i in range(count):
        key = cache.apply_inference("ADDED", inference("big", f"b{i:04d}", at(i % 1000)))
        cache.waiting_for_room.add(key)
    return cache


def test_a_bound_keeps_only_the_first_waiting_and_every_other_key():
    cache = waiting_cache(50)
    other = cache.apply_inference("ADDED", inference("small", "lost-node", at(0)))  # not waiting
    kept = cache.in_waiting_order([*cache.waiting_for_room, other], 5)
    assert other in kept and len(kept) == 6
    assert [key for key in kept if key != other] == cache.in_waiting_order(cache.waiting_for_room)[:5]


def test_a_pod_deletion_retries_at_most_the_setting_s_number_of_waiting_inferences():
    async def scenario() -> tuple[set, int]:
        controller = Controller(OperatorSettings(waiting_retries_per_event=7), core=None, custom=None)
        controller.cache = waiting_cache(300)
        controller.loop = asyncio.get_running_loop()
        controller.queue.loop = controller.loop  # the queue's workers are not started: keys stay pending
        controller.queue.queue = asyncio.Queue()
        try:
            gone = {"metadata": {"namespace": "other", "name": "someone"}}
            await handlers.pod_event(event={"type": DELETED, "object": gone}, memo=kopf.Memo(controller=controller))
            await asyncio.sleep(0.05)  # the enqueues hop back onto the loop
            return set(controller.queue.pending), len(controller.cache.waiting_for_room)
        finally:
            await controller.stop()

    pending, waiting = asyncio.run(scenario())
    assert waiting == 300
    assert len(pending) == 7
    assert pending == {("big", f"b{i:04d}") for i in range(7)}  # the oldest


def test_events_never_block_the_event_loop_while_a_ruling_holds_the_cache_lock():
    async def scenario() -> tuple[float, bool, float]:
        controller = Controller(OperatorSettings(), core=None, custom=None)
        memo = kopf.Memo(controller=controller)
        held, release = threading.Event(), threading.Event()

        def long_ruling(ledger, inventories):  # holds the lock as a ruling of 1,000 replicas does
            held.set()
            release.wait(5)

        holder = threading.Thread(target=controller.cache.read_ledger, args=(long_ruling,))
        holder.start()
        held.wait(5)
        try:
            pod = {"metadata": {"namespace": "ns", "name": "p"}}
            event = asyncio.create_task(handlers.pod_event(event={"type": "ADDED", "object": pod}, memo=memo))
            started = time.monotonic()
            await asyncio.sleep(0.05)
            probed = handlers.ledger_probe(memo=memo)["ready"]  # what /healthz answers
            lag = time.monotonic() - started
            still_waiting = not event.done()
            release.set()
            begun = time.monotonic()
            await asyncio.wait_for(event, 5)
            return lag, still_waiting and probed, time.monotonic() - begun
        finally:
            release.set()
            holder.join()
            await controller.stop()

    lag, event_waited_off_loop, handled_after = asyncio.run(scenario())
    assert lag < 1.0, f"the event loop was blocked for {lag:.1f}s"
    assert event_waited_off_loop
    assert handled_after < 1.0


def test_the_bound_is_a_documented_setting_of_at_least_one():
    assert OperatorSettings().waiting_retries_per_event == 20
    assert OperatorSettings.from_env({"NEURONPLACE_WAITING_RETRIES_PER_EVENT": "5"}).waiting_retries_per_event == 5
    for bad in (0, -1):
        with pytest.raises(ValueError, match="waiting_retries_per_event"):
            OperatorSettings(waiting_retries_per_event=bad)
