"""Prometheus metrics of the operator, and the pure computation behind its ledger gauges.

kopf exposes no metrics of its own (only a liveness endpoint), so the operator exposes these, all
on one registry served over HTTP (``/metrics``) when ``OperatorSettings.metrics_port`` is set:

- ``neuronplace_placements_total``: replicas placed (a pod created, bound, with its core range).
- ``neuronplace_placement_failures_total{reason}``: replicas the operator tried to place and could
  not, by reason: ``Unschedulable`` (no room, or a volume claim to wait for; the explanation is in
  the inference's ``Placed`` condition), ``VolumeNeedsScheduler`` (a claim only kube-scheduler can
  bind, under Direct binding), ``DRANeedsScheduler`` (a replica for DRA nodes only, under Direct
  binding: only kube-scheduler allocates ResourceClaims), ``PodRejected`` (the API server refused the pod), ``PodForbidden``
  (quota, RBAC, terminating namespace), ``Throttled`` (429), ``Conflict`` (409), ``ApiError``
  (anything else). A replica waiting for room is counted again on every attempt, so the rate shows
  how often placement fails, not how many replicas wait (that is in the inferences' status).
- ``neuronplace_scheduler_silent_pods``: replica pods pinned to their node (Scheduler binding)
  that kube-scheduler has given no verdict at all for longer than the operator waits for one
  (``SchedulerNotResponding`` in the inference's Ready condition); above zero, kube-scheduler is
  stopped or wedged and binds nothing.
- ``neuronplace_reconcile_duration_seconds``: histogram of one reconcile's wall time (read caches,
  decide, place, create/delete pods, write status), failed reconciles included.
- ``neuronplace_node_free_cores{node}``: NeuronCores nobody holds, per managed node.
- ``neuronplace_ledger_pods{kind}``: pods holding cores in the ledger, ``managed`` (ours) or
  ``foreign`` (someone else's pods, accounted for conservatively).
- ``neuronplace_node_inconsistent_claims{node,reason}``: pods on a managed node whose NeuronCore
  claims do not add up, by reason: ``NotOwned`` (our inference label, but no known NeuronInference
  controls the pod), ``CoresMismatch`` (a replica whose annotations or label disagree with its
  spec's ``NEURONPLACE_NODE_CORES``: it holds both; or a pod of a known NeuronInference whose spec
  names no cores), ``NeuronIdsMismatch`` (``AWS_NEURON_IDS`` lists more or fewer ids than it
  requests), ``Overlap`` (its cores are listed by another pod too), ``SchedulingGated`` and
  ``ExceedsNode`` (a foreign pod pinned to the node that kube-scheduler will not bind there: it
  holds nothing). Other pods hold at least what they request; a series exists only while its count
  is above zero.
- ``neuronplace_node_largest_free_aligned_run_cores{node}``: the most NeuronCores one replica with
  ``alignedStart`` could get on a managed node now (:func:`~neuronplace.placement.fitting.largest_aligned_fit`:
  a free run at an aligned start within the chip rules); a replica asking more fits there only after
  something is freed, however many cores are free in total.
- ``neuronplace_replicas{namespace,name,state}``: a NeuronInference's wanted replicas by state
  (``ready``, ``starting``, ``waiting_for_capacity``, ``pending``), from the status the operator
  last built for it; ``neuronplace_capacity_wait_seconds{namespace,name}``: seconds since its
  ``WaitingForCapacity`` condition turned True (see :mod:`.inference_metrics`).
- ``neuronplace_time_to_place_seconds``: histogram of how long a replica was missing: from the
  first reconcile that found it without a pod to the API server accepting its pod (created; with
  Scheduler binding kube-scheduler binds it afterwards, which this does not include).
- ``neuronplace_reconciles_total{result}``: reconciles by result: ``success``, ``requeue`` (it
  asked to be looked at again after a delay: waiting, backing off) or ``error`` (it raised; the
  work queue retries it).
- ``neuronplace_build_info{version,python}``: 1, with the operator's package version and Python's.
- ``neuronplace_node_device_management{node,mode}``: 1 per managed node, ``mode`` how its Neuron
  devices are handed out: ``DevicePlugin`` (Neuron allocatable), ``DRA`` (the Neuron DRA driver's
  ResourceSlices name it) or ``Both`` (refused for placement: the two would hand out the same chips).
- ``neuronplace_node_unhealthy{node,reason}``: 1 for each managed node whose Neuron hardware a
  detector reports unhealthy (``placement.health``), by its first detector's reason
  (``NeuronHasError_HBM_UNCORRECTABLE_ERROR``, ``NeuronHBMUncorrectableError``, ...), or
  ``Settling`` while a node healthy again is not used yet; no series for healthy nodes.
- ``neuronplace_replica_moves_total{reason}``: replica pods deleted to move them off an unhealthy
  node (``placement.moves``), by the same reason.
- ``neuronplace_api_writes_total{verb,resource}``: write requests sent to the API server (pods,
  NeuronInference status, Events, the leader-election Lease), whatever the answer; a follower's stay 0.
- ``neuronplace_leader{identity}``: 1 while this process holds the leader-election Lease, else 0.
- the client library's process metrics (``process_resident_memory_bytes``,
  ``process_cpu_seconds_total``, ...) and Python GC metrics.

The ledger gauges are computed when scraped, from the live ledger and node inventory
(:func:`snapshot_ledger`), so they can never drift from what placement sees and a deleted node's
series simply disappears.
"""

