"""Leader election on a ``coordination.k8s.io/v1`` Lease, and the fence every write passes.

kopf has no Lease support (its peering is another mechanism), so this is the operator's own,
modelled on client-go's: one thread per process reads the Lease every retry period and creates,
takes or renews it as :func:`.election.decide` says, with the Lease's ``resourceVersion`` on every
update so that two candidates racing for it cannot both win (the loser gets 409 and stays a
follower). The thread has its own API client, so renewals never wait behind the controller's calls.

The fence (:meth:`Elector.writing`): every write to the cluster goes through it. A leader whose
last successful renew began more than the renew deadline ago (monotonic clock: it also advances
while the process is stopped with SIGSTOP) writes nothing more and exits with
:data:`LOST_EXIT_CODE`, to restart as a follower; the renew thread exits the same way when it finds
the deadline passed or the Lease held by another. Exiting, not stepping down, is what
controller-runtime does: a process that led has state (reservations, queued work) that only a fresh
start rebuilds from the cluster.

On SIGTERM (:meth:`Elector.release`) the leader refuses new writes, waits for those in flight, and
clears ``holderIdentity``, so a follower takes over at its next retry instead of a lease later.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes.client.rest import ApiException

from neuronplace.operator import election as el
from neuronplace.operator import metrics as mx
from neuronplace.operator.settings import OperatorSettings
from neuronplace.operator.writes import Temporary

log = logging.getLogger("neuronplace.operator")

LOST_EXIT_CODE = 3  # the process's exit status when it lost the Lease while leading
RESOURCE = "leases"
# How long a release waits for the writes in flight before giving up on releasing (the Lease then
# expires on its own: slower, never unsafe).
DRAIN_SECONDS = 5.0


def identity(settings: OperatorSettings) -> str:
    """This candidate's name in the Lease: the pod's name, else ``<hostname>_<pid>``."""
    return settings.pod_name or f"{socket.gethostname()}_{os.getpid()}"


def manager(settings: OperatorSettings) -> str:
    """The user agent of this process's API clients: the API server names the writer of every
    object it changes by it (``managedFields[].manager``), so each replica's writes are told apart."""
    return f"neuronplace@{identity(settings)}"


class NotLeading(Temporary):
    """A write refused because this process is handing the Lease over (it exits next)."""

    def __init__(self) -> None:
        super().__init__(None, "not the leader (shutting down)", None)


