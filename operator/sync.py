"""Full lists folded into the cache: the rebuild at start-up and the periodic full resync.

The watches keep the cache current event by event, but two things only a full list can give:

- at start-up, the ledger must hold every pod's cores before the first reconcile, or a restarted
  operator would hand out cores that running pods still hold. The pods are the truth: each
  managed pod carries its core range in an annotation, so the ledger is rebuilt from them alone
  (:meth:`Sync.initial_sync`).
- a re-established watch lists what exists but never reports what vanished meanwhile (say, pods
  deleted while the API server was unreachable). :meth:`Sync.full_resync` compares the cache with
  fresh lists and confirms each absence with a GET before forgetting anything.

Lists come a page at a time, parsed straight from JSON, and each page is folded into the cache
before the next is read: 10,000 pods as client model objects cost the operator over 600 MB at
every full resync, and even as plain dicts a whole list is ~150 MB at once.

The API clients (``CoreV1Api``- and ``CustomObjectsApi``-like) are constructor arguments.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes.client.rest import ApiException

from neuronplace.operator import heap
from neuronplace.operator.cache import Cache
from neuronplace.operator.keys import Key
from neuronplace.operator.storage import CLAIMS, CLASSES, KINDS, VOLUMES, slim
from neuronplace.operator.writes import API_TIMEOUT
from neuronplace.placement.claims import pod_key
from neuronplace.placement.names import GROUP, PLURAL, VERSION

log = logging.getLogger("neuronplace.operator")

LIST_PAGE_SIZE = 500


def pages(list_call: Callable[..., Any], *args: Any) -> Iterator[list[dict]]:
    """The items of a core-API list call (``list_node``, ``list_namespaced_pod``, ...), a page at a time."""
    token = None
    while True:
        response = list_call(
            *args, limit=LIST_PAGE_SIZE, _continue=token, _preload_content=False, _request_timeout=API_TIMEOUT
        )
        page = json.loads(response.data)
        token = (page.get("metadata") or {}).get("continue")
        yield page.get("items") or []
        if not token:
            return


class Sync:
    """Reads full lists of nodes, pods, NeuronInferences and the storage objects into ``cache``."""

    def __init__(self, cache: Cache, core: Any, custom: Any) -> None:
        self.cache = cache
        self.core = core
        self.custom = custom
        self.reported_foreign: set[str] = set()  # foreign pods already logged (changed under the cache's lock)

    # ---- lists ---------------------------------------------------------------------------------

    def node_pages(self) -> Iterator[list[dict]]:
        return pages(self.core.list_node)

    def pod_pages(self) -> Iterator[list[dict]]:
        """Pods in the watched namespaces (all of them when cluster-wide), a page at a time."""
        if not self.cache.namespaces:
            yield from pages(self.core.list_pod_for_all_namespaces)
            return
        for namespace in self.cache.namespaces:
            yield from pages(self.core.list_namespaced_pod, namespace)

    def list_priority_classes(self) -> list[dict]:
        """Every PriorityClass (cluster-scoped; the custom-objects client reads any API group)."""
        return self.custom.list_cluster_custom_object(
            "scheduling.k8s.io", "v1", "priorityclasses", _request_timeout=API_TIMEOUT
        )["items"]

    def storage_pages(self, kind: str) -> Iterator[list[dict]]:
        """Claims (in the watched namespaces), volumes or storage classes (``storage.KINDS``), a page at a time."""
        if kind == VOLUMES:
            yield from pages(self.core.list_persistent_volume)
        elif kind == CLASSES:  # a handful per cluster: one list (the custom-objects client reads any API group)
            listed = self.custom.list_cluster_custom_object(
                "storage.k8s.io", "v1", CLASSES, _request_timeout=API_TIMEOUT
            )
            yield listed["items"]
        elif not self.cache.namespaces:
            yield from pages(self.core.list_persistent_volume_claim_for_all_namespaces)
        else:
            assert kind == CLAIMS
            for namespace in self.cache.namespaces:
                yield from pages(self.core.list_namespaced_persistent_volume_claim, namespace)

    def read_storage(self) -> None:
        """Replace the cached claims, volumes and storage classes with full lists."""
        for kind in KINDS:
            slimmed = [slim(kind, body) for page in self.storage_pages(kind) for body in page]
            self.cache.replace_storage(kind, slimmed)

    def read_dra(self) -> None:
        """Replace the cached ResourceSlices and ResourceClaims with full lists (none where the
        cluster serves no ``resource.k8s.io/v1``: then no node is DRA-managed)."""
        self.cache.replace_resource_slices(self._list_resource("resourceslices", ()))
        known = self.cache.resource_claim_keys()  # only these may be found gone: later ones came by watch
        listed = self._list_resource("resourceclaims", self.cache.namespaces)
        self.cache.replace_resource_claims(listed, known)

    def _list_resource(self, plural: str, namespaces: tuple[str, ...]) -> list[dict]:
        """Every ``resource.k8s.io/v1`` object of a kind (in ``namespaces``, all when empty)."""
        try:
            if not namespaces:
                return self.custom.list_cluster_custom_object(
                    "resource.k8s.io", "v1", plural, _request_timeout=API_TIMEOUT
                )["items"]
            return [
                item
                for namespace in namespaces
                for item in self.custom.list_namespaced_custom_object(
                    "resource.k8s.io", "v1", namespace, plural, _request_timeout=API_TIMEOUT
                )["items"]
            ]
        except ApiException as exc:
            if exc.status != 404:
                raise
            return []

    def list_inferences(self) -> list[dict]:
        if not self.cache.namespaces:
            return self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=API_TIMEOUT)["items"]
        items: list[dict] = []
        for namespace in self.cache.namespaces:
            items += self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, _request_timeout=API_TIMEOUT
            )["items"]
        return items

    # ---- start-up ------------------------------------------------------------------------------

    def initial_sync(self) -> None:
        """Rebuild the ledger and caches from full lists, before any reconcile."""
        cache = self.cache
        nodes = pods = 0
        self.read_dra()  # which nodes the Neuron DRA driver manages, and what claims hold
        for page in self.node_pages():
            cache.observe_nodes(page)
            nodes += len(page)
        for page in self.pod_pages():
            cache.observe_pods(page)
            pods += len(page)
        self.read_storage()  # where replicas' volumes can be used, before any placement
        # Before any reconcile, so that no template naming a system class slips through meanwhile.
        priority_classes = self.list_priority_classes()
        inferences = self.list_inferences()
        cache.remember_start_up(priority_classes, inferences)
        self.report_foreign()
        heap.return_free_memory()
        log.info(
            "ledger rebuilt from %d pods on %d nodes (%d managed); %d NeuronInference(s)",
            pods,
            nodes,
            len(cache.inventories),
            len(inferences),
        )

    # ---- full resync ---------------------------------------------------------------------------

    def full_resync(self) -> list[Key]:
        """Catch up with whatever the watches missed; returns the NeuronInferences found deleted.

        A node known before the listing began and absent from it was deleted. What the pod list
        lacks is confirmed gone with a GET before it is forgotten, so a pod created after the
        list was taken, or a reservation whose pod is being created, is never dropped. A pod or
        inference whose deletion the watch reports while the lists are read stays deleted, though
        the (older) list still shows it. The caller then reconciles every inference.
        """
        nodes_before = self.cache.begin_resync()
        try:
            return self._full_resync(nodes_before)
        finally:
            self.cache.end_resync()

    def _full_resync(self, nodes_before: set[str]) -> list[Key]:
        cache = self.cache
        listed_nodes: set[str] = set()
        for page in self.node_pages():
            listed_nodes.update(node["metadata"]["name"] for node in page)
            cache.observe_nodes(page)
        cache.forget_nodes(nodes_before - listed_nodes)
        listed_pods: set[str] = set()
        for page in self.pod_pages():
            listed_pods.update(pod_key(pod["metadata"]["namespace"], pod["metadata"]["name"]) for pod in page)
            cache.observe_missed_pods(page)
        listed_inferences = {(i["metadata"]["namespace"], i["metadata"]["name"]): i for i in self.list_inferences()}
        missing_pods, missing_inferences = cache.compare_with_lists(listed_pods, listed_inferences)
        for pod in missing_pods:
            namespace, name = pod.split("/", 1)
            if self._gone(self.core.read_namespaced_pod, name, namespace):
                cache.forget_vanished_pod(namespace, name)
                log.info("pod %s vanished while unwatched; its cores are free", pod)
        forgotten: list[Key] = []
        for key in missing_inferences:
            if self._gone(self.custom.get_namespaced_custom_object, GROUP, VERSION, key[0], PLURAL, key[1]):
                cache.forget_vanished_inference(key)
                forgotten.append(key)
        self.read_storage()
        self.read_dra()
        self.report_foreign()
        return forgotten

    @staticmethod
    def _gone(read: Callable[..., Any], *args: Any) -> bool:
        """Whether the GET ``read(*args)`` answers 404 (any other answer keeps what is cached)."""
        try:
            read(*args, _request_timeout=API_TIMEOUT)
        except ApiException as exc:
            return exc.status == 404
        return False

    def report_foreign(self) -> None:
        """Log each pod we did not place that holds Neuron cores on a node (once per pod)."""
        foreign = self.cache.unreported_foreign(self.reported_foreign)
        for holding in foreign:
            log.warning(
                "pod %s holds %d Neuron core(s) on %s and is not controlled by a known NeuronInference; "
                "they are treated as taken",
                holding.pod,
                holding.count,
                holding.node,
            )