from __future__ import annotations

import importlib.metadata
import platform
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from neuronplace.operator.inference_metrics import TIME_TO_PLACE_BUCKETS, InferenceCollector, InferenceView
from neuronplace.placement.fitting import largest_aligned_fit
from neuronplace.placement.health import reason_label
from neuronplace.placement.inventory import BOTH_DEVICE_MANAGERS, NodeInventory
from neuronplace.placement.ledger import Ledger
from neuronplace.placement.names import REASON_POD_FORBIDDEN, REASON_POD_REJECTED
from neuronplace.placement.resource_claims import is_resource_claim_key

# Failure reasons besides the status condition reasons (Unschedulable, PodRejected, InvalidSpec).
FAILURE_FORBIDDEN = REASON_POD_FORBIDDEN
FAILURE_THROTTLED = "Throttled"
FAILURE_CONFLICT = "Conflict"
FAILURE_API_ERROR = "ApiError"

_FAILURE_BY_STATUS = {
    400: REASON_POD_REJECTED,
    422: REASON_POD_REJECTED,
    403: FAILURE_FORBIDDEN,
    409: FAILURE_CONFLICT,
    429: FAILURE_THROTTLED,
}

# neuronplace_reconciles_total{result}
RECONCILE_SUCCESS = "success"
RECONCILE_REQUEUE = "requeue"
RECONCILE_ERROR = "error"

# A reconcile is a few API calls: milliseconds normally, seconds when the API server is slow.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class LedgerSnapshot:
    """What the ledger gauges report at one instant."""

    free_cores: Mapping[str, int]  # managed node → cores nobody holds
    managed_pods: int
    foreign_pods: int
    inconsistent: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (managed node, reason) → pods
    largest_aligned: Mapping[str, int] = field(default_factory=dict)  # managed node → largest aligned fit
    device_management: Mapping[str, str] = field(default_factory=dict)  # managed node → DevicePlugin, DRA or Both
    unhealthy: tuple[tuple[str, str], ...] = ()  # (managed node, reason) of each unhealthy node


def failure_reason(status: int | None) -> str:
    """The ``reason`` label of a pod create that failed with HTTP ``status`` (None: no HTTP answer)."""
    return _FAILURE_BY_STATUS.get(status, FAILURE_API_ERROR)


def free_cores_by_node(ledger: Ledger, inventories: Mapping[str, NodeInventory]) -> dict[str, int]:
    """Free NeuronCores of every managed node: its usable cores minus the ones anyone holds.

    A node that cannot take pods right now (NotReady, cordoned) still reports its free cores: they
    are free, and a dashboard shows the node's problem from its own metrics. Cores held beyond the
    usable count (a foreign pod on a node whose plugin advertises fewer cores) do not make the
    figure negative.
    """
    result = {}
    for name, inventory in inventories.items():
        usable = inventory.cores
        held = (ledger.used_mask(name) & ((1 << usable) - 1)).bit_count()
        result[name] = usable - held
    return result


