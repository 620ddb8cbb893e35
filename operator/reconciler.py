"""One reconcile of one NeuronInference: decide → place → create/delete pods → write status.

What to do is decided by the pure :func:`neuronplace.placement.reconcile.decide` from a snapshot
of the cache; this module carries it out and reports it:

1. a resource in the operator's own namespace (``NamespaceNotServed``) or with an invalid spec
   (``InvalidSpec``, which includes a template naming a system priority class the settings do not
   allow) is reported in the status and nothing else happens;
2. surplus, failed, unschedulable, outdated and stranded pods are deleted (an Event each); each
   replica's failed attempts (:mod:`neuronplace.placement.failures`) are remembered here, in
   memory, and shown in the ``ReplicaFailure`` condition with an Event per failure; pinned pods
   kube-scheduler gives no verdict on are kept, and said in Ready (``SchedulerNotResponding``), one
   Event and a metric;
3. the missing replicas are placed one by one under the cache's lock, each reservation entered in
   the ledger at once, so a concurrent reconcile of another resource sees those cores taken; a
   replica avoids the nodes where its recent attempts were refused;
4. their pods are created concurrently, bound or pinned to their node as the binding mode says
   (a replica count of hundreds must not mean hundreds of round trips in a row), outside the lock,
   right after their capacity requests, and those they displace on the same nodes, are deleted
   (:mod:`.capacity`); a reservation whose pod was not created is given back, except after a 409,
   where the watch event for the existing pod replaces it;
5. every replica that fits nowhere keeps one capacity request (none when the resource is refused or
   has nothing waiting), so that an autoscaler adds a node for it;
6. the status is written when it differs from what is there.

Failures follow the two kinds of :mod:`.writes`. A refused pod (400/422) is a problem of this
generation of the spec: it is remembered, reported in ``Placed`` and an Event, and no pod is
created again until the generation changes. A 403 (quota, a terminating namespace, RBAC) is
reported the same way but retried slowly. Anything else temporary is raised to the work queue,
which retries it. Runs in a worker thread: the Kubernetes client is synchronous.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import replace

from neuronplace.operator import metrics as mx
from neuronplace.operator.cache import Cache, Key
from neuronplace.operator.capacity import CapacityRequests
from neuronplace.operator.settings import OperatorSettings
from neuronplace.operator.writes import CONFLICT_RETRY, Permanent, Temporary, Writer
from neuronplace.placement import events as ev
from neuronplace.placement import failures as fl
from neuronplace.placement import reconcile as rc
from neuronplace.placement import status as st
from neuronplace.placement import validation as vd
from neuronplace.placement.capacity import counted_room, no_request_reason
from neuronplace.placement.names import (
    BINDING_DIRECT,
    REASON_INVALID_SPEC,
    REASON_NAMESPACE_NOT_SERVED,
    REASON_PLACED,
    REASON_POD_FORBIDDEN,
    REASON_POD_REJECTED,
    REASON_UNSCHEDULABLE,
)
from neuronplace.placement.pods import build_pod, pod_name
from neuronplace.placement.priority import priority_refusal
from neuronplace.placement.request import ReplicaPlacement
from neuronplace.placement.search import place_one
from neuronplace.placement.volumes import consumer_node

log = logging.getLogger("neuronplace.operator")


class Reconciler:
    """Carries out decide()'s decisions for one resource at a time (several threads at once)."""

    def __init__(self, settings: OperatorSettings, cache: Cache, writer: Writer, api_pool: Executor) -> None:
        self.settings = settings
        self.cache = cache
        self.writer = writer
        self.api_pool = api_pool  # pod creates fan out here
        self.policy = settings.template_policy()
        self.capacity = CapacityRequests(settings, cache, writer)
        # Per resource: the permanent problem of a spec generation, and the last warning posted as
        # an Event (so that a problem that persists is posted once, not at every reconcile).
        self.permanent: dict[Key, tuple[int | None, st.Problem]] = {}
        self.reported: dict[Key, str] = {}
        # Per resource, per replica: its failed attempts (backoff, nodes to avoid). Memory only: a
        # restarted operator starts every replica's backoff afresh (see placement.failures).
        self.history: dict[Key, dict[int, fl.ReplicaHistory]] = {}

    def forget(self, key: Key) -> None:
        """The resource is gone: what was remembered about it must not apply to a new one of its name."""
        self.permanent.pop(key, None)
        self.reported.pop(key, None)
        self.history.pop(key, None)
        mx.METRICS.scheduler_silent(key, 0)

    def binding(self, inference: dict) -> str:
        """The binding mode in effect: the resource's own, else the operator's setting."""
        placement = (inference.get("spec") or {}).get("placement") or {}
        return placement.get("binding") or self.settings.binding

    def reconcile(self, key: Key) -> float | None:
        """Bring one resource's pods and status in line with its spec; returns a requeue delay."""
        snapshot = self.cache.snapshot(key)
        if snapshot is None:
            return None
        inference, pods, nodes, last_known = snapshot
        refusal = vd.namespace_refusal(key[0], self.settings.operator_namespace, self.settings.serve_operator_namespace)
        if refusal is not None:
            mx.METRICS.failed(REASON_NAMESPACE_NOT_SERVED)
            self.capacity.keep(inference, ())
            self._write_status(inference, st.Problem(REASON_NAMESPACE_NOT_SERVED, refusal))
            return None
        decision = rc.decide(
            inference,
            pods,
            nodes,
            now=dt.datetime.now(dt.UTC),
            node_grace_seconds=self.settings.node_grace_seconds,
            last_known=last_known,
            policy=self.policy,
            history=self.history.get(key),
            unschedulable_seconds=self.settings.unschedulable_seconds,
        )
        mx.METRICS.scheduler_silent(key, len(decision.unheard))
        with self.cache.lock:
            classes = dict(self.cache.priority_classes)
        invalid = decision.invalid or priority_refusal(inference, classes, self.settings.allow_system_priority)
        if invalid is not None:
            mx.METRICS.failed(REASON_INVALID_SPEC)
            self.capacity.keep(inference, ())
            self._write_status(inference, st.Problem(REASON_INVALID_SPEC, invalid))
            return None

        histories = self.history.setdefault(key, {})
        for ordinal, history in decision.history.items():
            if history is None:
                histories.pop(ordinal, None)
            else:
                histories[ordinal] = history
        for failure in decision.failures:
            where = f" on {failure.node}" if failure.node else ""
            self.writer.post_event(
                inference, failure.reason, f"replica {failure.replica}{where}: {failure.message}", ev.WARNING
            )
        for deletion in decision.deletions:
            self._delete_pod(inference, deletion)
        # Pinned pods kube-scheduler ignores are kept (a new one would be ignored too): said once.
        silence = st.scheduler_silence(decision.unheard)
        if silence is not None:
            self._event_once(inference, silence.reason, silence.message)

        generation = (inference.get("metadata") or {}).get("generation")
        known = self.permanent.get(key)
        problem = known[1] if known and known[0] == generation else None
        retry: float | None = decision.requeue_after
        waiting: set[int] = set()  # replicas that fit on no node and would on a new one
        if decision.create and problem is None:
            problem, retry_create, waiting = self._place_and_create(inference, decision)
            if retry_create is not None:
                retry = retry_create if retry is None else min(retry, retry_create)
        if self.binding(inference) == BINDING_DIRECT:
            # Direct binding promises that nothing else places pods on these nodes, and a capacity
            # request is a pod kube-scheduler places: between a request's deletion and the bound
            # replica pod's creation it could bind another request into the same room, and a
            # kubelet would turn one of the two away. Autoscaling needs Scheduler binding.
            waiting = set()
        capacity, retry_capacity = self.capacity.keep(inference, waiting)
        if retry_capacity is not None:
            retry = retry_capacity if retry is None else min(retry, retry_capacity)
        self._write_status(inference, problem, capacity, silence)
        return retry

    # ---- placing and creating ------------------------------------------------------------------

    def _place_and_create(
        self, inference: dict, decision: rc.Decision
    ) -> tuple[st.Problem | None, float | None, set[int]]:
        """Place and create the missing replicas; returns the problem, a requeue delay and the
        replicas that fit on no node and would fit on a new one."""
        meta = inference["metadata"]
        key = (meta["namespace"], meta["name"])
        cache = self.cache
        with cache.lock:
            template = inference["spec"].get("template") or {}
            volumes = cache.storage.constraint(template.get("spec") or {}, key[0], self.binding(inference))
            if volumes.problem is not None:
                cache.waiting_for_room.add(key)  # a claim, volume or class event looks again
            # Where the replicas' shared claim, still unbound, is going to be bound (if anywhere yet).
            follow = consumer_node(cache.pods_of_inference(key)) if volumes.first_consumer else None
        if volumes.problem is not None:
            mx.METRICS.failed(volumes.reason, len(decision.create))
            self._event_once(inference, volumes.reason, volumes.problem)
            return st.Problem(volumes.reason, volumes.problem), None, set()
        request = rc.placement_request(inference, self.settings.numbering, volumes.node_terms)
        placed: list[ReplicaPlacement] = []
        unplaceable: list[tuple[int, str]] = []
        waiting: set[int] = set()  # unplaceable replicas a new node would take: they get capacity requests
        with cache.lock:
            fleet = cache.fleet()
            for ordinal in decision.create:
                owner = f"{meta['namespace']}/{pod_name(meta['name'], ordinal)}"
                avoid = decision.avoid.get(ordinal, frozenset())
                prefer = decision.prefer.get(ordinal)
                placing = request if follow is None else replace(request, volume_terms=volumes.on_node(follow))
                result = place_one(
                    rc.avoiding(placing, avoid), ordinal, fleet, cache.ledger, owner, prefer=prefer, usage=cache.usage
                )
                if isinstance(result, ReplicaPlacement):
                    placed.append(result)
                    cache.inflight.add(owner)
                    follow = result.node if volumes.first_consumer else None
                elif avoid:  # its own failures keep it off nodes: no new node is asked for it
                    avoided = ", ".join(sorted(avoid))
                    unplaceable.append((result.replica, f"{result.reason}; avoiding {avoided} after failed attempts"))
                elif not self.settings.capacity_requests:
                    unplaceable.append((result.replica, result.reason))
                elif (room := counted_room(placing, fleet, cache.usage)) is not None:
                    unplaceable.append((result.replica, f"{result.reason}; {no_request_reason(room)}"))
                else:
                    unplaceable.append((result.replica, result.reason))
                    waiting.add(result.replica)
            if unplaceable:
                cache.waiting_for_room.add(key)
            else:
                cache.waiting_for_room.discard(key)

        try:
            return (*self._create_all(inference, placed, unplaceable), waiting)
        finally:
            with cache.lock:
                for placement in placed:
                    cache.inflight.discard(f"{meta['namespace']}/{pod_name(meta['name'], placement.replica)}")

    def _create_all(
        self, inference: dict, placed: list[ReplicaPlacement], unplaceable: list[tuple[int, str]]
    ) -> tuple[st.Problem | None, float | None]:
        meta = inference["metadata"]
        key = (meta["namespace"], meta["name"])
        retry: float | None = None
        mx.METRICS.failed(REASON_UNSCHEDULABLE, len(unplaceable))
        if placed:
            self.capacity.make_room(inference, placed)
        # Each outcome is None or the error its create raised.
        outcomes = list(self.api_pool.map(lambda placement: self._try_create(inference, placement), placed))
        created = [p for p, error in zip(placed, outcomes) if error is None]
        failed = [(p, error) for p, error in zip(placed, outcomes) if error is not None]
        mx.METRICS.placed(len(created))
        for _, error in failed:
            mx.METRICS.failed(mx.failure_reason(_status(error)))
        if created:
            self.writer.post_event(inference, REASON_PLACED, "; ".join(_describe(meta["name"], p) for p in created))
        # 409: the name is still taken (our cache is behind). Keep the reservation: the watch event
        # for that pod replaces it with what the pod really holds.
        if any(_status(error) == 409 for _, error in failed):
            retry = CONFLICT_RETRY
        failed = [(p, error) for p, error in failed if _status(error) != 409]
        self._release(inference, [p for p, _ in failed])
        rejected = [(p, error) for p, error in failed if isinstance(error, Permanent)]
        if rejected:
            placement, error = rejected[0]
            problem = st.Problem(
                REASON_POD_REJECTED,
                f"the API server refused pod {pod_name(meta['name'], placement.replica)}: {_message(error)}",
            )
            self.permanent[key] = (meta.get("generation"), problem)
            self.writer.post_event(inference, REASON_POD_REJECTED, problem.message, ev.WARNING)
            return problem, retry
        throttled = [error for _, error in failed if _status(error) == 429]
        if throttled:
            raise throttled[0]
        forbidden = [error for _, error in failed if _status(error) == 403]
        if forbidden:  # quota, a terminating namespace, or RBAC: report it and retry slowly
            problem = st.Problem(REASON_POD_REJECTED, f"pod creation forbidden: {_message(forbidden[0])}")
            self._event_once(inference, REASON_POD_FORBIDDEN, problem.message)
            return problem, self.settings.max_backoff_seconds
        if failed:
            raise failed[0][1]
        if unplaceable:
            problem = st.Problem(REASON_UNSCHEDULABLE, st.summarize_unplaceable(unplaceable))
            self._event_once(inference, REASON_UNSCHEDULABLE, problem.message)
            return problem, retry
        self.reported.pop(key, None)
        return None, retry

    def _release(self, inference: dict, placements: Sequence[ReplicaPlacement]) -> None:
        """Give back reservations whose pods were not created."""
        meta = inference["metadata"]
        with self.cache.lock:
            for placement in placements:
                name = pod_name(meta["name"], placement.replica)
                if (meta["namespace"], name) not in self.cache.pods:
                    self.cache.ledger.forget(f"{meta['namespace']}/{name}")
                    self.cache.usage.forget(f"{meta['namespace']}/{name}")

    def _try_create(self, inference: dict, placement: ReplicaPlacement) -> Exception | None:
        meta = inference["metadata"]
        pod = build_pod(inference, placement, numbering=self.settings.numbering, binding=self.binding(inference))
        try:
            created = self.writer.create_pod(meta["namespace"], pod)
        except Exception as error:  # Temporary, Permanent, or a bug: the caller sorts them out
            return error
        with self.cache.lock:
            if (meta["namespace"], pod["metadata"]["name"]) not in self.cache.pods:
                self.cache.observe_pod(created)
        return None

    # ---- deleting, status, events --------------------------------------------------------------

    def _delete_pod(self, inference: dict, deletion: rc.Deletion) -> None:
        if not self.writer.delete_pod(inference["metadata"]["namespace"], deletion.pod, force=deletion.force):
            return  # already gone
        kind = ev.NORMAL if deletion.reason in (rc.SURPLUS, rc.OUTDATED) else ev.WARNING
        self.writer.post_event(inference, deletion.reason, deletion.message, kind)

    def _write_status(
        self,
        inference: dict,
        problem: st.Problem | None,
        capacity: st.Problem | None = None,
        not_ready: st.Problem | None = None,
    ) -> None:
        meta = inference["metadata"]
        key = (meta["namespace"], meta["name"])
        with self.cache.lock:
            pods = self.cache.pods_of_inference(key)
            current = self.cache.inferences.get(key, inference)
        failing = fl.summarize(self.history.get(key) or {}, dt.datetime.now(dt.UTC))
        wanted = st.build_status(
            current,
            pods,
            problem=problem,
            replica_failure=st.Problem(*failing) if failing else None,
            waiting_for_capacity=capacity,
            not_ready=not_ready,
            binding=self.binding(current),
        )
        if not st.status_differs(current.get("status"), wanted):
            return
        if problem is not None and problem.reason in (REASON_INVALID_SPEC, REASON_NAMESPACE_NOT_SERVED):
            self._event_once(current, problem.reason, problem.message)
        self.writer.patch_status(meta["namespace"], meta["name"], wanted)

    def _event_once(self, inference: dict, reason: str, message: str) -> None:
        """A Warning event, unless the same message was the last one posted for this resource."""
        meta = inference["metadata"]
        key = (meta["namespace"], meta["name"])
        if self.reported.get(key) != message:
            self.reported[key] = message
            self.writer.post_event(inference, reason, message, ev.WARNING)


def _status(error: Exception) -> int | None:
    """The HTTP status of a failed create (None: no HTTP answer, or not an API error at all)."""
    return error.status if isinstance(error, (Temporary, Permanent)) else None


def _message(error: Exception) -> str:
    return error.message if isinstance(error, (Temporary, Permanent)) else str(error)


def _describe(name: str, placement: ReplicaPlacement) -> str:
    text = (
        f"replica {placement.replica} → {pod_name(name, placement.replica)} on {placement.node} cores {placement.cores}"
    )
    if len(placement.process_cores) > 1:
        text += " (processes " + ", ".join(str(r) for r in placement.process_cores) + ")"
    return text
