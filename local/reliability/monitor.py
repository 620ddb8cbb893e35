"""The safety invariants checked at every watch event, for the whole run, not only once things settle.

:func:`~neuronplace.local.reliability.invariants.wait_converged` polls until a snapshot is clean and forgets what it
saw on the way: two pods holding one core for thirty seconds and then one of them gone reads as
"no violation". :class:`InvariantMonitor` closes that gap. It follows three real watches against
the API server (pods of every namespace, nodes, NeuronInferences; one thread each, streaming the
watch's JSON lines, listing again after an error or a 410), keeps the latest object of each, and
after every event re-checks what that event can change:

- ``exclusive-cores`` on the event's node (a pod event: its node, before and after; a node event:
  that node): no core held by two live pods, terminating and foreign pods included, and no more
  cores held than the node has (:func:`~neuronplace.local.reliability.invariants.check_exclusive_cores` on that node).
  Cores are given when a pod's containers start: the monitor keeps each pod's annotations as they
  were at the first event that shows it started, and checks it by those from then on (an edit
  after that changes nothing on the node; one before it is what the device plugin reads);
- ``node-resources`` on the same node: what its live pods request (cpu, memory and the rest, one
  pod slot each) stays within its allocatable (:func:`~neuronplace.local.reliability.invariants.check_node_resources`);
- ``pod-consistency`` of a live managed pod in scope: annotation = ``NEURON_RT_VISIBLE_CORES`` =
  requests = ``AWS_NEURON_IDS`` (:func:`~neuronplace.local.reliability.invariants.check_pod`);
- ``pod-namespace``: a pod controlled by a NeuronInference lives in that resource's namespace
  (:func:`~neuronplace.local.reliability.invariants.check_pod_namespace`).

A violation that appears is counted once (its invariant, subject and detail), with the wall-clock
and monotonic time it was first seen; when a later event clears it, how long it lasted is kept. The
first ``keep`` are kept whole. Convergence (every invariant, status included, once things settle)
stays :func:`~neuronplace.local.reliability.invariants.wait_converged`'s figure; this one is "violations at any moment".

What it cannot see: a state that exists between two events of different watches (each watch is
ordered, the three are not with each other), and anything while the API server is down (it lists
again afterwards and checks everything; ``watch_errors`` counts the failed calls of those gaps).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from neuronplace.local.reliability import invariants as inv
from neuronplace.placement.names import GROUP, PLURAL, VERSION

WATCH_SECONDS = 30  # the server ends each watch after this long; the loop opens the next one


@dataclass
class Seen:
    """One violation as the monitor saw it."""

    violation: inv.Violation
    wall: float  # time.time() when first seen
    at: float  # time.monotonic() when first seen
    event: int  # the number of the event that revealed it
    lasted: float | None = None  # seconds until an event cleared it; None while it persists

    def __str__(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.gmtime(self.wall)) + f".{int(self.wall * 1000) % 1000:03d} UTC"
        lasted = "still present at the end" if self.lasted is None else f"lasted {self.lasted:.2f} s"
        return f"{stamp} (event {self.event}, {lasted}) {self.violation}"


@dataclass
class MonitorReport:
    events: int = 0
    events_by_kind: dict[str, int] = field(default_factory=dict)
    violations: int = 0  # violations that appeared, each counted once
    first: list[Seen] = field(default_factory=list)
    watch_errors: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.events_by_kind.items()))
        return (
            f"{self.events} events checked ({kinds}) over {self.seconds:.0f} s, "
            f"violations at any moment: {self.violations}, failed watch/list calls: {self.watch_errors}"
        )


def _key(obj: Mapping) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


class InvariantMonitor:
    """Follows pods, nodes and NeuronInferences from ``start()`` to ``stop()`` and checks the safety
    invariants at every event.

    ``namespaces`` limits ``pod-consistency`` to those namespaces' pods (core exclusivity counts every
    pod); ``node_selector`` (a label selector) limits the nodes watched, and so where exclusivity is
    checked. ``api_factory`` returns a fresh ``kubernetes.client.ApiClient``; the monitor closes it.
    """

    def __init__(
        self,
        api_factory: Callable[[], Any],
        *,
        namespaces: Sequence[str] | None = None,
        node_selector: str = "",
        keep: int = 10,
    ) -> None:
        self._api_factory = api_factory
        self.namespaces = tuple(namespaces) if namespaces is not None else None
        self.node_selector = node_selector
        self.keep = keep
        self.report = MonitorReport()
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], dict] = {}
        self._pods_on: dict[str, set[tuple[str, str]]] = {}
        self._given: dict[tuple[str, str], dict] = {}  # pod → its annotations when it started
        self._nodes: dict[str, dict] = {}
        self._inference_ns: dict[str, str] = {}  # uid -> namespace
        self._active: dict[tuple, dict[tuple[str, str, str], Seen]] = {}  # scope -> violations there now
        self._stopping = threading.Event()
        self._synced: dict[str, threading.Event] = {}
        self._responses: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []
        self._api = None
        self._started = 0.0

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> InvariantMonitor:
        """Start the watches; returns once each has listed its objects (so the run is covered from here)."""
        from kubernetes import client as k8s

        self._api = self._api_factory()
        core = k8s.CoreV1Api(self._api)
        custom = k8s.CustomObjectsApi(self._api)
        sources = {
            "pods": core.list_pod_for_all_namespaces,
            "nodes": lambda **kw: core.list_node(label_selector=self.node_selector or None, **kw),
            "inferences": lambda **kw: custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kw),
        }
        self._started = time.monotonic()
        for kind, source in sources.items():
            self._synced[kind] = threading.Event()
            thread = threading.Thread(target=self._follow, args=(kind, source), daemon=True, name=f"monitor-{kind}")
            self._threads.append(thread)
            thread.start()
        deadline = time.monotonic() + timeout
        for kind, synced in self._synced.items():
            if not synced.wait(max(0.0, deadline - time.monotonic())):
                self.stop()
                raise TimeoutError(f"invariant monitor: the {kind} list did not answer in {timeout:.0f} s")
        return self

    def stop(self) -> MonitorReport:
        """Stop the watches (unblocking any read in progress) and return the report."""
        self._stopping.set()
        for response in list(self._responses.values()):
            try:
                response.shutdown()  # unblocks a thread waiting for the next event
            except Exception:  # already closed by its thread
                pass
        for thread in self._threads:
            thread.join(timeout=10)
        if self._api is not None:
            self._api.close()
            self._api = None
        self.report.seconds = time.monotonic() - self._started if self._started else 0.0
        return self.report

    def __enter__(self) -> InvariantMonitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- what has been seen ------------------------------------------------------------------

    @property
    def violations(self) -> int:
        return self.report.violations

    def active(self) -> list[inv.Violation]:
        """The violations present now (not yet cleared by a later event)."""
        with self._lock:
            return [seen.violation for scope in self._active.values() for seen in scope.values()]

    def wait_events(self, count: int, timeout: float = 30) -> None:
        """Wait until at least ``count`` events have been checked in all (for tests)."""
        deadline = time.monotonic() + timeout
        while self.report.events < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"invariant monitor: {self.report.events} of {count} events after {timeout} s")
            time.sleep(0.05)  # the poll interval: what is awaited is the event count

    # ---- the watches -------------------------------------------------------------------------

    def _follow(self, kind: str, source: Callable[..., Any]) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        version = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    response = source(_preload_content=False, _request_timeout=(5, 60))
                    try:
                        listed = json.loads(response.data)
                    finally:
                        response.release_conn()
                    version = listed["metadata"]["resourceVersion"]
                    self._replace(kind, listed.get("items") or [])
                    self._synced[kind].set()
                response = source(
                    watch=True,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_SECONDS,
                    _preload_content=False,
                    _request_timeout=(5, WATCH_SECONDS + 15),
                )
                self._responses[kind] = response
                try:
                    if self._stopping.is_set():  # stop() came before this watch was registered
                        return
                    for line in iter_resp_lines(response):
                        if self._stopping.is_set():
                            break
                        if not line:
                            continue
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":  # 410 Gone and friends: list again
                            version = None
                            break
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if event.get("type") != "BOOKMARK":
                            self._apply(kind, event.get("type"), obj)
                finally:
                    self._responses.pop(kind, None)
                    if self._stopping.is_set():
                        response.close()  # the socket goes now, not when the pool is cleared
                    response.release_conn()
            except Exception as error:  # the API server may be restarting; list again
                if self._stopping.is_set():
                    return
                self.report.watch_errors += 1
                if len(self.report.errors) < 10:
                    self.report.errors.append(f"{kind}: {type(error).__name__}: {error}"[:300])
                version = None
                self._stopping.wait(0.5)

    # ---- state and checks ----------------------------------------------------------------------

    def _replace(self, kind: str, items: Iterable[dict]) -> None:
        """A fresh list: replace that kind's state and check everything again."""
        with self._lock:
            if kind == "pods":
                self._pods, self._pods_on = {}, {}
                keep = {_key(pod) for pod in items}
                self._given = {key: given for key, given in self._given.items() if key in keep}
                for pod in items:
                    self._put_pod(pod)
            elif kind == "nodes":
                self._nodes = {(n.get("metadata") or {}).get("name"): n for n in items}
            else:
                self._inference_ns = {
                    (i.get("metadata") or {}).get("uid"): (i.get("metadata") or {}).get("namespace") for i in items
                }
            self._count(kind)
            for node in set(self._nodes) | set(self._pods_on):
                self._check_node(node)
            for key in list(self._pods):
                self._check_pod(key)
            for scope in [s for s in self._active if s[0] == "pod" and s[1] not in self._pods]:
                self._settle(scope, [])

    def _put_pod(self, pod: dict) -> str | None:
        key = _key(pod)
        old = self._pods.get(key)
        old_node = inv.pod_node(old or {})
        if old_node:
            self._pods_on.get(old_node, set()).discard(key)
        self._pods[key] = pod
        if key not in self._given and inv.started(pod):
            self._given[key] = dict((pod.get("metadata") or {}).get("annotations") or {})
        node = inv.pod_node(pod)
        if node:
            self._pods_on.setdefault(node, set()).add(key)
        return old_node if old_node != node else None

    def _apply(self, kind: str, kind_of_event: str | None, obj: dict) -> None:
        with self._lock:
            self._count(kind)
            if kind == "pods":
                key = _key(obj)
                if kind_of_event == "DELETED":
                    old = self._pods.pop(key, None)
                    self._given.pop(key, None)
                    node = inv.pod_node(old or {})
                    if node:
                        self._pods_on.get(node, set()).discard(key)
                        self._check_node(node)
                    self._settle(("pod", key), [])
                    return
                moved_from = self._put_pod(obj)
                if moved_from:
                    self._check_node(moved_from)
                node = inv.pod_node(obj)
                if node:
                    self._check_node(node)
                self._check_pod(key)
            elif kind == "nodes":
                name = (obj.get("metadata") or {}).get("name")
                if kind_of_event == "DELETED":
                    self._nodes.pop(name, None)
                else:
                    self._nodes[name] = obj
                self._check_node(name)
            else:
                meta = obj.get("metadata") or {}
                if kind_of_event == "DELETED":
                    self._inference_ns.pop(meta.get("uid"), None)
                    return
                if self._inference_ns.get(meta.get("uid")) == meta.get("namespace"):
                    return  # nothing a pod-namespace check reads has changed
                self._inference_ns[meta.get("uid")] = meta.get("namespace")
                for key, pod in self._pods.items():
                    if (inv.controller_of(pod) or {}).get("uid") == meta.get("uid"):
                        self._check_pod(key)

    def _count(self, kind: str) -> None:
        self.report.events += 1
        self.report.events_by_kind[kind] = self.report.events_by_kind.get(kind, 0) + 1

    def _check_node(self, name: str) -> None:
        node = self._nodes.get(name)
        # In a fixed order, so that a violation reads the same at every check (it is counted once).
        keys = sorted(self._pods_on.get(name, ()))
        pods = [self._pods[k] for k in keys]
        given = {inv._ref(self._pods[k]): self._given[k] for k in keys if k in self._given}
        found = []
        if node is not None:
            snapshot = inv.Snapshot(pods, [node], [], given=given)
            found = inv.check_exclusive_cores(snapshot) + inv.check_node_resources(snapshot)
        self._settle(("node", name), found)

    def _check_pod(self, key: tuple[str, str]) -> None:
        pod = self._pods.get(key)
        found: list[inv.Violation] = []
        if pod is not None and key in self._given:  # what its process got, not what was edited since
            pod = {**pod, "metadata": {**(pod.get("metadata") or {}), "annotations": self._given[key]}}
        if pod is not None and (self.namespaces is None or key[0] in self.namespaces):
            if inv.is_replica(pod) and inv.is_live(pod):
                found += inv.check_pod(pod, self._nodes)
            found += inv.check_pod_namespace(pod, self._inference_ns)
        self._settle(("pod", key), found)

    def _settle(self, scope: tuple, found: list[inv.Violation]) -> None:
        """Record what is new in ``scope``; close what an event cleared."""
        now_wall, now = time.time(), time.monotonic()
        before = self._active.get(scope, {})
        after: dict[tuple[str, str, str], Seen] = {}
        for violation in found:
            key = (violation.invariant, violation.subject, violation.detail)
            if key in before:
                after[key] = before[key]
                continue
            seen = Seen(violation, now_wall, now, self.report.events)
            after[key] = seen
            self.report.violations += 1
            if len(self.report.first) < self.keep:
                self.report.first.append(seen)
        for key, seen in before.items():
            if key not in after:
                seen.lasted = now - seen.at
        if after:
            self._active[scope] = after
        else:
            self._active.pop(scope, None)


def monitor_for(kubeconfig: str, **kwargs) -> InvariantMonitor:
    """A monitor whose API client is built from a kubeconfig file (with room for its three watches)."""

    def factory():
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = 8
        return client.ApiClient(configuration)

    return InvariantMonitor(factory, **kwargs)
