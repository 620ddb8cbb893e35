"""What a reliability scenario runs against, shared by pytest (``tests/reliability/conftest.py``) and ``benchmarks/chaos.py``.

A :class:`Harness` is one scenario's world on a running :class:`~neuronplace.local.cluster.LocalCluster`:
its own namespace, its own node pool (label ``neuronplace.io/pool``), and its own operator process
watching only that namespace, with the test bed's short timings
(:data:`~neuronplace.local.operator_process.TEST_TIMINGS`: node grace 5 s, resync 5 s, failure
backoff 2 s ...) so faults resolve quickly. It counts what happens in a :class:`ChaosRecord`: faults
injected, invariant checks, violations, and the seconds from each fault to the first clean check.

From the namespace's creation to the operator's stop, an
:class:`~neuronplace.local.reliability.monitor.InvariantMonitor` checks the safety invariants at every pod, node
(of the pool) and NeuronInference event. What it sees is recorded as "violations at any moment",
apart from convergence; :func:`harness` fails the scenario when it saw any.

The operator runs as :class:`~neuronplace.local.operator_process.OperatorProcess`, the same class
the operator's cluster tests, the demo and the benchmarks use.
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuronplace.local import manifests
from neuronplace.local.fleet import POOL_LABEL
from neuronplace.local.operator_process import BINDING_VARIABLE, OperatorProcess, timing_flags
from neuronplace.local.reliability import invariants as inv
from neuronplace.local.reliability.monitor import InvariantMonitor, MonitorReport, monitor_for

CONVERGE_TIMEOUT = 60


@dataclass
class ChaosRecord:
    """Counts for the chaos table; one record may span many scenarios."""

    scenarios: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)  # the kind of each fault injected
    checks: int = 0
    violations: list[str] = field(default_factory=list)  # what convergence (or a mid-fault check) found
    converge_seconds: list[tuple[str, str, float]] = field(default_factory=list)  # (scenario, fault, seconds)
    # The invariant monitor, summed over scenarios: events checked, violations seen at any moment
    # (each counted once), the first few of them, and failed watch calls (API server down).
    monitor_events: int = 0
    transient: int = 0
    transient_seen: list[str] = field(default_factory=list)
    monitor_watch_errors: int = 0
    per_scenario: dict[str, tuple[int, int]] = field(default_factory=dict)  # scenario -> (events, violations)

    def add_monitor(self, scenario: str, report: MonitorReport, keep: int = 20) -> None:
        self.monitor_events += report.events
        self.transient += report.violations
        self.monitor_watch_errors += report.watch_errors
        self.per_scenario[scenario] = (report.events, report.violations)
        room = max(0, keep - len(self.transient_seen))
        self.transient_seen += [f"{scenario}: {seen}" for seen in report.first[:room]]

    def summary(self) -> dict[str, Any]:
        times = [seconds for _, _, seconds in self.converge_seconds]
        return {
            "scenarios": len(self.scenarios),
            "faults": len(self.faults),
            "checks": self.checks,
            "violations": len(self.violations),
            "monitor_events": self.monitor_events,
            "transient": self.transient,
            "converge_median_s": statistics.median(times) if times else None,
            "converge_max_s": max(times) if times else None,
        }


# Every scenario's replicas run a model and a metrics sidecar (the operator adds per-process containers).
CONTAINERS = ({"name": "model", "image": "model:1"}, {"name": "metrics", "image": "sidecar:1"})


class Harness:
    """One scenario's namespace, node pool, operator and record on a running cluster."""

    def __init__(
        self, cluster, scenario: str, rng: random.Random, record: ChaosRecord, binding: str | None = None
    ) -> None:
        from kubernetes import config as k8s_config

        self.cluster = cluster
        self.scenario = scenario
        self.rng = rng
        self.record = record
        suffix = uuid.uuid4().hex[:6]
        self.namespace = f"rel-{scenario.replace('_', '-')[:40]}-{suffix}"
        self.pool = f"rel-{suffix}"
        self.api = k8s_config.new_client_from_config(config_file=cluster.kubeconfig)
        self.operator = OperatorProcess(
            cluster,
            Path(cluster.logs_dir) / f"operator-{self.namespace}.log",
            extra_args=("--namespace", self.namespace, *timing_flags()),
            # None: the mode in this process's environment (NEURONPLACE_BINDING), else the operator's default.
            env={} if binding is None else {BINDING_VARIABLE: binding},
        )
        self._node_batches = 0
        self.monitor: InvariantMonitor = monitor_for(
            cluster.kubeconfig, namespaces=[self.namespace], node_selector=f"{POOL_LABEL}={self.pool}"
        )
        self.monitor_report: MonitorReport | None = None

    # ---- setup and teardown -------------------------------------------------------------------
    def open(self) -> Harness:
        self.cluster.kubectl("create", "namespace", self.namespace)
        self.monitor.start()
        self.operator.start()
        return self

    def close(self) -> None:
        try:
            self.operator.stop()
        finally:
            try:
                if self.monitor_report is None:
                    self.monitor_report = self.monitor.stop()
                    self.record.add_monitor(self.scenario, self.monitor_report)
            finally:
                self.cluster.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)
                self.cluster.kubectl("delete", "nodes", "-l", f"{POOL_LABEL}={self.pool}", "--wait=false", check=False)

    # ---- the world ----------------------------------------------------------------------------
    def fleet(self, spec: Mapping[str, int] | str, labels: Mapping[str, str] | None = None) -> list[str]:
        """Create kwok nodes in this scenario's pool and wait until they are Ready."""
        prefix = f"{self.pool}-{self._node_batches}-"
        self._node_batches += 1
        return self.cluster.create_nodes(spec, labels={**(labels or {}), POOL_LABEL: self.pool}, prefix=prefix)

    def inference(self, name: str, **kwargs) -> dict:
        return manifests.inference(name, pool=self.pool, containers=CONTAINERS, **kwargs)

    def apply(self, *resources: Mapping) -> None:
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(resources)})
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=body)

    def kubectl(self, *args: str, **kwargs):
        return self.cluster.kubectl(*args, "-n", self.namespace, **kwargs)

    def scale(self, name: str, replicas: int) -> None:
        self.kubectl("scale", "ninf", name, f"--replicas={replicas}")

    def snapshot(self) -> inv.Snapshot:
        return inv.take_snapshot(self.api, [self.namespace])

    def managed_pods(self, snapshot: inv.Snapshot | None = None) -> list[dict]:
        snapshot = snapshot or self.snapshot()
        return [p for p in snapshot.pods if p["metadata"]["namespace"] == self.namespace and inv.is_managed(p)]

    # ---- faults and checks --------------------------------------------------------------------
    def fault(self, what: str) -> float:
        """Count one injected fault of kind ``what``; returns now, the start of its convergence clock (for
        :meth:`converge`). Scenarios call it as the fault is injected; for a control-plane restart,
        once the API server answers again (its own start-up is not the operator's to converge)."""
        self.record.faults.append(what)
        return time.monotonic()

    def converge(
        self,
        fault: str | None = None,
        since: float | None = None,
        timeout: float = CONVERGE_TIMEOUT,
        extra: Callable[[inv.Snapshot], list[inv.Violation]] | None = None,
    ) -> inv.Snapshot:
        """Wait until every invariant holds (plus ``extra``) and the operator is healthy.

        Counts one invariant check. With ``fault`` the seconds from ``since`` (default: now) to the
        first clean snapshot are recorded as that fault's convergence time. On timeout the
        violations are recorded and :class:`~neuronplace.local.reliability.invariants.NotConverged` is raised.
        """
        start = since if since is not None else time.monotonic()
        self.record.checks += 1
        try:
            _, snapshot = inv.wait_converged(self.snapshot, timeout, extra=extra)
        except inv.NotConverged as error:
            self.record.violations.append(f"{self.scenario}: {error}")
            raise
        health = inv.operator_health(self.operator.liveness_url, self.operator.alive())
        if health:
            self.record.violations += [f"{self.scenario}: {v}" for v in health]
            raise inv.NotConverged("; ".join(map(str, health)) + "\n" + self.operator.log_tail(60))
        if fault is not None:
            self.record.converge_seconds.append((self.scenario, fault, time.monotonic() - start))
        return snapshot


