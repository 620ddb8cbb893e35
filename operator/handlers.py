"""The kopf wiring: start-up, clean-up, the health probe and the watches. Nothing else.

kopf watches NeuronInferences, Pods, Nodes and PriorityClasses, and the PersistentVolumeClaims,
PersistentVolumes and StorageClasses that decide where replicas' volumes can be used, with
``@kopf.on.event`` handlers only: no finalizers, no progress annotations, nothing written to the
watched objects, and no change handlers (``on.create`` / ``on.update``), which is what lets
:class:`_NoDiffBase` switch off kopf's per-event copy of every object. Each event goes to the
:class:`~.controller.Controller`, which kopf keeps in its ``memo`` (``memo.controller``, set once
start-up has rebuilt the ledger): kopf hands ``memo`` to every handler, so no handler needs module
state. Each handler hands its event to the controller's event thread (``Controller.off_loop``):
nothing that takes the cache's lock runs on kopf's event loop, which also answers ``/healthz``.

Start-up lists every node and pod before any reconcile runs, so that a restarted operator hands
out no core twice; until that has succeeded start-up is retried (``kopf.TemporaryError``) and the
watches do not start.

With leader election (:mod:`.leader`, on by default) start-up first looks at the Lease once: a
process that holds it then (an absent or free Lease, or its own from before a restart) starts as
before, at no cost. A follower builds its caches all the same and keeps them current from the
watches, but its controller does not run: no reconcile, no write. When it is elected it compares
its caches with full lists (``Controller.full_resync``) before it starts. Every write passes the
elector's fence. kopf posts no Events of its own then (``settings.posting``): they would be writes
outside the fence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import kopf
from kubernetes import client as k8s

from neuronplace.operator import heap
from neuronplace.operator import metrics as mx
from neuronplace.operator.controller import Controller, api_client
from neuronplace.operator.leader import Elector, manager
from neuronplace.operator.settings import OperatorSettings
from neuronplace.operator.storage import CLAIMS, CLASSES, VOLUMES
from neuronplace.placement.names import GROUP, PLURAL, VERSION


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


def _controller(memo: kopf.Memo) -> Controller | None:
    """The controller, once start-up has made it (probes and clean-up may come before that)."""
    return memo.get("controller")


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger, **_):
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
    settings.posting.enabled = not ours.leader_election
    settings.persistence.diffbase_storage = _NoDiffBase()
    # Watch exactly the resources and namespaces named at start: no list/watch of CRDs or namespaces,
    # which the chart's least-privilege RBAC does not grant (kopf would retry 403s for ~20 s).
    settings.scanning.disabled = True
    settings.execution.max_workers = max(4, ours.workers)
    # kopf logs every handled event at INFO ("Handler 'pod_event' succeeded"): with thousands of
    # pods that drowns what matters. Our own decisions are logged by "neuronplace.operator".
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    heap.limit_arenas()  # before the Controller starts its thread pools
    loop = asyncio.get_running_loop()
    api = api_client(ours)
    # managedFields name the writer by its user agent: which replica wrote what stays visible.
    api.user_agent = manager(ours)
    elector = _elector(ours, memo, loop)
    if elector is not None:
        await asyncio.to_thread(elector.attempted.wait)
    # Elected before the lists are read: they are the rebuild a new leader needs.
    leading = elector is None or elector.leading
    controller = Controller.connect(ours, api, contextlib.nullcontext if elector is None else elector.writing)
    try:
        await asyncio.to_thread(controller.initial_sync)
    except Exception as exc:
        await controller.stop()
        raise kopf.TemporaryError(f"cannot list nodes and pods yet: {exc}", delay=2) from exc
    if leading:
        controller.start(loop)
    else:
        memo.leading = loop.create_task(_lead_when_elected(controller, memo.elected, ours.retry_period_seconds))
    memo.controller = controller
    if ours.metrics_port:
        mx.METRICS.watch_ledger(lambda: controller.cache.read_ledger(mx.snapshot_ledger))
        mx.METRICS.serve(ours.metrics_port, ours.metrics_address)
    logger.info("neuronplace operator started: %s", ours)


def _elector(ours: OperatorSettings, memo: kopf.Memo, loop: asyncio.AbstractEventLoop) -> Elector | None:
    """The running elector (one per process, also when start-up is retried); None without election."""
    if not ours.leader_election:
        return None
    if memo.get("elector") is None:
        memo.elected = elected = loop.create_future()

        def on_elected() -> None:
            loop.call_soon_threadsafe(lambda: elected.done() or elected.set_result(None))

        # Its own client: renewals never wait for a connection the controller's calls hold.
        client = k8s.ApiClient(k8s.Configuration.get_default_copy())
        client.user_agent = manager(ours)
        api = k8s.CoordinationV1Api(client)
        memo.elector = Elector(ours, api, on_elected)
        memo.elector.start()
    return memo.elector


async def _lead_when_elected(controller: Controller, elected: asyncio.Future, retry: float) -> None:
    """A follower's controller starts once elected, after comparing its caches with full lists."""
    await elected
    while True:
        try:
            await asyncio.to_thread(controller.full_resync)
            break
        except Exception as exc:  # the API may be down; if renewals fail too, the renew deadline ends the process
            logging.getLogger("neuronplace.operator").warning("cannot resync before leading yet: %s", exc)
            await asyncio.sleep(retry)
    controller.start(asyncio.get_running_loop())


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_):
    leading = memo.get("leading")
    if leading is not None:
        leading.cancel()
    elector = memo.get("elector")
    if elector is not None:
        # First: new writes are refused, those in flight end, and a follower may take over at once.
        await asyncio.to_thread(elector.release)
    controller = _controller(memo)
    if controller is not None:
        await controller.stop()
    mx.METRICS.stop()