def largest_aligned_by_node(ledger: Ledger, inventories: Mapping[str, NodeInventory]) -> dict[str, int]:
    """The largest aligned free run of every managed node of known topology (cores nobody holds)."""
    result = {}
    for name, inventory in inventories.items():
        if inventory.topology is not None:
            free = ~ledger.used_mask(name) & ((1 << inventory.cores) - 1)
            result[name] = largest_aligned_fit(free, inventory.cores, inventory.topology)
    return result


def snapshot_ledger(ledger: Ledger, inventories: Mapping[str, NodeInventory]) -> LedgerSnapshot:
    """The values of the ledger gauges (pure; the caller holds whatever lock guards the ledger)."""
    managed = foreign = 0
    for node in ledger.nodes():
        for holding in ledger.holdings(node):
            if is_resource_claim_key(holding.pod):
                continue  # a ResourceClaim, not a pod
            if holding.managed:
                managed += 1
            else:
                foreign += 1
    inconsistent: dict[tuple[str, str], int] = {}
    for found in ledger.inconsistencies():
        if found.node in inventories:
            inconsistent[(found.node, found.reason)] = inconsistent.get((found.node, found.reason), 0) + 1
    unhealthy = tuple(
        sorted((name, reason_label(node)) for name, node in inventories.items() if node.unhealthy is not None)
    )
    modes = {
        name: "Both" if node.problem_kind == BOTH_DEVICE_MANAGERS else "DRA" if node.dra is not None else "DevicePlugin"
        for name, node in inventories.items()
    }
    return LedgerSnapshot(
        free_cores_by_node(ledger, inventories),
        managed,
        foreign,
        inconsistent,
        largest_aligned_by_node(ledger, inventories),
        modes,
        unhealthy,
    )


class _LedgerCollector(Collector):
    """Reads a fresh :class:`LedgerSnapshot` on every scrape."""

    def __init__(self, read: Callable[[], LedgerSnapshot]) -> None:
        self._read = read  # takes whatever lock the ledger needs (``Cache.read_ledger``)

    def collect(self):
        snapshot = self._read()
        free = GaugeMetricFamily(
            "neuronplace_node_free_cores", "NeuronCores nobody holds, per managed node", labels=["node"]
        )
        for node in sorted(snapshot.free_cores):
            free.add_metric([node], snapshot.free_cores[node])
        pods = GaugeMetricFamily(
            "neuronplace_ledger_pods", "Pods holding NeuronCores in the operator's ledger", labels=["kind"]
        )
        pods.add_metric(["managed"], snapshot.managed_pods)
        pods.add_metric(["foreign"], snapshot.foreign_pods)
        inconsistent = GaugeMetricFamily(
            "neuronplace_node_inconsistent_claims",
            "Pods on a managed node whose NeuronCore claims do not add up, by reason",
            labels=["node", "reason"],
        )
        for node, reason in sorted(snapshot.inconsistent):
            inconsistent.add_metric([node, reason], snapshot.inconsistent[(node, reason)])
        largest = GaugeMetricFamily(
            "neuronplace_node_largest_free_aligned_run_cores",
            "Most NeuronCores one replica with alignedStart could get on a managed node now",
            labels=["node"],
        )
        for node in sorted(snapshot.largest_aligned):
            largest.add_metric([node], snapshot.largest_aligned[node])
        modes = GaugeMetricFamily(
            "neuronplace_node_device_management",
            "How each managed node's Neuron devices are handed out (Both: refused for placement)",
            labels=["node", "mode"],
        )
        for node in sorted(snapshot.device_management):
            modes.add_metric([node, snapshot.device_management[node]], 1)
        unhealthy = GaugeMetricFamily(
            "neuronplace_node_unhealthy",
            "Managed nodes whose Neuron hardware a detector reports unhealthy, by reason",
            labels=["node", "reason"],
        )
        for node, reason in snapshot.unhealthy:
            unhealthy.add_metric([node, reason], 1)
        yield free
        yield largest
        yield pods
        yield inconsistent
        yield modes
        yield unhealthy


