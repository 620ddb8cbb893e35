"""One reconcile of one inference: read the ruling, carry it out, write the status.

What to do is decided by the pure :func:`neuronplace.placement.ruling.rule`, called by the cache
under its lock on its view of the cluster (:meth:`.cache.Cache.rule`); this module only carries the
actions out, in the ruling's order, and reports them:

1. a refused inference: its capacity requests go and the status says why;
2. failed attempts get an Event each; pods to delete go (an Event each); kube-scheduler's silence
   is said once;
3. the capacity requests in the way go, then the replica pods are created concurrently (a replica
   count of hundreds must not mean hundreds of round trips in a row); what the API server answered
   is judged by :func:`neuronplace.placement.creation.judge` (reservations given back, a problem
   remembered for the spec's generation, Events, a retry or an error for the work queue);
4. capacity requests are deleted and created as the ruling says;
5. the status is written when it differs from what is there.

Memory kept here, per inference: each replica's failed attempts (the ruling says how they change;
memory only, so a restarted operator starts every replica's backoff afresh), the problem of a spec
generation whose pod the API server refused, the last Warning posted (posted once, not at every
reconcile), and when each replica's creates began to meet 409. A 409 usually means the cache is
behind (the pod's watch event is close); one that persists for ``NAME_TAKEN_AFTER`` seconds means
another pod has the replica's name, and so does a ruling's ``name_taken``: the replica gets a
``NameTaken`` failure (``ReplicaFailure`` says which pod, and what to do) and waits the failure
backoff, never a hot loop. Runs in a worker thread: the Kubernetes client is synchronous.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor

from neuronplace.operator import inference_metrics as im
from neuronplace.operator import metrics as mx
from neuronplace.operator.cache import Cache
from neuronplace.operator.keys import Key
from neuronplace.operator.settings import OperatorSettings
from neuronplace.operator.writes import CONFLICT_RETRY, Permanent, Temporary, Writer
from neuronplace.placement import capacity_requests as cp
from neuronplace.placement import events as ev
from neuronplace.placement import failures as fl
from neuronplace.placement import status as st
from neuronplace.placement.capacity_upkeep import RequestKey, to_create_now, waiting_states
from neuronplace.placement.claims import controller_inference
from neuronplace.placement.creation import Answer, Judgement, judge
from neuronplace.placement.moves import MOVED
from neuronplace.placement.names import (
    AWS_NEURON_IDS,
    CLAIM_ANNOTATION_MISMATCH,
    CORES_ANNOTATION,
    ENV_NODE_CORES,
    REASON_CAPACITY_REQUESTED,
)
from neuronplace.placement.pods import pod_name
from neuronplace.placement.replica_pods import OUTDATED, SURPLUS, Deletion
from neuronplace.placement.request_limits import recent
from neuronplace.placement.resource_claims import allocated_node
from neuronplace.placement.ruling import Creation, Ruling, binding_of

log = logging.getLogger("neuronplace.operator")

# Seconds a replica's creates may meet 409 before the pod with its name is taken for someone else's:
# long enough for the watch event of a pod the operator did create to arrive, even under load.
NAME_TAKEN_AFTER = 5.0


class Reconciler:
    """Carries out rulings for one inference at a time (several threads at once)."""

    def __init__(self, settings: OperatorSettings, cache: Cache, writer: Writer, api_pool: Executor) -> None:
        self.settings = settings
        self.rules = settings.rules()
        self.cache = cache
        self.writer = writer
        self.api_pool = api_pool  # pod creates fan out here
        self.refused: dict[Key, tuple[int | None, st.Problem]] = {}
        self.reported: dict[Key, str] = {}
        self.history: dict[Key, dict[int, fl.ReplicaHistory]] = {}
        # Capacity requests (:mod:`neuronplace.placement.request_limits`): the nodes they avoid, and
        # when each replica's were made (Unix seconds, those of the last window only).
        self.excluded: dict[Key, frozenset[str]] = {}
        self.requests_made: dict[Key, dict[int, tuple[float, ...]]] = {}
        self.conflicts: dict[Key, dict[int, dt.datetime]] = {}  # replica → when its creates began to meet 409
        self.mismatched: dict[Key, set[str]] = {}  # replica pods reported with a CoresMismatch Warning
        self.missing = im.MissingReplicas()  # since when replicas lack a pod (time-to-place histogram)

    def forget(self, key: Key) -> None:
        """The inference is gone: what was remembered about it must not apply to a new one of its name."""
        self.refused.pop(key, None)
        self.reported.pop(key, None)
        self.history.pop(key, None)
        self.excluded.pop(key, None)
        self.requests_made.pop(key, None)
        self.conflicts.pop(key, None)
        self.mismatched.pop(key, None)
        self.missing.forget(key)
        mx.METRICS.inference_gone(key)

    def reconcile(self, key: Key) -> float | None:
        """Bring one inference's pods and status in line with its spec; returns a requeue delay."""
        now = dt.datetime.now(dt.UTC)
        ruled = self.cache.rule(
            key,
            self.rules,
            now,
            self.history.get(key) or {},
            self.refused.get(key),
            self.excluded.get(key, frozenset()),
            self.requests_made.get(key),
        )
        if ruled is None:
            return None
        inference, ruling = ruled
        return self._carry_out(key, inference, ruling, now)

    def _carry_out(self, key: Key, inference: dict, ruling: Ruling, now: dt.datetime) -> float | None:
        mx.METRICS.scheduler_silent(key, ruling.unheard)
        if ruling.excluded:
            self.excluded[key] = ruling.excluded
        else:
            self.excluded.pop(key, None)
        self._report_mismatches(key, inference)
        unplaced = [c.placement.replica for c in ruling.creations] + [r for r, _ in ruling.unplaceable]
        self.missing.missing(key, [*unplaced, *ruling.waiting], time.monotonic())
        if ruling.refusal is not None:
            mx.METRICS.failed(ruling.refusal.reason)
            self._delete_requests(ruling.request_deletions)
            self._write_status(inference, ruling.refusal, now, announce=True)
            return None
        try:
            self._before_creates(key, inference, ruling)
        except BaseException:
            # The ruling reserved its replicas' cores: none of their pods will be created now.
            replicas = [c.placement.replica for c in ruling.creations]
            self.cache.settle(key, replicas)
            self.cache.release(key, replicas)
            raise

        problem, retry = ruling.problem, ruling.requeue_after
        taken = list(ruling.name_taken)
        if ruling.creations or ruling.unplaceable:
            judgement, conflicted = self._create_all(key, inference, ruling, now)
            taken += conflicted
            problem = judgement.problem
            if judgement.retry is not None:
                retry = judgement.retry if retry is None else min(retry, judgement.retry)
        if taken:
            wait = self._names_taken(key, inference, taken, now)
            retry = wait if retry is None else min(retry, wait)

        self._sweep_resource_claims(key)
        self._delete_requests(ruling.request_deletions)
        requests, settle_retry = to_create_now(
            ruling.request_creations, self.cache.settling(), self.rules.capacity_settle_seconds
        )
        if settle_retry is not None:
            retry = settle_retry if retry is None else min(retry, settle_retry)
        refused = dict(ruling.held)  # replicas whose request the rate bound holds back, and why
        for replica, pod in requests.items():
            error = self._create_request(pod)
            if error is not None:
                refused[replica] = error
        # A refused create counts against the rate bound like one that succeeded: a namespace being
        # deleted (403) or a quota refuses every try, and the tries must not come back at once.
        self._remember_requests(key, requests, now)
        waiting_for_capacity = None
        if ruling.waiting:
            states = waiting_states(key[1], ruling.waiting, ruling.assigned, self.cache.requests_of(key), refused)
            waiting_for_capacity = st.Problem(REASON_CAPACITY_REQUESTED, cp.describe(states))
        self._write_status(
            inference,
            problem,
            now,
            waiting_for_capacity,
            ruling.silence,
            waiting=len(ruling.waiting),
            unhealthy=ruling.health,
        )
        return retry

    def _before_creates(self, key: Key, inference: dict, ruling: Ruling) -> None:
        """Histories, failure Events, pod deletions and kube-scheduler's silence."""
        histories = self.history.setdefault(key, {})
        for ordinal, history in ruling.history.items():
            if history is None:
                histories.pop(ordinal, None)
            else:
                histories[ordinal] = history
        for failure in ruling.failures:
            where = f" on {failure.node}" if failure.node else ""
            self.writer.post_event(
                inference, failure.reason, f"replica {failure.replica}{where}: {failure.message}", ev.WARNING
            )
        for deletion in ruling.deletions:
            self._delete_pod(inference, deletion)
        if ruling.silence is not None:
            self._event_once(inference, ruling.silence.reason, ruling.silence.message)

    # ---- creating ------------------------------------------------------------------------------

    def _create_all(self, key: Key, inference: dict, ruling: Ruling, now: dt.datetime) -> tuple[Judgement, list[int]]:
        """Make room, create the ruling's pods, and act on what the API server answered; also
        returns the replicas whose creates have met 409 for ``NAME_TAKEN_AFTER`` seconds."""
        if ruling.problem is not None:
            mx.METRICS.failed(ruling.problem.reason, len(ruling.unplaceable))
        for namespace, name in ruling.make_room:
            try:
                self._delete_request(namespace, name)
            except Temporary as error:
                # The replicas are reserved already and must still be created (or given back);
                # kube-scheduler preempts a request left in the way (it has a lower priority).
                log.warning("capacity request %s/%s not deleted: %s", namespace, name, error)
        try:
            errors = list(self.api_pool.map(lambda creation: self._try_create(key[0], creation), ruling.creations))
        finally:
            self.cache.settle(key, [c.placement.replica for c in ruling.creations])
        answers = [_answer(c.placement.replica, error) for c, error in zip(ruling.creations, errors)]
        conflicts = self.conflicts.setdefault(key, {})
        conflicted = []
        for answer in answers:
            if answer.status != 409:
                conflicts.pop(answer.replica, None)
            elif (now - conflicts.setdefault(answer.replica, now)).total_seconds() >= NAME_TAKEN_AFTER:
                conflicted.append(answer.replica)
        if not conflicts:
            del self.conflicts[key]
        # The reservations a 409 kept go back once the pod with that name is known not to be ours.
        self.cache.release(key, conflicted)
        created = [a.replica for a in answers if not a.failed]
        mx.METRICS.placed(len(created))
        mx.METRICS.missed(self.missing.placed(key, created, time.monotonic()))
        for answer in answers:
            if answer.failed:
                mx.METRICS.failed(mx.failure_reason(answer.status))
        judgement = judge(
            key[1],
            ruling,
            answers,
            conflict_retry=CONFLICT_RETRY,
            forbidden_retry=self.settings.max_backoff_seconds,
        )
        if (
            conflicted
            and judgement.retry == CONFLICT_RETRY
            and conflicted == [a.replica for a in answers if a.status == 409]
        ):
            judgement = dataclasses.replace(judgement, retry=None)  # those 409s wait the failure backoff instead
        self.cache.release(key, judgement.release)
        for event in judgement.events:
            if event.once:
                self._event_once(inference, event.reason, event.message)
            else:
                self.writer.post_event(inference, event.reason, event.message, event.type_)
        if judgement.generation_problem and judgement.problem is not None:
            self.refused[key] = (inference["metadata"].get("generation"), judgement.problem)
        if judgement.all_placed:
            self.reported.pop(key, None)
        if judgement.raise_answer is not None:
            error = errors[judgement.raise_answer]
            assert error is not None
            raise error
        return judgement, conflicted

    def _names_taken(self, key: Key, inference: dict, replicas: list[int], now: dt.datetime) -> float:
        """Count a NameTaken failure for each replica whose name another pod has (a Warning each);
        returns when to look again: the shortest backoff."""
        histories = self.history.setdefault(key, {})
        inference_name = f"{key[0]}/{key[1]}"
        for replica in replicas:
            failure = fl.name_taken(replica, f"{key[0]}/{pod_name(key[1], replica)}", inference_name)
            histories[replica] = fl.record(histories.get(replica), failure, now, self.rules.failure_backoff)
            self.writer.post_event(inference, failure.reason, f"replica {replica}: {failure.message}", ev.WARNING)
            self.conflicts.get(key, {}).pop(replica, None)
        return min(histories[replica].waiting(now) for replica in replicas)

    def _try_create(self, namespace: str, creation: Creation) -> Exception | None:
        claimed = False  # the replica's ResourceClaim is ours now (made or adopted)
        try:
            if creation.resource_claim is not None:
                self._make_resource_claim(namespace, creation)
                claimed = True
            created = self.writer.create_pod(namespace, creation.pod)
        except Exception as error:  # Temporary, Permanent, or a bug: judged by the caller
            if claimed and getattr(error, "status", None) != 409:
                # No pod will use the claim: it goes (a 409 means the pod exists, and uses it).
                self._delete_resource_claim(namespace, creation.resource_claim["metadata"]["name"])
            return error
        self.cache.created(created)
        return None

    def _make_resource_claim(self, namespace: str, creation: Creation) -> None:
        """Create a DRA replica's ResourceClaim before its pod. One of ours left by an operator that
        stopped before making the pod is adopted when kube-scheduler may still allocate it on the
        chosen node (unallocated, or allocated there), else deleted and the create tried again."""
        claim = creation.resource_claim
        assert claim is not None
        try:
            self.writer.create_resource_claim(namespace, claim)
            return
        except Temporary as error:
            if error.status != 409:
                raise
        name = claim["metadata"]["name"]
        existing = self.writer.read_resource_claim(namespace, name)
        if existing is None:
            raise Temporary(None, f"ResourceClaim {namespace}/{name} was being replaced", CONFLICT_RETRY)
        same_owner = controller_inference(existing) == controller_inference(claim)
        node = allocated_node(existing)
        deleting = bool((existing.get("metadata") or {}).get("deletionTimestamp"))
        if same_owner and not deleting and node in (None, creation.placement.node):
            log.info("adopting ResourceClaim %s/%s for replica %d", namespace, name, creation.placement.replica)
            return
        if same_owner:
            if not deleting:
                self._delete_resource_claim(namespace, name)  # allocated elsewhere: the next try makes it anew
            raise Temporary(None, f"ResourceClaim {namespace}/{name} is being replaced", CONFLICT_RETRY)
        # Someone else's claim has the replica's name: a 409, which turns into NameTaken (and its
        # backoff) when it persists, as for a pod of that name.
        raise Temporary(409, f"ResourceClaim {namespace}/{name} exists and is not this replica's", CONFLICT_RETRY)

    def _delete_resource_claim(self, namespace: str, name: str) -> None:
        try:
            self.writer.delete_resource_claim(namespace, name)
        except (Temporary, Permanent) as error:  # tried again by the next reconcile's orphan sweep
            log.warning("ResourceClaim %s/%s not deleted: %s", namespace, name, error)

    def _sweep_resource_claims(self, key: Key) -> None:
        """Delete the inference's ResourceClaims no replica pod uses (their pod is gone, or an
        operator stopped between creating a claim and its pod): the replica's next pod gets a fresh
        one (or adopts it, if created before this sweep)."""
        for name in self.cache.unused_resource_claims(key):
            log.info("deleting ResourceClaim %s/%s: no replica pod uses it", key[0], name)
            self._delete_resource_claim(key[0], name)

    # ---- capacity requests ---------------------------------------------------------------------

    def _create_request(self, pod: dict) -> str | None:
        """Create one capacity request; None when it exists now, else why not (reported, and tried
        again at the next reconcile)."""
        namespace = pod["metadata"]["namespace"]
        try:
            created = self.writer.create_pod(namespace, pod)
        except Exception as error:  # Temporary, Permanent or a bug: reported, tried again next reconcile
            if getattr(error, "status", None) == 409:
                return None  # made before; its watch event brings it
            log.warning("capacity request %s/%s not created: %s", namespace, pod["metadata"]["name"], error)
            return f"capacity request refused: {getattr(error, 'message', None) or error}"
        self.cache.created(created)
        return None

    def _remember_requests(self, key: Key, made: Iterable[int], now: dt.datetime) -> None:
        """When each replica's capacity requests were tried (``made``: those tried now, created or
        refused), within the rate bound's window."""
        seconds = now.timestamp()
        times = {replica: recent(t, seconds) for replica, t in (self.requests_made.get(key) or {}).items()}
        for replica in made:
            times[replica] = (*times.get(replica, ()), seconds)
        kept = {replica: t for replica, t in times.items() if t}
        if kept:
            self.requests_made[key] = kept
        else:
            self.requests_made.pop(key, None)

    def _delete_requests(self, requests: Iterable[RequestKey]) -> None:
        for namespace, name in requests:
            self._delete_request(namespace, name)

    def _delete_request(self, namespace: str, name: str) -> None:
        # No grace period: the pod runs only a pause container, and kube-scheduler must stop
        # counting its NeuronCores before the replica that replaces it is checked.
        self.writer.delete_pod(namespace, name, force=True)
        self.cache.forget_request(namespace, name)

    # ---- deleting, status, events --------------------------------------------------------------

    def _delete_pod(self, inference: dict, deletion: Deletion) -> None:
        namespace = inference["metadata"]["namespace"]
        gone = not self.writer.delete_pod(namespace, deletion.pod, force=deletion.force)
        if deletion.pod in self.cache.resource_claims_of((namespace, inference["metadata"]["name"])):
            self._delete_resource_claim(namespace, deletion.pod)  # the replica's chips go with it
        if gone:
            return  # already gone
        if deletion.reason == MOVED:
            mx.METRICS.moved(deletion.cause)
        kind = ev.NORMAL if deletion.reason in (SURPLUS, OUTDATED) else ev.WARNING
        self.writer.post_event(inference, deletion.reason, deletion.message, kind)

    def _write_status(
        self,
        inference: dict,
        problem: st.Problem | None,
        now: dt.datetime,
        waiting_for_capacity: st.Problem | None = None,
        not_ready: st.Problem | None = None,
        *,
        announce: bool = False,
        waiting: int = 0,
        unhealthy: st.Problem | None = None,
    ) -> None:
        """Write the status when it differs; ``announce``: post ``problem`` as a Warning then (once).
        ``waiting``: the replicas waiting for a new node (the per-inference gauges)."""
        meta = inference["metadata"]
        key = (meta["namespace"], meta["name"])
        current, pods = self.cache.status_view(key, inference)
        failing = fl.summarize(self.history.get(key) or {}, now)
        wanted = st.build_status(
            current,
            pods,
            problem=problem,
            replica_failure=st.Problem(*failing) if failing else None,
            waiting_for_capacity=waiting_for_capacity,
            not_ready=not_ready,
            binding=binding_of(current, self.rules),
            unhealthy=unhealthy,
            now=st.now_rfc3339(now),
        )
        desired = im.desired_replicas(current)
        self.missing.missing(key, im.missing_replicas(wanted, desired), time.monotonic(), only=True)
        mx.METRICS.inference_observed(key, im.inference_view(wanted, desired, waiting))
        if not st.status_differs(current.get("status"), wanted):
            return
        if announce and problem is not None:
            self._event_once(current, problem.reason, problem.message)
        self.writer.patch_status(meta["namespace"], meta["name"], wanted)

    def _report_mismatches(self, key: Key, inference: dict) -> None:
        """A Warning for each replica pod whose annotations or label newly disagree with its spec."""
        now = set(self.cache.replica_mismatches(key))
        for pod in sorted(now - self.mismatched.get(key, set())):
            message = (
                f"pod {pod}: its {CORES_ANNOTATION} or {AWS_NEURON_IDS} annotation (or its inference label) no "
                f"longer says what its spec ({ENV_NODE_CORES}) says; it holds every core either names until it is "
                "gone. Someone edited it: put them back, or delete the pod to re-place the replica"
            )
            self.writer.post_event(inference, CLAIM_ANNOTATION_MISMATCH, message, ev.WARNING)
        if now:
            self.mismatched[key] = now
        else:
            self.mismatched.pop(key, None)

    def _event_once(self, inference: Mapping, reason: str, message: str) -> None:
        """A Warning event, unless the same message was the last one posted for this inference."""
        meta = inference["metadata"]
        key = (meta["namespace"], meta["name"])
        if self.reported.get(key) != message:
            self.reported[key] = message
            self.writer.post_event(inference, reason, message, ev.WARNING)


def _answer(replica: int, error: Exception | None) -> Answer:
    """The API server's answer to one create, as :func:`judge` reads it."""
    if error is None:
        return Answer(replica)
    if isinstance(error, (Temporary, Permanent)):
        return Answer(replica, True, error.status, error.message, isinstance(error, Permanent))
    return Answer(replica, True, None, str(error))