def _microtime(now: dt.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(lease: dict) -> el.Record:
    spec = lease.get("spec") or {}
    return el.Record(
        holder=spec.get("holderIdentity") or "",
        duration=float(spec.get("leaseDurationSeconds") or 0),
        renew_time=spec.get("renewTime") or "",
        transitions=int(spec.get("leaseTransitions") or 0),
    )


class Elector:
    """One candidate for the Lease named by ``settings``, through ``api`` (a ``CoordinationV1Api``)."""

    def __init__(
        self, settings: OperatorSettings, api: Any, on_elected: Callable[[], None], clock=time.monotonic
    ) -> None:
        self.api = api
        self.me = identity(settings)
        self.namespace = settings.lease_namespace()
        self.name = settings.leader_election_id
        self.timings = settings.lease_timings()
        self.on_elected = on_elected  # called once, from the elector's thread
        self.clock = clock
        # Each Lease call is bounded by the retry period, so that a hung call costs one attempt,
        # not the renew deadline (the attempts before the deadline are what rides out a slow answer).
        self.timeout = (self.timings.retry_period, self.timings.retry_period)
        self.attempted = threading.Event()  # the first look at the Lease is done
        self.holder = ""  # who held the Lease when last read
        self.leading = False
        self.renewed_at: float | None = None  # monotonic time the last successful renew began
        self._seen: el.Seen | None = None
        self._stopped = threading.Event()
        self._resigned = False
        self._in_flight = 0
        self._guard = threading.Condition()
        self._attempt = threading.Lock()  # an attempt and a release never interleave
        self._thread = threading.Thread(target=self._run, name="neuronplace-leader", daemon=True)
        mx.METRICS.leading(self.me, False)

    def start(self) -> None:
        self._thread.start()

    # ---- the fence -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around one write: refused (and the process exits) unless this process still leads."""
        with self._guard:
            if self._resigned or not self.leading:
                raise NotLeading()
            self._check(self.clock())
            self._in_flight += 1
        try:
            yield
        finally:
            with self._guard:
                self._in_flight -= 1
                self._guard.notify_all()

    def _check(self, now: float) -> None:
        if self.leading and not el.may_write(self.renewed_at, now, self.timings.renew_deadline):
            self._lost(
                f"no renew for {now - (self.renewed_at or now):.1f} s (deadline {self.timings.renew_deadline} s)"
            )

    def _lost(self, why: str) -> None:
        log.critical("leader election lost (%s): writing nothing more, exiting to restart as a follower", why)
        logging.shutdown()
        os._exit(LOST_EXIT_CODE)

    # ---- the Lease -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self.attempt()
            except Exception as error:  # the API may be down: the next retry tries again
                log.warning("leader election: cannot read or write Lease %s/%s: %s", self.namespace, self.name, error)
            self.attempted.set()
            if self._stopped.wait(self.timings.retry_period):
                return

    def attempt(self) -> None:
        """One look at the Lease: create, take or renew it as :func:`.election.decide` says."""
        with self._attempt:
            if self._stopped.is_set():
                return
            started = self.clock()
            self._check(started)  # a leader that woke up late stops here, before any request
            lease = self._read()
            record = None if lease is None else _record(lease)
            action, self._seen = el.decide(record, self.me, self._seen, started)
            self.holder = "" if record is None else record.holder
            if action == el.WAIT:
                if self.leading:
                    self._lost(f"Lease held by {record.holder}")
                return
            if not self._claim(action, lease, record):
                return  # another candidate wrote it first (409): read again at the next retry
            with self._guard:
                self.renewed_at = started
            self.holder = self.me
            if not self.leading:
                self.leading = True
                mx.METRICS.leading(self.me, True)
                log.info("leader election: %s leads (Lease %s/%s)", self.me, self.namespace, self.name)
                self.on_elected()

    def _read(self) -> dict | None:
        try:
            response = self.api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.timeout, _preload_content=False
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return json.loads(response.data)

    def _claim(self, action: str, lease: dict | None, record: el.Record | None) -> bool:
        """Write the Lease as held by this candidate; False when another write came first."""
        now = _microtime(dt.datetime.now(dt.UTC))
        spec = {
            "holderIdentity": self.me,
            "leaseDurationSeconds": math.ceil(self.timings.lease_duration),
            "renewTime": now,
            "acquireTime": now,
            "leaseTransitions": 0,
        }
        if record is not None:
            ours = self.leading or record.holder == self.me
            spec["acquireTime"] = (lease.get("spec") or {}).get("acquireTime") if ours else now
            spec["leaseTransitions"] = record.transitions + (0 if ours else 1)
        return self._write(action, lease, spec)

    def _write(self, action: str, lease: dict | None, spec: dict) -> bool:
        metadata = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]  # optimistic concurrency
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}
        try:
            if lease is None:
                mx.METRICS.wrote("create", RESOURCE)
                self.api.create_namespaced_lease(self.namespace, body, _request_timeout=self.timeout)
            else:
                mx.METRICS.wrote("update", RESOURCE)
                self.api.replace_namespaced_lease(self.name, self.namespace, body, _request_timeout=self.timeout)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    # ---- handing over --------------------------------------------------------------------------

    def release(self) -> None:
        """Stop the renewals; a leader refuses new writes, waits for those in flight (at most
        :data:`DRAIN_SECONDS`) and clears the Lease so a follower takes it at its next retry."""
        self._stopped.set()
        with self._guard:
            self._resigned = True
            drained = self._guard.wait_for(lambda: self._in_flight == 0, DRAIN_SECONDS)
        with self._attempt:
            if not self.leading:
                return
            if not drained:
                log.warning("leader election: writes still in flight; the Lease is left to expire")
                return
            try:
                lease = self._read()
                if lease is None or _record(lease).holder != self.me:
                    return
                spec = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1}
                spec["renewTime"] = _microtime(dt.datetime.now(dt.UTC))
                if self._write(el.TAKE, lease, spec):
                    log.info("leader election: %s released Lease %s/%s", self.me, self.namespace, self.name)
            except Exception as error:  # the Lease then expires on its own
                log.warning("leader election: could not release the Lease: %s", error)
            mx.METRICS.leading(self.me, False)

    def probe(self) -> dict:
        """What kopf's health endpoint reports under the probe id ``leader``."""
        return {"identity": self.me, "leading": self.leading, "holder": self.holder}


def describe(lease: dict | None, namespace: str, name: str) -> str:
    """One line for the CLI: who holds the Lease ``namespace/name`` (``lease`` as read; None: absent)."""
    where = f"Lease {namespace}/{name}"
    if lease is None:
        return f"leader: none ({where} does not exist: no operator with leader election has run)"
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    if not holder:
        return f"leader: none ({where} released at {spec.get('renewTime', '?')})"
    return f"leader: {holder} ({where}, renewed {spec.get('renewTime', '?')}, every {spec.get('leaseDurationSeconds', '?')} s at most)"