class OperatorMetrics:
    """The operator's metrics on their own registry (so tests can make as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.placements = Counter(
            "neuronplace_placements", "Replicas placed: pods created with a core range", registry=self.registry
        )
        self.failures = Counter(
            "neuronplace_placement_failures",
            "Attempts to place a replica that failed, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.moves = Counter(
            "neuronplace_replica_moves",
            "Replica pods deleted to move them off nodes with unhealthy Neuron hardware, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "neuronplace_reconcile_duration_seconds",
            "Wall time of one reconcile of a NeuronInference",
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.silent_pods = Gauge(
            "neuronplace_scheduler_silent_pods",
            "Pinned replica pods kube-scheduler has given no verdict on for longer than the operator waits",
            registry=self.registry,
        )
        self.reconciles = Counter(
            "neuronplace_reconciles", "Reconciles of a NeuronInference by result", ["result"], registry=self.registry
        )
        self.time_to_place = Histogram(
            "neuronplace_time_to_place_seconds",
            "Seconds from the first reconcile that found a replica without a pod to its pod's creation",
            buckets=TIME_TO_PLACE_BUCKETS,
            registry=self.registry,
        )
        self.build_info = Gauge(
            "neuronplace_build_info",
            "The operator's version and Python's; always 1",
            ["version", "python"],
            registry=self.registry,
        )
        self.build_info.labels(version=_version(), python=platform.python_version()).set(1)
        self.inferences = InferenceCollector()
        self.registry.register(self.inferences)
        self.api_writes = Counter(
            "neuronplace_api_writes",
            "Write requests this process sent to the API server (a follower sends none), by verb and resource",
            ["verb", "resource"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "neuronplace_leader",
            "1 while this process holds the leader-election Lease (its identity as label), else 0",
            ["identity"],
            registry=self.registry,
        )
        self._silent: dict[tuple[str, str], int] = {}  # per inference (namespace, name)
        self._ledger_collector: _LedgerCollector | None = None
        self._server = None
        self._guard = threading.Lock()

    # ---- hooks the reconciles call -------------------------------------------------------------

    def placed(self, count: int = 1) -> None:
        if count:
            self.placements.inc(count)

    def failed(self, reason: str, count: int = 1) -> None:
        if count:
            self.failures.labels(reason=reason).inc(count)

    def moved(self, reason: str) -> None:
        self.moves.labels(reason=reason).inc()

    def scheduler_silent(self, inference: tuple[str, str], count: int) -> None:
        """``inference`` has ``count`` pinned pods kube-scheduler is silent about (0: none, or gone)."""
        with self._guard:
            if count:
                self._silent[inference] = count
            else:
                self._silent.pop(inference, None)
            self.silent_pods.set(sum(self._silent.values()))

    def missed(self, seconds: Iterable[float]) -> None:
        """Replicas got their pods after being missing for ``seconds`` each."""
        for took in seconds:
            self.time_to_place.observe(took)

    def reconciled(self, result: str) -> None:
        """One reconcile ended with ``result`` (``success``, ``requeue`` or ``error``)."""
        self.reconciles.labels(result=result).inc()

    def inference_observed(self, inference: tuple[str, str], view: InferenceView) -> None:
        self.inferences.observe(inference, view)

    def inference_gone(self, inference: tuple[str, str]) -> None:
        self.inferences.forget(inference)
        self.scheduler_silent(inference, 0)

    def wrote(self, verb: str, resource: str) -> None:
        """One write request is being sent (counted whatever its answer)."""
        self.api_writes.labels(verb=verb, resource=resource).inc()

    def leading(self, identity: str, leads: bool) -> None:
        self.leader.labels(identity=identity).set(1 if leads else 0)

    def time_reconcile(self):
        """Context manager timing one reconcile (also when it raises)."""
        return self.reconcile_seconds.time()

    def watch_ledger(self, read: Callable[[], LedgerSnapshot]) -> None:
        """Report the ledger gauges from ``read()``, called at every scrape."""
        with self._guard:
            if self._ledger_collector is not None:
                self.registry.unregister(self._ledger_collector)
            self._ledger_collector = _LedgerCollector(read)
            self.registry.register(self._ledger_collector)

    # ---- serving -------------------------------------------------------------------------------

    def serve(self, port: int, address: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``address:port`` from a daemon thread; returns the bound port."""
        with self._guard:
            if self._server is not None:
                raise RuntimeError(f"metrics are already served on port {self._server.server_port}")
            self._server, _thread = start_http_server(port, address, registry=self.registry)
            return self._server.server_port

    def stop(self) -> None:
        with self._guard:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None


def _version() -> str:
    try:
        return importlib.metadata.version("neuronplace")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


# The operator process's metrics (its reconciles count into this one).
METRICS = OperatorMetrics()
