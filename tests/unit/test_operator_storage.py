"""The operator's storage caches: slimming keeps every answer placement gives, events wake exactly
the resources they may concern, and a full list drops what vanished unseen."""

import asyncio

import kopf

from neuronplace.operator import handlers
from neuronplace.operator.cache import Cache
from neuronplace.operator.controller import Controller
from neuronplace.operator.keys import DELETED
from neuronplace.operator.settings import OperatorSettings
from neuronplace.operator.storage import CLAIMS, CLASSES, VOLUMES, Storage, slim
from neuronplace.placement.names import BINDING_DIRECT, BINDING_SCHEDULER
from neuronplace.placement.volumes import volume_constraint
from support import builders
from support.builders import on_hosts, pv, pvc, storage_class, uses

NS = "default"  # support.builders.pvc's namespace


def fatten(body: dict) -> dict:
    """What the API server sends beside what placement reads."""
    meta = {**body["metadata"], "uid": "u-1", "resourceVersion": "7", "managedFields": [{"manager": "kubectl"}]}
    return {**body, "metadata": meta, "apiVersion": "v1", "extra": "x" * 2000}


def inference(name: str, *claims: str, namespace: str = NS) -> dict:
    return builders.inference(name, namespace=namespace, template_spec=uses(*claims))


CASES = [
    # (claims, volumes, classes, binding)
    ([pvc("data", bound_to="pv-b")], [pv("pv-b", affinity=on_hosts("inf2-b"), phase="Bound")], [], BINDING_SCHEDULER),
    (
        [pvc("data")],
        [pv("a", affinity=on_hosts("inf2-a")), pv("small", affinity=on_hosts("inf2-b"), size="1Gi")],
        [storage_class("local")],
        BINDING_SCHEDULER,
    ),
    ([pvc("data")], [pv("a", affinity=on_hosts("inf2-a"))], [storage_class("local")], BINDING_DIRECT),
    ([pvc("data", storage_class=None)], [pv("a")], [storage_class("local", default=True)], BINDING_SCHEDULER),
    ([pvc("data", storage_class="fast")], [], [storage_class("fast", mode="Immediate")], BINDING_SCHEDULER),
    ([], [], [], BINDING_SCHEDULER),
]


def constraint(storage: Storage, pod_spec: dict, binding: str):
    return volume_constraint(pod_spec, NS, storage.claims, storage.volumes, storage.classes, binding=binding)


def test_slimmed_objects_give_the_same_constraint_as_whole_ones():
    for claims, volumes, classes, binding in CASES:
        whole, slimmed = Storage(), Storage()
        for kind, objects in ((CLAIMS, claims), (VOLUMES, volumes), (CLASSES, classes)):
            for body in objects:
                whole.observe(kind, body)
                slimmed.observe(kind, fatten(body))
        assert constraint(slimmed, uses("data"), binding) == constraint(whole, uses("data"), binding)
        for kind, objects in ((CLAIMS, claims), (VOLUMES, volumes), (CLASSES, classes)):
            for body in objects:
                once = slim(kind, fatten(body))
                assert slim(kind, once) == once  # slimming is idempotent, so a list can be slimmed early
                assert "extra" not in once and "uid" not in once["metadata"]


def test_an_unchanged_object_wakes_nobody_and_a_change_wakes_the_waiting_and_the_claims_users():
    cache = Cache()
    cache.inferences = {
        (NS, "uses-data"): inference("uses-data", "data"),
        (NS, "other"): inference("other", "else"),
        ("elsewhere", "waits"): inference("waits", "data", namespace="elsewhere"),
        (NS, "waits-here"): inference("waits-here"),
    }
    cache.waiting_for_room = {("elsewhere", "waits"), (NS, "waits-here")}
    claim = pvc("data")
    assert cache.apply_storage(CLAIMS, "ADDED", claim) == {(NS, "uses-data"), (NS, "waits-here")}
    assert cache.apply_storage(CLAIMS, "MODIFIED", fatten(claim)) == set()  # nothing placement reads changed
    assert cache.apply_storage(CLAIMS, "MODIFIED", pvc("data", bound_to="pv")) == {
        (NS, "uses-data"),
        (NS, "waits-here"),
    }
    # Volumes and classes are cluster-wide: every waiting resource may now fit.
    assert cache.apply_storage(VOLUMES, "ADDED", pv("pv")) == {("elsewhere", "waits"), (NS, "waits-here")}
    assert cache.apply_storage(CLASSES, "ADDED", storage_class("local")) == {("elsewhere", "waits"), (NS, "waits-here")}
    assert cache.apply_storage(CLASSES, DELETED, storage_class("local")) == {("elsewhere", "waits"), (NS, "waits-here")}
    assert cache.storage.classes == {}
    assert cache.apply_storage(CLASSES, DELETED, storage_class("local")) == set()  # already gone


def test_claims_outside_the_watched_namespaces_are_not_kept():
    cache = Cache(namespaces=(NS,))
    assert cache.apply_storage(CLAIMS, "ADDED", {**pvc("x"), "metadata": {"name": "x", "namespace": "other"}}) == set()
    assert cache.storage.claims == {}


def test_a_full_list_drops_what_vanished_while_unwatched():
    storage = Storage()
    storage.observe(VOLUMES, pv("gone"))
    storage.observe(VOLUMES, pv("kept"))
    storage.replace(VOLUMES, [slim(VOLUMES, pv("kept", size="20Gi"))])
    assert set(storage.volumes) == {"kept"}
    assert storage.volumes["kept"]["spec"]["capacity"] == {"storage": "20Gi"}


def test_the_storage_watches_reach_the_controller():
    seen = []

    class Recording(Controller):
        def __init__(self) -> None:
            super().__init__(OperatorSettings(), core=None, custom=None)
            self.on_storage = lambda kind, event, body: seen.append((kind, event, body["metadata"]["name"]))

    controller = Recording()
    try:
        memo = kopf.Memo(controller=controller)
        asyncio.run(handlers.claim_event(event={"type": "ADDED", "object": pvc("c")}, memo=memo))
        asyncio.run(handlers.volume_event(event={"type": "DELETED", "object": pv("v")}, memo=memo))
        asyncio.run(handlers.storage_class_event(event={"type": "MODIFIED", "object": storage_class("s")}, memo=memo))
        assert seen == [(CLAIMS, "ADDED", "c"), (VOLUMES, "DELETED", "v"), (CLASSES, "MODIFIED", "s")]
    finally:
        asyncio.run(controller.stop())