@kopf.on.probe(id="ledger")
def ledger_probe(memo: kopf.Memo, **_):
    controller = _controller(memo)
    return {"ready": False} if controller is None else controller.probe()


@kopf.on.probe(id="leader")
def leader_probe(memo: kopf.Memo, **_):
    """Who leads, as this process last read the Lease (kopf caches probes for up to 10 s)."""
    elector = memo.get("elector")
    return {"leader_election": False} if elector is None else elector.probe()


async def _deliver(memo: kopf.Memo, method: str, *args) -> None:
    """Hand a watch event to the controller's ``method`` (an ``on_*``), off kopf's loop; dropped
    before start-up has made the controller (a follower's folds events into its caches, acting on none)."""
    controller = _controller(memo)
    if controller is not None:
        await controller.off_loop(getattr(controller, method), *args)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def inference_event(event, memo: kopf.Memo, **_):
    await _deliver(memo, "on_inference", event.get("type"), event["object"])


@kopf.on.event("", "v1", "pods")
async def pod_event(event, memo: kopf.Memo, **_):
    await _deliver(memo, "on_pod", event.get("type"), event["object"])


@kopf.on.event("", "v1", "nodes")
async def node_event(event, memo: kopf.Memo, **_):
    await _deliver(memo, "on_node", event.get("type"), event["object"])


@kopf.on.event("scheduling.k8s.io", "v1", "priorityclasses")
async def priority_class_event(event, memo: kopf.Memo, **_):
    await _deliver(memo, "on_priority_class", event.get("type"), event["object"])


@kopf.on.event("", "v1", CLAIMS)
async def claim_event(event, memo: kopf.Memo, **_):
    await _deliver(memo, "on_storage", CLAIMS, event.get("type"), event["object"])


@kopf.on.event("", "v1", VOLUMES)
async def volume_event(event, memo: kopf.Memo, **_):
    await _deliver(memo, "on_storage", VOLUMES, event.get("type"), event["object"])


@kopf.on.event("storage.k8s.io", "v1", CLASSES)
async def storage_class_event(event, memo: kopf.Memo, **_):
    await _deliver(memo, "on_storage", CLASSES, event.get("type"), event["object"])


# The Neuron DRA driver's slices (which nodes it manages, their chips) and ResourceClaims (what
# allocated claims hold; ours are made per replica on DRA nodes).
@kopf.on.event("resource.k8s.io", "v1", "resourceslices")
async def resource_slice_event(event, memo: kopf.Memo, **_):
    await _deliver(memo, "on_resource_slice", event.get("type"), event["object"])


@kopf.on.event("resource.k8s.io", "v1", "resourceclaims")
async def resource_claim_event(event, memo: kopf.Memo, **_):
    await _deliver(memo, "on_resource_claim", event.get("type"), event["object"])
