"""The kopf side: watch-fed caches and ledger, a work queue, and thin reconciles that act on decide().

How it runs:
- kopf watches NeuronInferences, Pods and Nodes (``@kopf.on.event``: no finalizers, no progress
  annotations, nothing written to the watched objects). Each event updates in-memory caches and
  the core ledger, then queues the affected NeuronInference (deduplicated: a key queued while it
  is being reconciled is reconciled once more afterwards).
- On startup, before any reconcile runs, the ledger is rebuilt from a full list of pods and nodes
  (DESIGN §1: the pods are the truth), so a restarted operator hands out nothing twice.
- ``settings.workers`` reconciles run at once, each in a thread (the Kubernetes client is
  synchronous): API calls are concurrent. Placement (read ledger → choose → reserve) holds one
  lock, so two resources reconciled at once can never get the same cores.
- Errors: 409 → re-read from the caches and retry soon; 429 → retry after ``Retry-After``;
  5xx / connection errors → retry with a short exponential backoff (not kopf's 60 s); a pod the
  API server refuses (400/422) is a permanent problem for that generation of the resource: it is
  reported in the ``Placed`` condition and an Event, and not retried until the spec changes.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import functools
import json
import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from neuronplace.placement import events as ev
from neuronplace.operator import heap
from neuronplace.operator import metrics as mx
from neuronplace.placement import reconcile as rc
from neuronplace.placement import names
from neuronplace.placement import status as st
from neuronplace.placement.inventory import inventory_from_node
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.allocator import Fleet, ReplicaPlacement, place_one
from neuronplace.placement.pods import build_pod, pod_name
from neuronplace.operator.settings import OperatorSettings
from neuronplace.placement.selectors import selector_matches
from neuronplace.runtime.coreset import CoreRange
from neuronplace.placement.names import CORES_ANNOTATION, GROUP, INFERENCE_LABEL, PLURAL, REPLICA_LABEL, TEMPLATE_HASH_ANNOTATION, VERSION

log = logging.getLogger("neuronplace.operator")

Key = tuple[str, str]  # (namespace, name) of a NeuronInference

# Pod events of one resource within this many seconds are handled by one reconcile.
POD_EVENT_COALESCE = 0.1

# Per-call API timeouts (connect, read): a hung call must not hold a worker forever.
API_TIMEOUT = (5, 30)

# The first full resync, soon after start-up: by then kopf's watches are running, so anything the
# start-up lists saw that has vanished since is caught within seconds (see ``resync``).
FIRST_RESYNC_SECONDS = 2.0


# Full lists come a page at a time, parsed straight from JSON, and each page is folded into the
# caches before the next is read: 10,000 pods as client model objects cost the operator over
# 600 MB at every full resync, and even as plain dicts a whole list is ~150 MB at once.
LIST_PAGE_SIZE = 500


def _pages(list_call, *args) -> Iterator[list[dict]]:
    """The items of a core-API list call (``list_node``, ``list_namespaced_pod``, ...), a page at a time."""
    token = None
    while True:
        response = list_call(*args, limit=LIST_PAGE_SIZE, _continue=token, _preload_content=False,
                             _request_timeout=API_TIMEOUT)
        page = json.loads(response.data)
        token = (page.get("metadata") or {}).get("continue")
        yield page.get("items") or []
        if not token:
            return


def api_threads(settings: OperatorSettings) -> int:
    """Threads creating pods at once: the operator mostly waits on the API server, so several per worker."""
    return max(8, 4 * settings.workers)


class Retry(Exception):
    """Reconcile again after ``delay`` seconds (a temporary condition, already reported)."""

    def __init__(self, delay: float, why: str) -> None:
        super().__init__(why)
        self.delay = delay


def retry_after(exc: ApiException, default: float) -> float:
    """Seconds from a 429's ``Retry-After`` header (or ``default``)."""
    headers = getattr(exc, "headers", None) or {}
    try:
        return max(float(headers.get("Retry-After") or headers.get("retry-after")), 0.1)
    except (TypeError, ValueError):
        return default


