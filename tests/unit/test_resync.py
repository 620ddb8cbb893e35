"""The operator's full resync against a scripted API: what the watch reports while the lists are
being read wins over the (older) lists. No cluster: the list calls are fakes, handed to
:class:`Sync` as its API clients, that (like a real watch) deliver an event between the list's
snapshot and the moment its page is folded into the cache."""

import json

import pytest
from kubernetes.client.rest import ApiException

from neuronplace.local.fleet import build_node
from neuronplace.operator.cache import Cache
from neuronplace.operator.sync import Sync
from support import builders
from support.builders import inference_uid, managed_pod

NAMESPACE = "default"


def inference(name: str) -> dict:
    return builders.inference(name, namespace=NAMESPACE, uid=inference_uid(name, NAMESPACE), generation=1)


class _Response:
    def __init__(self, items: list[dict]) -> None:
        self.data = json.dumps({"items": items, "metadata": {}}).encode()


class ScriptedApi:
    """Lists return the given objects; ``during_pod_list`` / ``during_inference_list`` run after
    that list's snapshot is taken, before the caller sees it."""

    def __init__(self, nodes, pods, inferences, during_pod_list=None, during_inference_list=None) -> None:
        self.nodes, self.pods, self.inferences = nodes, pods, inferences
        self.during_pod_list = during_pod_list or (lambda: None)
        self.during_inference_list = during_inference_list or (lambda: None)
        self.api_client = None

    def list_node(self, **_):
        return _Response(self.nodes)

    def list_pod_for_all_namespaces(self, **_):
        snapshot = _Response(self.pods)
        self.during_pod_list()
        return snapshot

    def list_persistent_volume_claim_for_all_namespaces(self, **_):
        return _Response([])

    def list_persistent_volume(self, **_):
        return _Response([])

    def read_namespaced_pod(self, name, namespace, **_):
        if not any(p["metadata"]["name"] == name for p in self.pods):
            raise ApiException(status=404, reason="Not Found")

    def list_cluster_custom_object(self, group, *args, **_):
        if group != "neuronplace.io":  # priority and storage classes: none here
            return {"items": []}
        snapshot = {"items": list(self.inferences)}
        self.during_inference_list()
        return snapshot

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **_):
        if not any(i["metadata"]["name"] == name for i in self.inferences):
            raise ApiException(status=404, reason="Not Found")


@pytest.fixture
def cache():
    return Cache()


def sync(cache: Cache, api: ScriptedApi) -> Sync:
    """A sync of ``cache`` that reads through ``api`` (its core and custom-objects client alike)."""
    return Sync(cache, core=api, custom=api)


def test_a_pod_deleted_while_the_list_is_read_does_not_come_back(cache):
    node = build_node("n1", "inf2.48xlarge")
    doomed = managed_pod("web-0", "n1", "0-1")
    sync(cache, ScriptedApi([node], [doomed], [inference("web")])).initial_sync()
    assert cache.ledger.holds("default/web-0")

    # The pod is deleted: the watch reports it after the resync's list (which still has it) was taken.
    api = ScriptedApi([node], [doomed], [inference("web")], during_pod_list=lambda: cache.apply_pod("DELETED", doomed))
    sync(cache, api).full_resync()
    api.pods = []
    assert not cache.ledger.holds("default/web-0")
    assert ("default", "web-0") not in cache.pods
    assert cache.ledger.used_cores("n1") == set()
    assert cache.deleted_during_resync is None  # only recorded while a resync runs


def test_a_resource_deleted_while_the_list_is_read_does_not_come_back(cache):
    node = build_node("n1", "inf2.48xlarge")
    sync(cache, ScriptedApi([node], [], [inference("web")])).initial_sync()
    assert ("default", "web") in cache.inferences

    def deleted():
        cache.apply_inference("DELETED", inference("web"))

    sync(cache, ScriptedApi([node], [], [inference("web")], during_inference_list=deleted)).full_resync()
    assert ("default", "web") not in cache.inferences


def test_what_the_watch_missed_is_taken_from_the_lists(cache):
    node = build_node("n1", "inf2.48xlarge")
    sync(cache, ScriptedApi([node], [], [inference("gone")])).initial_sync()
    # A pod and a resource appeared, and a pod and a resource vanished, while nothing was watching.
    cache.apply_pod("ADDED", managed_pod("old-0", "n1", "4-5", inference="old"))
    forgotten = sync(cache, ScriptedApi([node], [managed_pod("web-0", "n1", "0-1")], [inference("web")])).full_resync()
    assert cache.ledger.holds("default/web-0")
    assert not cache.ledger.holds("default/old-0")  # confirmed gone with a GET (404)
    assert ("default", "web") in cache.inferences
    assert ("default", "gone") not in cache.inferences
    assert forgotten == [("default", "gone")]  # so the controller forgets what it remembered about it
    assert cache.ledger.used_cores("n1") == {0, 1}


def test_a_node_missing_from_the_list_is_forgotten(cache):
    kept, lost = build_node("n1", "inf2.48xlarge"), build_node("n2", "inf2.48xlarge")
    sync(cache, ScriptedApi([kept, lost], [managed_pod("web-0", "n2", "0-1")], [inference("web")])).initial_sync()
    assert set(cache.inventories) == {"n1", "n2"}
    sync(cache, ScriptedApi([kept], [managed_pod("web-0", "n2", "0-1")], [inference("web")])).full_resync()
    assert set(cache.nodes) == {"n1"} and set(cache.inventories) == {"n1"}
    # The watch's late report of the deletion still names the resource whose pod ran there.
    assert cache.apply_node("DELETED", lost) == {("default", "web")}


def test_pods_count_as_ours_once_their_resource_is_known_by_uid(cache):
    node = build_node("n1", "inf2.48xlarge")
    sync(
        cache,
        ScriptedApi(
            [node], [managed_pod("web-0", "n1", "0-1"), managed_pod("lost-0", "n1", "2-3", "lost")], [inference("web")]
        ),
    ).initial_sync()
    # The pods were listed before the resources; the known resource's pod is ours, the other is foreign.
    assert cache.ledger.holding_of("default/web-0").managed
    assert not cache.ledger.holding_of("default/lost-0").managed
    assert [i.pod for i in cache.ledger.inconsistencies()] == ["default/lost-0"]
    # Deleted: its pod still runs (the garbage collector deletes it soon) and is held as foreign.
    cache.apply_inference("DELETED", inference("web"))
    assert not cache.ledger.holding_of("default/web-0").managed
    assert cache.ledger.used_cores("n1") == {0, 1, 2, 3}
    # A namesake with a new UID does not adopt the old one's pods.
    reborn = inference("web")
    reborn["metadata"]["uid"] = "uid-reborn"
    cache.apply_inference("ADDED", reborn)
    assert not cache.ledger.holding_of("default/web-0").managed
    cache.apply_inference("ADDED", inference("lost"))
    assert cache.ledger.holding_of("default/lost-0").managed
