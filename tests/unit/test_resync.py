"""The operator's full resync against a scripted API: what the watch reports while the lists are
being read wins over the (older) lists. No cluster: the list calls are fakes that, like a real
watch, deliver an event between the list's snapshot and the moment its page is folded in."""

import json

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from neuronplace.local.fleet import build_node
from neuronplace.operator.handlers import Controller
from neuronplace.operator.settings import OperatorSettings
from neuronplace.placement.names import CORES_ANNOTATION, INFERENCE_LABEL

NAMESPACE = "default"


def pod(name: str, node: str, cores: str, inference: str = "web") -> dict:
    return {
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {INFERENCE_LABEL: inference},
                     "annotations": {CORES_ANNOTATION: cores}},
        "spec": {"nodeName": node, "containers": [{"name": "main"}]},
        "status": {"phase": "Running"},
    }


def inference(name: str) -> dict:
    return {"apiVersion": "neuronplace.io/v1alpha1", "kind": "NeuronInference",
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", "generation": 1},
            "spec": {"replicas": 1, "coresPerReplica": 2}}


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

    def read_namespaced_pod(self, name, namespace, **_):
        if not any(p["metadata"]["name"] == name for p in self.pods):
            raise ApiException(status=404, reason="Not Found")

    def list_cluster_custom_object(self, *args, **_):
        snapshot = {"items": list(self.inferences)}
        self.during_inference_list()
        return snapshot

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **_):
        if not any(i["metadata"]["name"] == name for i in self.inferences):
            raise ApiException(status=404, reason="Not Found")


@pytest.fixture
def controller():
    made = Controller(OperatorSettings(), k8s.ApiClient())
    yield made
    made.api_pool.shutdown()
    made.reconcile_pool.shutdown()


def connect(controller: Controller, api: ScriptedApi) -> None:
    controller.core = controller.custom = api


def test_a_pod_deleted_while_the_list_is_read_does_not_come_back(controller):
    node = build_node("n1", "inf2.48xlarge")
    doomed = pod("web-0", "n1", "0-1")
    connect(controller, ScriptedApi([node], [doomed], [inference("web")]))
    controller.initial_sync()
    assert controller.ledger.holds("default/web-0")

    # The pod is deleted: the watch reports it after the resync's list (which still has it) was taken.
    api = ScriptedApi([node], [doomed], [inference("web")],
                      during_pod_list=lambda: controller.on_pod("DELETED", doomed))
    connect(controller, api)
    controller.full_resync()
    api.pods = []
    assert not controller.ledger.holds("default/web-0")
    assert ("default", "web-0") not in controller.pods
    assert controller.ledger.used_cores("n1") == set()


def test_a_resource_deleted_while_the_list_is_read_does_not_come_back(controller):
    node = build_node("n1", "inf2.48xlarge")
    connect(controller, ScriptedApi([node], [], [inference("web")]))
    controller.initial_sync()
    assert ("default", "web") in controller.inferences

    def deleted():
        controller.on_inference("DELETED", inference("web"))

    connect(controller, ScriptedApi([node], [], [inference("web")], during_inference_list=deleted))
    controller.full_resync()
    assert ("default", "web") not in controller.inferences


def test_what_the_watch_missed_is_taken_from_the_lists(controller):
    node = build_node("n1", "inf2.48xlarge")
    connect(controller, ScriptedApi([node], [], []))
    controller.initial_sync()
    # A pod and a resource appeared, and a pod vanished, while nothing was watching.
    controller.on_pod("ADDED", pod("old-0", "n1", "4-5", inference="old"))
    connect(controller, ScriptedApi([node], [pod("web-0", "n1", "0-1")], [inference("web")]))
    controller.full_resync()
    assert controller.ledger.holds("default/web-0")
    assert not controller.ledger.holds("default/old-0")  # confirmed gone with a GET (404)
    assert ("default", "web") in controller.inferences
    assert controller.ledger.used_cores("n1") == {0, 1}