def _slim_pod(pod: Mapping[str, Any]) -> dict:
    """What reconcile and status read of a managed pod, and nothing else: 10,000 of these are
    cached. Repeated strings are interned and the parts many pods share (spec, status, owner) are
    one object each, so a cached pod costs about 1 KB. Cached pods are read-only."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    status = pod.get("status") or {}
    ready = next((c.get("status") for c in status.get("conditions") or () if c.get("type") == "Ready"), None)
    controller = next((ref.get("uid") for ref in meta.get("ownerReferences") or () if ref.get("controller")), None)
    return {
        "metadata": {
            "name": meta.get("name"),
            "namespace": _intern(meta.get("namespace")),
            "labels": {key: _intern(labels[key]) for key in (INFERENCE_LABEL, REPLICA_LABEL) if key in labels},
            "annotations": {key: annotations[key] for key in (CORES_ANNOTATION, TEMPLATE_HASH_ANNOTATION)
                            if key in annotations},
            "ownerReferences": _controller_reference(controller),
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "spec": _pod_spec(_intern((pod.get("spec") or {}).get("nodeName"))),
        "status": _pod_status(_intern(status.get("phase")), _intern(ready)),
    }


@functools.lru_cache(maxsize=1024)
def _controller_reference(uid: str | None) -> list:
    return [] if uid is None else [{"controller": True, "uid": uid}]


@functools.lru_cache(maxsize=8192)
def _pod_spec(node: str | None) -> dict:
    return {"nodeName": node}


@functools.lru_cache(maxsize=64)
def _pod_status(phase: str | None, ready: str | None) -> dict:
    return {"phase": phase, "conditions": [] if ready is None else [{"type": "Ready", "status": ready}]}


def _slim_node(node: Mapping[str, Any]) -> dict:
    """What reconcile reads of a node: its name and Ready condition (readiness and since when)."""
    return {
        "metadata": {"name": _intern((node.get("metadata") or {}).get("name"))},
        "status": {"conditions": [{"type": "Ready", "status": _intern(c.get("status")),
                                   "lastTransitionTime": c.get("lastTransitionTime")}
                                  for c in (node.get("status") or {}).get("conditions") or () if c.get("type") == "Ready"]},
    }


def _intern(text: Any) -> Any:
    return sys.intern(text) if type(text) is str else text


@dataclass
class _Reported:
    """What was last said about a resource, to post an Event only when it changes."""

    problem: str | None = None


class Controller:
    """Caches, ledger and work queue of one operator process."""

    def __init__(self, settings: OperatorSettings, api: k8s.ApiClient) -> None:
        self.settings = settings
        self.core = k8s.CoreV1Api(api)
        self.custom = k8s.CustomObjectsApi(api)
        self.lock = threading.Lock()          # guards everything below; placement runs under it
        self.ledger = Ledger()
        self.inferences: dict[Key, dict] = {}
        self.pods: dict[tuple[str, str], dict] = {}            # managed pods by (namespace, name)
        self.pods_of: dict[Key, set[str]] = {}                 # inference → its pods' names
        self.nodes: dict[str, dict] = {}                       # every node, slimmed
        self.inventories: dict[str, Any] = {}                  # managed nodes → NodeInventory
        self._fleet: Fleet | None = None
        self.last_known: dict[Key, dict[int, tuple[str, CoreRange]]] = {}
        self.permanent: dict[Key, tuple[int | None, st.Problem]] = {}
        self.waiting_for_room: set[Key] = set()
        self.reported_foreign: set[str] = set()
        self.inflight: set[str] = set()                        # "ns/pod" reserved, create under way
        # Pods ("ns/pod") and NeuronInferences ((ns, name)) deleted while a full resync reads its
        # lists (None when none runs): the lists may still show them, and they must not come back
        # as ghosts (a pod holding cores, a resource getting pods).
        self.deleted_during_resync: set[str | Key] | None = None
        self.reported: dict[Key, _Reported] = {}
        self.failures: dict[Key, int] = {}
        # queue state (event loop only)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue[Key] | None = None
        self.pending: set[Key] = set()
        self.running: set[Key] = set()
        self.dirty: set[Key] = set()
        self.soon: set[Key] = set()
        self.tasks: list[asyncio.Task] = []
        # Reconciles (and the resync) run in threads of their own: asyncio's default executor has
        # only CPUs + 4 threads. Pod creates fan out to the API threads.
        self.reconcile_pool = ThreadPoolExecutor(max_workers=settings.workers + 1, thread_name_prefix="neuronplace-reconcile")
        self.api_pool = ThreadPoolExecutor(max_workers=api_threads(settings), thread_name_prefix="neuronplace-api")

    # ---- scope -------------------------------------------------------------------------------

    def watches(self, namespace: str | None) -> bool:
        return not self.settings.namespaces or namespace in self.settings.namespaces

    def manages(self, node: Mapping[str, Any]) -> bool:
        return selector_matches(self.settings.node_selector, (node.get("metadata") or {}).get("labels") or {})

    # ---- caches (called with self.lock held) -------------------------------------------------

    def _observe_pod(self, pod: Mapping[str, Any], deleted: bool = False) -> Key | None:
        meta = pod.get("metadata") or {}
        namespace, name = meta.get("namespace"), meta.get("name")
        owner = f"{namespace}/{name}"
        if deleted:
            self.ledger.forget(owner)
            if self.deleted_during_resync is not None:
                self.deleted_during_resync.add(owner)
        else:
            self.ledger.observe(dict(pod))
        inference = (meta.get("labels") or {}).get(INFERENCE_LABEL)
        if not inference or not self.watches(namespace):
            return None
        key = (namespace, inference)
        if deleted:
            self.pods.pop((namespace, name), None)
            self.pods_of.get(key, set()).discard(name)
        else:
            self.pods[(namespace, name)] = _slim_pod(pod)
            self.pods_of.setdefault(key, set()).add(name)
            node = (pod.get("spec") or {}).get("nodeName")
            ordinal = rc.ordinal_of(pod, inference)
            try:
                cores = CoreRange.parse((meta.get("annotations") or {}).get(CORES_ANNOTATION, ""))
            except ValueError:
                cores = None
            if node and cores is not None and ordinal is not None:
                self.last_known.setdefault(key, {})[ordinal] = (node, cores)
        return key

    def _observe_node(self, node: Mapping[str, Any], deleted: bool = False) -> bool:
        """Update the node caches; True when what placement sees has changed."""
        name = (node.get("metadata") or {}).get("name")
        before = self.inventories.get(name)
        if deleted:
            self.nodes.pop(name, None)
            self.inventories.pop(name, None)
        else:
            self.nodes[name] = _slim_node(node)
            if self.manages(node):
                self.inventories[name] = inventory_from_node(dict(node))
            else:
                self.inventories.pop(name, None)
        changed = self.inventories.get(name) != before
        if changed:
            self._fleet = None
        return changed

    def _fleet_now(self) -> Fleet:
        if self._fleet is None:
            self._fleet = Fleet(sorted(self.inventories.values(), key=lambda n: n.name))
        return self._fleet

    def _node_pages(self) -> Iterator[list[dict]]:
        return _pages(self.core.list_node)

    def _pod_pages(self) -> Iterator[list[dict]]:
        """Pods in the watched namespaces (all of them when cluster-wide), a page at a time."""
        if not self.settings.namespaces:
            yield from _pages(self.core.list_pod_for_all_namespaces)
            return
        for namespace in self.settings.namespaces:
            yield from _pages(self.core.list_namespaced_pod, namespace)

    def _list_inferences(self) -> list[dict]:
        if not self.settings.namespaces:
            return self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=API_TIMEOUT)["items"]
        items: list[dict] = []
        for namespace in self.settings.namespaces:
            items += self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, _request_timeout=API_TIMEOUT)["items"]
        return items

    def initial_sync(self) -> None:
        """Rebuild the ledger and caches from full lists, before any reconcile."""
        nodes = pods = 0
        for page in self._node_pages():
            with self.lock:
                for node in page:
                    self._observe_node(node)
            nodes += len(page)
        for page in self._pod_pages():
            with self.lock:
                for pod in page:
                    self._observe_pod(pod)
            pods += len(page)
        inferences = self._list_inferences()
        with self.lock:
            for inference in inferences:
                meta = inference.get("metadata") or {}
                self.inferences[(meta.get("namespace"), meta.get("name"))] = inference
        self._report_foreign()
        heap.return_free_memory()
        log.info("ledger rebuilt from %d pods on %d nodes (%d managed); %d NeuronInference(s)",
                 pods, nodes, len(self.inventories), len(inferences))

    def full_resync(self) -> None:
        """Catch up with whatever the watches missed (say, deletions while the API server was down:
        a re-established watch lists what exists but never reports what vanished).

        The lists are read a page at a time. A node known before the listing began and absent
        from it was deleted. What the pod list lacks is confirmed gone with a GET before it is
        forgotten, so a pod created after the list was taken, or a reservation whose pod is being
        created, is never dropped. The caller then reconciles every resource.
        """
        with self.lock:
            nodes_before = set(self.nodes)
            self.deleted_during_resync = set()
        try:
            self._full_resync(nodes_before)
        finally:
            with self.lock:
                self.deleted_during_resync = None

    def _full_resync(self, nodes_before: set[str]) -> None:
        listed_nodes: set[str] = set()
        for page in self._node_pages():
            with self.lock:
                for node in page:
                    listed_nodes.add(node["metadata"]["name"])
                    self._observe_node(node)
        with self.lock:
            for name in nodes_before - listed_nodes:
                if name in self.nodes:
                    self._observe_node({"metadata": {"name": name}}, deleted=True)
        listed_pods: set[str] = set()
        for page in self._pod_pages():
            with self.lock:
                for pod in page:
                    meta = pod["metadata"]
                    owner = f"{meta['namespace']}/{meta['name']}"
                    listed_pods.add(owner)
                    # Pods already known are kept fresh by the watch; only what it missed is taken,
                    # never a pod whose deletion the watch reported after this page was read.
                    if (not self._knows_pod(meta["namespace"], meta["name"]) and owner not in self.inflight
                            and owner not in self.deleted_during_resync):
                        self._observe_pod(pod)
        listed_inferences = {(i["metadata"]["namespace"], i["metadata"]["name"]): i for i in self._list_inferences()}
        with self.lock:
            known = self.ledger.owners() | {f"{ns}/{name}" for ns, name in self.pods}
            missing_pods = sorted(known - listed_pods - self.inflight)
            missing_inferences = [key for key in self.inferences if key not in listed_inferences]
            for key, inference in listed_inferences.items():
                if key not in self.deleted_during_resync:
                    self.inferences.setdefault(key, inference)
        for owner in missing_pods:
            namespace, name = owner.split("/", 1)
            if self._gone(lambda: self.core.read_namespaced_pod(name, namespace, _request_timeout=API_TIMEOUT)):
                with self.lock:
                    self._observe_pod({"metadata": {"namespace": namespace, "name": name,
                                                    "labels": self._labels_of(namespace, name)}}, deleted=True)
                log.info("pod %s vanished while unwatched; its cores are free", owner)
        for key in missing_inferences:
            if self._gone(lambda: self.custom.get_namespaced_custom_object(GROUP, VERSION, key[0], PLURAL, key[1],
                                                                          _request_timeout=API_TIMEOUT)):
                with self.lock:
                    self._forget_inference(key)
        self._report_foreign()

    def _knows_pod(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.pods or self.ledger.holds(f"{namespace}/{name}")

    def _report_foreign(self) -> None:
        """Log each pod we did not place that holds Neuron cores on a node (once per pod)."""
        with self.lock:
            foreign = [h for h in self.ledger.foreign() if h.owner not in self.reported_foreign]
            self.reported_foreign |= {h.owner for h in foreign}
        for holding in foreign:
            log.warning("pod %s holds %d Neuron core(s) on %s without our annotation; they are treated as taken",
                        holding.owner, holding.count, holding.node)

    @staticmethod
    def _gone(read) -> bool:
        try:
            read()
        except ApiException as exc:
            return exc.status == 404
        return False

    def _labels_of(self, namespace: str, name: str) -> dict:
        cached = self.pods.get((namespace, name))
        return dict((cached or {}).get("metadata", {}).get("labels") or {})

    def _forget_inference(self, key: Key) -> None:
        self.inferences.pop(key, None)
        self.last_known.pop(key, None)
        self.permanent.pop(key, None)
        self.waiting_for_room.discard(key)
        self.reported.pop(key, None)

    # ---- events (event loop) -----------------------------------------------------------------

    def on_inference(self, kind: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if not self.watches(key[0]):
            return
        with self.lock:
            if kind == "DELETED":
                self._forget_inference(key)
                if self.deleted_during_resync is not None:
                    self.deleted_during_resync.add(key)
            else:
                self.inferences[key] = copy.deepcopy(dict(body))
        self.enqueue(key)

    def on_pod(self, kind: str | None, body: Mapping[str, Any]) -> None:
        deleted = kind == "DELETED"
        with self.lock:
            key = self._observe_pod(body, deleted=deleted)
            freed = deleted or (body.get("status") or {}).get("phase") in ("Failed", "Succeeded")
            waiting = list(self.waiting_for_room) if freed else []
        if key is not None:
            self.enqueue_soon(key)
        for other in waiting:
            self.enqueue(other)

    def on_node(self, kind: str | None, body: Mapping[str, Any]) -> None:
        name = (body.get("metadata") or {}).get("name")
        with self.lock:
            was_ready = rc.node_not_ready_since(self.nodes.get(name, {})) is None if name in self.nodes else None
            changed = self._observe_node(body, deleted=kind == "DELETED")
            is_ready = rc.node_not_ready_since(self.nodes[name]) is None if name in self.nodes else None
            affected: set[Key] = set()
            if kind == "DELETED" or was_ready != is_ready:
                affected = {key for key, names in self.pods_of.items() for pod in names
                            if (self.pods.get((key[0], pod)) or {}).get("spec", {}).get("nodeName") == name}
            if changed:
                affected |= self.waiting_for_room
        for key in affected:
            self.enqueue(key)

    # ---- queue -------------------------------------------------------------------------------

    def enqueue(self, key: Key) -> None:
        if self.loop is None or self.queue is None:
            return
        if key in self.running:
            self.dirty.add(key)
        elif key not in self.pending:
            self.pending.add(key)
            self.queue.put_nowait(key)

    def enqueue_soon(self, key: Key) -> None:
        """Enqueue after POD_EVENT_COALESCE seconds: a burst of pod events (a scale-up makes several
        per pod as they start) becomes one reconcile and one status write, not one per event."""
        if self.loop is None or key in self.soon or key in self.pending:
            return
        self.soon.add(key)

        def fire() -> None:
            self.soon.discard(key)
            self.enqueue(key)

        self.loop.call_later(POD_EVENT_COALESCE, fire)

    def enqueue_later(self, key: Key, delay: float) -> None:
        if self.loop is not None:
            self.loop.call_later(delay, self.enqueue, key)

    async def worker(self) -> None:
        assert self.queue is not None
        while True:
            key = await self.queue.get()
            self.pending.discard(key)
            self.running.add(key)
            delay: float | None = None
            try:
                with mx.METRICS.time_reconcile():
                    delay = await self._in_thread(self.reconcile, key)
                self.failures.pop(key, None)
            except Retry as retry:
                delay = retry.delay
                log.info("%s/%s: retrying in %.1fs: %s", *key, delay, retry)
            except Exception as exc:  # a bug or an unexpected API answer: never kill the worker
                count = self.failures[key] = self.failures.get(key, 0) + 1
                delay = min(self.settings.error_backoff_seconds * 2 ** (count - 1), self.settings.max_backoff_seconds)
                log.exception("%s/%s: reconcile failed (attempt %d), retrying in %.1fs: %s", *key, count, delay, exc)
            finally:
                self.running.discard(key)
            if key in self.dirty:
                self.dirty.discard(key)
                self.enqueue(key)
            elif delay is not None:
                self.enqueue_later(key, delay)

    async def resync(self) -> None:
        """Level-driven safety net: every resource is looked at regularly, events or not, and every
        other round the caches are checked against full lists (``full_resync``).

        The first round comes soon after start-up and is a full one: a pod deleted between the
        start-up lists and the first watch event is never reported by the watch, and would hold
        its cores (and its replica ordinal) until the next full round.
        """
        rounds = 0
        delay = min(FIRST_RESYNC_SECONDS, self.settings.resync_seconds)
        while True:
            await asyncio.sleep(delay)
            delay = self.settings.resync_seconds
            full = rounds % 2 == 0
            rounds += 1
            if full:
                try:
                    await self._in_thread(self.full_resync)
                except Exception as exc:  # the API may be down right now; the next round tries again
                    log.warning("full resync failed: %s", exc)
            with self.lock:
                keys = list(self.inferences)
            for key in keys:
                self.enqueue(key)
            await self._in_thread(heap.return_free_memory)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue = asyncio.Queue()
        self.tasks = [loop.create_task(self.worker(), name=f"neuronplace-worker-{i}")
                      for i in range(self.settings.workers)]
        self.tasks.append(loop.create_task(self.resync(), name="neuronplace-resync"))
        with self.lock:
            keys = list(self.inferences)
        for key in keys:
            self.enqueue(key)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.api_pool.shutdown(wait=False, cancel_futures=True)
        self.reconcile_pool.shutdown(wait=False, cancel_futures=True)

    def _in_thread(self, function, *args):
        assert self.loop is not None
        return self.loop.run_in_executor(self.reconcile_pool, function, *args)

    # ---- one reconcile (worker thread) -------------------------------------------------------

    def reconcile(self, key: Key) -> float | None:
        """Bring one resource's pods and status in line with its spec; returns a requeue delay."""
        namespace, name = key
        with self.lock:
            inference = self.inferences.get(key)
            if inference is None:
                return None
            pods = [self.pods[(namespace, p)] for p in self.pods_of.get(key, ()) if (namespace, p) in self.pods]
            nodes = dict(self.nodes)
            last_known = dict(self.last_known.get(key, {}))
        decision = rc.decide(inference, pods, nodes, now=dt.datetime.now(dt.timezone.utc),
                             node_grace_seconds=self.settings.node_grace_seconds, last_known=last_known,
                             allow_privileged=self.settings.allow_privileged)
        if decision.invalid is not None:
            mx.METRICS.failed(names.REASON_INVALID_SPEC)
            self._write_status(inference, st.Problem(names.REASON_INVALID_SPEC, decision.invalid))
            return None

        for deletion in decision.deletions:
            self._delete_pod(inference, deletion)

        generation = (inference.get("metadata") or {}).get("generation")
        known = self.permanent.get(key)
        problem = known[1] if known and known[0] == generation else None
        retry: float | None = decision.requeue_after
        if decision.create and problem is None:
            problem, retry_create = self._place_and_create(inference, decision)
            if retry_create is not None:
                retry = retry_create if retry is None else min(retry, retry_create)
        self._write_status(inference, problem)
        return retry

    def _place_and_create(self, inference: dict, decision: rc.Decision) -> tuple[st.Problem | None, float | None]:
        meta = inference["metadata"]
        key = (meta["namespace"], meta["name"])
        request = rc.placement_request(inference, self.settings.numbering)
        placed: list[ReplicaPlacement] = []
        unplaceable: list[tuple[int, str]] = []
        with self.lock:
            fleet = self._fleet_now()
            for ordinal in decision.create:
                owner = f"{meta['namespace']}/{pod_name(meta['name'], ordinal)}"
                result = place_one(request, ordinal, fleet, self.ledger, owner, prefer=decision.prefer.get(ordinal))
                if isinstance(result, ReplicaPlacement):
                    placed.append(result)
                    self.inflight.add(owner)
                else:
                    unplaceable.append((result.replica, result.reason))
            if unplaceable:
                self.waiting_for_room.add(key)
            else:
                self.waiting_for_room.discard(key)

        try:
            return self._create_all(inference, placed, unplaceable)
        finally:
            with self.lock:
                for placement in placed:
                    self.inflight.discard(f"{meta['namespace']}/{pod_name(meta['name'], placement.replica)}")

    def _create_all(self, inference: dict, placed: list[ReplicaPlacement],
                    unplaceable: list[tuple[int, str]]) -> tuple[st.Problem | None, float | None]:
        meta = inference["metadata"]
        key = (meta["namespace"], meta["name"])
        retry: float | None = None
        problem: st.Problem | None = None
        # Pods are created concurrently (a replica count of hundreds must not mean hundreds of
        # round trips in a row); each outcome is None or the exception its create raised.
        mx.METRICS.failed(names.REASON_UNSCHEDULABLE, len(unplaceable))
        outcomes = list(self.api_pool.map(lambda placement: self._try_create(inference, placement), placed))
        created = [p for p, error in zip(placed, outcomes) if error is None]
        failed = [(p, error) for p, error in zip(placed, outcomes) if error is not None]
        mx.METRICS.placed(len(created))
        for _, error in failed:
            mx.METRICS.failed(mx.failure_reason(_status(error)))
        if created:
            self._event(inference, "Placed", "; ".join(_describe(meta["name"], p) for p in created))
        # 409: the name is still taken (our cache is behind). Keep the reservation: the watch event
        # for that pod replaces it with what the pod really holds.
        if any(_status(error) == 409 for _, error in failed):
            retry = 0.2
        failed = [(p, error) for p, error in failed if _status(error) != 409]
        self._release(inference, [p for p, _ in failed])
        rejected = [(p, error) for p, error in failed if _status(error) in (400, 422)]
        if rejected:
            placement, error = rejected[0]
            problem = st.Problem(names.REASON_POD_REJECTED,
                                 f"the API server refused pod {pod_name(meta['name'], placement.replica)}: "
                                 f"{_api_message(error)}")
            self.permanent[key] = (meta.get("generation"), problem)
            self._event(inference, "PodRejected", problem.message, ev.WARNING)
            return problem, retry
        throttled = [error for _, error in failed if _status(error) == 429]
        if throttled:
            raise Retry(retry_after(throttled[0], 1.0), "throttled (429)")
        forbidden = [error for _, error in failed if _status(error) == 403]
        if forbidden:  # quota, a terminating namespace, or RBAC: report it and retry slowly
            problem = st.Problem(names.REASON_POD_REJECTED, f"pod creation forbidden: {_api_message(forbidden[0])}")
            self._event_once(inference, "PodForbidden", problem.message)
            return problem, self.settings.max_backoff_seconds
        if failed:
            raise failed[0][1]
        if problem is None and unplaceable:
            problem = st.Problem(names.REASON_UNSCHEDULABLE, st.summarize_unplaceable(unplaceable))
            self._event_once(inference, "Unschedulable", problem.message)
        elif problem is None:
            self.reported.pop(key, None)
        return problem, retry

    def _release(self, inference: dict, placements) -> None:
        """Give back reservations whose pods were not created."""
        meta = inference["metadata"]
        with self.lock:
            for placement in placements:
                if (meta["namespace"], pod_name(meta["name"], placement.replica)) not in self.pods:
                    self.ledger.forget(f"{meta['namespace']}/{pod_name(meta['name'], placement.replica)}")

    def _try_create(self, inference: dict, placement: ReplicaPlacement) -> Exception | None:
        meta = inference["metadata"]
        pod = build_pod(inference, placement, numbering=self.settings.numbering)
        try:
            # Plain JSON back, not a client model object converted back into a dict: ~0.6 ms of CPU
            # less per pod, and the operator's CPU is what placement speed is made of here.
            response = self.core.create_namespaced_pod(meta["namespace"], pod, _request_timeout=API_TIMEOUT,
                                                       _preload_content=False)
            created_dict = json.loads(response.data)
        except Exception as error:
            return error
        with self.lock:
            if (meta["namespace"], pod["metadata"]["name"]) not in self.pods:
                self._observe_pod(created_dict)
        return None

    def _delete_pod(self, inference: dict, deletion: rc.Deletion) -> None:
        namespace = inference["metadata"]["namespace"]
        options = k8s.V1DeleteOptions(grace_period_seconds=0 if deletion.force else None)
        try:
            self.core.delete_namespaced_pod(deletion.pod, namespace, body=options, _request_timeout=API_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return
            if exc.status == 429:
                raise Retry(retry_after(exc, 1.0), "throttled (429)") from None
            raise
        kind = ev.NORMAL if deletion.reason in (rc.SURPLUS, rc.OUTDATED) else ev.WARNING
        self._event(inference, deletion.reason, deletion.message, kind)

    def _write_status(self, inference: dict, problem: st.Problem | None) -> None:
        meta = inference["metadata"]
        key = (meta["namespace"], meta["name"])
        with self.lock:
            pods = [self.pods[(key[0], p)] for p in self.pods_of.get(key, ()) if (key[0], p) in self.pods]
            current = self.inferences.get(key, inference)
        wanted = st.build_status(current, pods, problem=problem)
        if not st.status_differs(current.get("status"), wanted):
            return
        if problem is not None and problem.reason == names.REASON_INVALID_SPEC:
            self._event_once(current, "InvalidSpec", problem.message)
        try:
            self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"],
                                                              {"status": wanted}, _request_timeout=API_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return
            if exc.status == 429:
                raise Retry(retry_after(exc, 1.0), "throttled (429)") from None
            if exc.status == 409:
                raise Retry(0.2, "conflict writing status") from None
            raise

    def _event_once(self, inference: dict, reason: str, message: str) -> None:
        """A Warning event, unless the same message was the last one posted for this resource."""
        meta = inference["metadata"]
        key = (meta["namespace"], meta["name"])
        reported = self.reported.setdefault(key, _Reported())
        if reported.problem != message:
            reported.problem = message
            self._event(inference, reason, message, ev.WARNING)

    def _event(self, inference: dict, reason: str, message: str, type_: str = ev.NORMAL) -> None:
        try:
            response = self.core.create_namespaced_event(inference["metadata"]["namespace"],
                                                         ev.build_event(inference, reason, message, type_),
                                                         _request_timeout=API_TIMEOUT, _preload_content=False)
            response.drain_conn()  # the answer is not needed; its connection goes back to the pool
        except Exception as exc:  # events are best-effort: never fail a reconcile for one
            log.debug("could not post event %s for %s: %s", reason, inference["metadata"].get("name"), exc)


def _status(error: Exception) -> int | None:
    return error.status if isinstance(error, ApiException) else None


def _describe(name: str, placement: ReplicaPlacement) -> str:
    text = f"replica {placement.replica} → {pod_name(name, placement.replica)} on {placement.node} cores {placement.cores}"
    if len(placement.process_cores) > 1:
        text += " (processes " + ", ".join(str(r) for r in placement.process_cores) + ")"
    return text


def _api_message(exc: Exception) -> str:
    try:
        return json.loads(exc.body).get("message") or str(exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


# ---- kopf wiring ---------------------------------------------------------------------------------

_controller: Controller | None = None


class _NoDiffBase(kopf.DiffBaseStorage):
    """kopf's diff base, for operators with no on.create/on.update handlers: nothing to keep.

    kopf deep-copies every object of every event to compute what changed since the last handled
    state, which only change handlers use. Ours are all on.event, so that copy was pure overhead:
    about a tenth of the operator's CPU while placing 1,000 pods.
    """

    def build(self, *, body, extra_fields=None):
        return {}

    def fetch(self, *, body):
        return None

    def store(self, *, body, patch, essence):
        pass


def _api_client(settings: OperatorSettings) -> k8s.ApiClient:
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    configuration = k8s.Configuration.get_default_copy()
    # One connection for every thread that may call the API at once, so none waits for a socket.
    configuration.connection_pool_maxsize = api_threads(settings) + settings.workers + 1
    return k8s.ApiClient(configuration)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, logger, **_):
    global _controller
    ours = OperatorSettings.from_env()
    if ours.log_format == "json":
        # Under a bare `kopf run` (no --log-format) NEURONPLACE_LOG_FORMAT=json still applies.
        kopf.configure(verbose=logging.getLogger().level <= logging.DEBUG, log_format=kopf.LogFormat.JSON)
    settings.watching.server_timeout = int(ours.watch_server_timeout)  # the API server wants whole seconds
    settings.watching.client_timeout = ours.watch_client_timeout
    settings.watching.connect_timeout = ours.watch_connect_timeout
    settings.watching.reconnect_backoff = 1.0
    settings.networking.connect_timeout = ours.watch_connect_timeout
    settings.networking.request_timeout = ours.watch_client_timeout
    settings.networking.error_backoffs = [0.5, 1, 2, 5, 10]
    settings.batching.error_delays = [0.5, 1, 2, 5, 10, 30]
    settings.batching.batch_window = 0.05
    settings.posting.level = logging.WARNING
    settings.persistence.diffbase_storage = _NoDiffBase()
    # Watch exactly the resources and namespaces named at start: no list/watch of CRDs or namespaces,
    # which the chart's least-privilege RBAC does not grant (kopf would retry 403s for ~20 s).
    settings.scanning.disabled = True
    settings.execution.max_workers = max(4, ours.workers)
    # kopf logs every handled event at INFO ("Handler 'pod_event' succeeded"): with thousands of
    # pods that drowns what matters. Our own decisions are logged by "neuronplace.operator".
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    heap.limit_arenas()  # before the Controller starts its thread pools
    controller = Controller(ours, _api_client(ours))
    try:
        await asyncio.to_thread(controller.initial_sync)
    except Exception as exc:
        raise kopf.TemporaryError(f"cannot list nodes and pods yet: {exc}", delay=2) from exc
    controller.start(asyncio.get_running_loop())
    _controller = controller
    if ours.metrics_port:
        mx.METRICS.watch_ledger(lambda: mx.snapshot_ledger(controller.ledger, controller.inventories),
                                lock=controller.lock)
        mx.METRICS.serve(ours.metrics_port)
    logger.info("neuronplace operator started: %s", ours)


@kopf.on.cleanup()
async def cleanup(**_):
    if _controller is not None:
        await _controller.stop()
    mx.METRICS.stop()


@kopf.on.probe(id="ledger")
def ledger_probe(**_):
    if _controller is None:
        return {"ready": False}
    return {"ready": True, "pods": len(_controller.pods), "nodes": len(_controller.inventories),
            "queued": len(_controller.pending), "running": len(_controller.running)}


@kopf.on.event(GROUP, VERSION, PLURAL)
async def inference_event(event, **_):
    if _controller is not None:
        _controller.on_inference(event.get("type"), event["object"])


@kopf.on.event("", "v1", "pods")
async def pod_event(event, **_):
    if _controller is not None:
        _controller.on_pod(event.get("type"), event["object"])


@kopf.on.event("", "v1", "nodes")
async def node_event(event, **_):
    if _controller is not None:
        _controller.on_node(event.get("type"), event["object"])