@contextlib.contextmanager
def harness(cluster, scenario: str, seed: int, record: ChaosRecord, binding: str | None = None) -> Iterator[Harness]:
    """A ready :class:`Harness` for one scenario, its operator in binding mode ``binding``; torn down
    afterwards in every case."""
    # Each scenario gets its own deterministic stream, whatever ran before it.
    rng = random.Random(f"{seed}:{scenario}")
    world = Harness(cluster, scenario, rng, record, binding)
    record.scenarios.append(scenario)
    try:
        yield world.open()
    finally:
        world.close()
    report = world.monitor_report
    if report is not None and report.violations:
        raise TransientViolations(
            f"{scenario}: the invariant monitor saw {report.violations} violation(s) while the scenario ran "
            f"({report.summary()}):" + "".join(f"\n  {seen}" for seen in report.first)
        )


class TransientViolations(AssertionError):
    """A safety invariant was broken at some moment of a scenario, even if the end state was clean."""


def format_table(record: ChaosRecord, seed: int) -> str:
    s = record.summary()

    def seconds(value):
        return "-" if value is None else f"{value:.2f} s"

    rows = [
        ("seed", str(seed)),
        ("scenarios run", str(s["scenarios"])),
        ("faults injected", str(s["faults"])),
        ("convergence checks", str(s["checks"])),
        ("violations at convergence", str(s["violations"])),
        ("events checked by the monitor", str(s["monitor_events"])),
        ("violations at any moment", str(s["transient"])),
        ("failed watch/list calls of the monitor", str(record.monitor_watch_errors)),
        ("time to converge, median", seconds(s["converge_median_s"])),
        ("time to converge, max", seconds(s["converge_max_s"])),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    by_fault: dict[str, list[float]] = {kind: [] for kind in record.faults}
    for _, fault, secs in record.converge_seconds:
        by_fault.setdefault(fault, []).append(secs)
    if by_fault:
        lines.append("")
        fw = max(len(f) for f in by_fault)
        lines.append(f"{'fault':<{fw}}  {'injected':>8}  {'converged':>9}  {'median':>8}  {'max':>8}")
        for fault, values in by_fault.items():
            median = f"{statistics.median(values):>7.2f}s" if values else f"{'-':>8}"
            worst = f"{max(values):>7.2f}s" if values else f"{'-':>8}"
            lines.append(f"{fault:<{fw}}  {record.faults.count(fault):>8}  {len(values):>9}  {median}  {worst}")
    if record.per_scenario:
        lines.append("")
        sw = max(len(name) for name in record.per_scenario)
        lines.append(f"{'scenario':<{sw}}  {'events':>7}  {'violations at any moment':>24}")
        for name, (events, violations) in record.per_scenario.items():
            lines.append(f"{name:<{sw}}  {events:>7}  {violations:>24}")
    if record.transient_seen:
        lines.append("")
        lines.append(f"violations the monitor saw (first {len(record.transient_seen)} of {record.transient}):")
        lines += [f"  {line}" for line in record.transient_seen]
    return "\n".join(lines)
