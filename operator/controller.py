"""One operator process's controller: the cache, the full-list sync, the work queue and the
reconciler, assembled and run on kopf's event loop.

- Watch events (``on_*``) update the cache and queue the NeuronInferences they affect. The kopf
  handlers hand them to one thread of their own (:meth:`Controller.off_loop`, in arrival order):
  folding an event in takes the cache's lock, which a ruling may hold for long, and kopf's event
  loop, which also answers ``/healthz``, must never wait for it. Pod events are coalesced for a
  moment: a scale-up makes several events per pod as the pods start, and one reconcile and one
  status write suffice for all of them.
- When room frees (a pod ends, a node or a volume changes), at most
  ``settings.waiting_retries_per_event`` of the inferences waiting for room are looked at again,
  in the order they are served; the others at the next resync round.
- ``settings.workers`` queue workers reconcile at once, each in a thread of its own (the
  Kubernetes client is synchronous), so API calls run concurrently; placement itself holds the
  cache's lock.
- A resync loop queues every inference regularly, events or not (the operator is level-driven),
  and every other round first compares the cache with full lists (:mod:`.sync`).

It holds no Kubernetes client of its own beyond the two API objects it is given, so tests can build
one on fakes. The kopf wiring (:mod:`.handlers`) keeps it in kopf's ``memo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from neuronplace.operator import heap
from neuronplace.operator import metrics as mx
from neuronplace.operator.cache import Cache
from neuronplace.operator.keys import DELETED, Key
from neuronplace.operator.reconciler import Reconciler
from neuronplace.operator.settings import OperatorSettings
from neuronplace.operator.sync import Sync
from neuronplace.operator.workqueue import WorkQueue
from neuronplace.operator.writes import Writer

log = logging.getLogger("neuronplace.operator")

# Pod events of one inference within this many seconds are handled by one reconcile.
POD_EVENT_COALESCE = 0.1

# The first full resync, soon after start-up: by then kopf's watches are running, so anything the
# start-up lists saw that has vanished since is caught within seconds (see ``Controller.resync``).
FIRST_RESYNC_SECONDS = 2.0


def api_threads(settings: OperatorSettings) -> int:
    """Threads creating pods at once: the operator mostly waits on the API server, so several per worker."""
    return max(8, 4 * settings.workers)


def api_client(settings: OperatorSettings) -> k8s.ApiClient:
    """A client for the in-cluster service account, else the current kubeconfig context."""
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    configuration = k8s.Configuration.get_default_copy()
    # One connection for every thread that may call the API at once, so none waits for a socket.
    configuration.connection_pool_maxsize = api_threads(settings) + settings.workers + 1
    return k8s.ApiClient(configuration)


class Controller:
    """Cache, sync, queue and reconciler of one operator process."""

    def __init__(
        self, settings: OperatorSettings, core: Any, custom: Any, fence: Callable[[], Any] = contextlib.nullcontext
    ) -> None:
        self.settings = settings
        self.cache = Cache(
            settings.namespaces, settings.node_selector, settings.health_conditions(), settings.health_settle_seconds
        )
        self.sync = Sync(self.cache, core, custom)
        # Reconciles (and the resync) run in threads of their own: asyncio's default executor has
        # only CPUs + 4 threads. Pod creates fan out to the API threads.
        self.reconcile_pool = ThreadPoolExecutor(
            max_workers=settings.workers + 1, thread_name_prefix="neuronplace-reconcile"
        )
        self.api_pool = ThreadPoolExecutor(max_workers=api_threads(settings), thread_name_prefix="neuronplace-api")
        # One thread: watch events are folded into the cache in the order they came.
        self.event_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neuronplace-events")
        self.reconciler = Reconciler(settings, self.cache, Writer(core, custom, fence), self.api_pool)
        self.queue = WorkQueue(
            self._reconcile,
            workers=settings.workers,
            backoff=settings.error_backoff_seconds,
            max_backoff=settings.max_backoff_seconds,
            coalesce=POD_EVENT_COALESCE,
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self.resync_task: asyncio.Task | None = None

    @classmethod
    def connect(
        cls, settings: OperatorSettings, api: k8s.ApiClient, fence: Callable[[], Any] = contextlib.nullcontext
    ) -> Controller:
        """``fence``: what every write passes first (leader election's; none without it)."""
        return cls(settings, k8s.CoreV1Api(api), k8s.CustomObjectsApi(api), fence)

    # ---- lists (worker threads) ----------------------------------------------------------------

    def initial_sync(self) -> None:
        self.sync.initial_sync()

    def full_resync(self) -> None:
        for key in self.sync.full_resync():
            self.reconciler.forget(key)

    # ---- watch events (the event thread: :meth:`off_loop`) ---------------------------------------

    async def off_loop(self, handle: Callable[..., None], *args: Any) -> None:
        """Run ``handle(*args)`` (an ``on_*`` method) in the event thread, off the event loop."""
        await asyncio.get_running_loop().run_in_executor(self.event_pool, handle, *args)

    def on_inference(self, kind: str | None, body: Mapping[str, Any]) -> None:
        key = self.cache.apply_inference(kind, body)
        if key is None:
            return
        if kind == DELETED:
            self.reconciler.forget(key)
        self._enqueue(key)

    def on_pod(self, kind: str | None, body: Mapping[str, Any]) -> None:
        key, waiting = self.cache.apply_pod(kind, body)
        if key is not None:
            self._enqueue(key, soon=True)
        for other in waiting[: self.settings.waiting_retries_per_event]:
            self._enqueue(other)

    def _retry_waiting(self, affected) -> None:
        """Look again at the inferences a change may have made room for, in waiting order, a bounded
        number per event."""
        for key in self.cache.in_waiting_order(affected, self.settings.waiting_retries_per_event):
            self._enqueue(key)

    def on_node(self, kind: str | None, body: Mapping[str, Any]) -> None:
        self._retry_waiting(self.cache.apply_node(kind, body))

    def on_priority_class(self, kind: str | None, body: Mapping[str, Any]) -> None:
        # A class's value decides whether templates naming it are refused: look at them again.
        for key in self.cache.apply_priority_class(kind, body):
            self._enqueue(key)

    def on_storage(self, kind: str, event: str | None, body: Mapping[str, Any]) -> None:
        """A claim, volume or storage class changed: where replicas' volumes can go may have too."""
        self._retry_waiting(self.cache.apply_storage(kind, event, body))

    def on_resource_slice(self, kind: str | None, body: Mapping[str, Any]) -> None:
        """A Neuron DRA driver's slice changed: which nodes it manages, and their chips, may have too."""
        self._retry_waiting(self.cache.apply_resource_slice(kind, body))

    def on_resource_claim(self, kind: str | None, body: Mapping[str, Any]) -> None:
        """A ResourceClaim changed: allocated chips are held, freed ones are room."""
        self._retry_waiting(self.cache.apply_resource_claim(kind, body))

    def _enqueue(self, key: Key, soon: bool = False) -> None:
        """Queue ``key`` from any thread (the queue lives on the event loop)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.queue.enqueue_soon if soon else self.queue.enqueue, key)

    # ---- running -------------------------------------------------------------------------------

    async def _reconcile(self, key: Key) -> float | None:
        with mx.METRICS.time_reconcile():
            try:
                delay = await self._in_thread(self.reconciler.reconcile, key)
            except Exception:
                mx.METRICS.reconciled(mx.RECONCILE_ERROR)
                raise
            mx.METRICS.reconciled(mx.RECONCILE_SUCCESS if delay is None else mx.RECONCILE_REQUEUE)
            return delay

    async def resync(self) -> None:
        """Level-driven safety net: every inference is looked at regularly, events or not, and every
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
            self._enqueue_all()
            await self._in_thread(heap.return_free_memory)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue.start(loop)
        self.resync_task = loop.create_task(self.resync(), name="neuronplace-resync")
        self._enqueue_all()

    async def stop(self) -> None:
        if self.resync_task is not None:
            self.resync_task.cancel()
            await asyncio.gather(self.resync_task, return_exceptions=True)
        await self.queue.stop()
        self.api_pool.shutdown(wait=False, cancel_futures=True)
        self.event_pool.shutdown(wait=False, cancel_futures=True)
        self.reconcile_pool.shutdown(wait=False, cancel_futures=True)

    def probe(self) -> dict:
        """What kopf's health endpoint reports under the probe id ``ledger``."""
        return {
            "ready": True,
            "pods": len(self.cache.pods),
            "nodes": len(self.cache.inventories),
            "queued": len(self.queue.pending),
            "running": len(self.queue.running),
        }

    def _enqueue_all(self) -> None:
        for key in self.cache.inference_keys():
            self.queue.enqueue(key)

    def _in_thread(self, function, *args):
        assert self.loop is not None
        return self.loop.run_in_executor(self.reconcile_pool, function, *args)
