"""Scale benchmark: our operator against the real kube-scheduler, side by side on one control plane.

Run (the local control plane's binaries are built on first use, ~8 min cold):

    python benchmarks/scale.py --nodes 200            # a few minutes on 2 cores
    python benchmarks/scale.py                        # 1,000 nodes, 1,000 pods (the default)
    python benchmarks/scale.py --nodes 200 --memory   # also: operator RSS with 10,000 managed pods
    python benchmarks/scale.py --rounds 3             # 3 rounds, each side first once; medians and spread
    python benchmarks/scale.py --quick                # 10 nodes, 20 pods, one round (the CI smoke test)
    python benchmarks/scale.py --binding Direct       # only one of the operator's binding modes

One run, one cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok started
by ``neuronplace.local``), a simulated fleet of N kwok nodes, half inf2.48xlarge (24 cores), half
trn1.32xlarge (32 cores). Then, one after the other on the same nodes, four sides per round
(``--binding`` chooses our sides, ``--kube`` the kube sides), in an order that rotates every round
so that each side goes first once in four rounds (the side that goes first starts on a quieter
cluster; every other side starts right after the previous side's namespace, with all its pods, was
deleted):

1. **ours**, once per binding mode: the operator runs as a real subprocess (``python -m
   neuronplace.cli run``, default settings but ``NEURONPLACE_BINDING``) authenticated as the service
   account ``neuronplace-bench/neuronplace-operator``. The benchmark creates NeuronInference
   resources (a fixed mix of 1–16 cores per replica, 10 replicas each, K replicas in all) from 8
   threads, and a watch in this process records when every pod is bound and Running. Then the
   operator is stopped and the namespace deleted (all pods gone). **Scheduler mode** creates each
   pod unbound, pinned to its node by required node affinity on ``metadata.name``, and the
   cluster's kube-scheduler checks and binds it (one more write per pod, by the scheduler);
   **Direct mode** creates it bound (``spec.nodeName``).
2. **kube: ReplicaSets (controller-manager + scheduler)**: the same groups as ReplicaSets (one per
   NeuronInference, same replicas, same node selector, pods requesting the same
   ``aws.amazon.com/neuroncore`` count), created from 8 threads; kube-controller-manager creates the
   plain pods (``--concurrent-replicaset-syncs`` at its default, 5) and the cluster's real
   kube-scheduler binds them (it counts cores but computes no ranges). Like ours, this side goes
   "resource → controller → bound pods", so it measures the controller as much as the scheduler.
3. **kube: scheduler alone (pods created directly)**: the K plain pods created by this benchmark
   from 8 threads, no controller; kube-scheduler binds them. This is the scheduler's own speed
   (bounded by this client when "created s" is close to "bound s").

``LocalCluster`` raises the client rate limits of kube-scheduler and kube-controller-manager to
QPS 500 / burst 1000 (their defaults of 50/100 make the scheduler the bottleneck on this machine;
printed in the header).

For the whole run (every phase, every deletion), an invariant monitor
(``neuronplace.local.reliability.monitor``) follows the pod, node and NeuronInference watches from this
process and checks at every event that no core is held twice and that every managed pod's
annotation, env, requests and ``AWS_NEURON_IDS`` agree; its line follows the tables
(``--no-monitor`` turns it off; it costs this process some CPU on the same 2 cores).

Figures (the same definitions for both):

- **pods/s**: K / (last pod bound − first create call issued), end to end: "K replicas wanted" to
  "K pods bound". Ours: K/10 resource creates plus the operator's work (one pod create per
  replica; in Scheduler mode kube-scheduler's bind after it). kube-scheduler: K/10 ReplicaSet
  creates, kube-controller-manager's pod creates and kube-scheduler's binds. **created s** says when the benchmark's last create call returned
  (for the scheduler-alone side, when it is close to "bound s" this client set the pace).
- **group p50/p99**: per group (a NeuronInference or its ReplicaSet twin), from the group's creation
  (its create call returning; for the scheduler-alone side its first pod's) to the moment all of its pods
  are bound, as seen by the watch in this process. Includes the controller's queueing: on both sides
  all groups exist within a second or two and then wait for a worker (the operator's ``workers``;
  kube-controller-manager's ``--concurrent-replicaset-syncs``, default 5).
- **API requests/pod, operator only**: the apiserver's ``apiserver_flowcontrol_dispatched_requests_total``
  for a FlowSchema that matches exactly the operator's service account (priority level ``exempt``, as
  the admin-certificate clients of the local cluster, so neither side is throttled by API Priority
  and Fairness). Long-running watches count once, when opened; the startup lists are included.
  There is no such column for kube-scheduler: in the local cluster it shares the admin identity with
  kwok and this benchmark.
- **API requests/pod, all clients**: the apiserver's ``apiserver_request_total`` over the phase, over
  every client: this benchmark's creates, kwok's status updates, controller-manager, and the operator
  or the scheduler. The difference between the two rows is the cost of the two designs plus noise.
- **operator CPU s / peak RSS**: user+system CPU of the operator process during the phase (/proc/<pid>/stat),
  and its ``VmHWM`` (peak resident set since it started, so including its startup).
- **--memory**: a fresh operator, resources totalling 10,000 one-core replicas (nodes are added when
  the fleet has fewer than 11,000 cores); once all 10,000 pods are Running and the operator is idle,
  its ``VmRSS`` and ``VmHWM``. This is the real operator process managing 10,000 real pods. It
  serves its metrics (``NEURONPLACE_METRICS_PORT``) so that its own ``neuronplace_ledger_pods``
  gauge can confirm it holds all 10,000 in its ledger.

The load of everything else on the machine moves the figures by ±30 % from run to run: use
``--rounds`` and read the medians; the spread (min-max of the rounds) is printed beside them. Everything runs on the same 2 cores (etcd, apiserver,
controller-manager, scheduler, kwok, the operator and this process), so absolute figures are low;
the ratio is what to read.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from neuronplace.local.bench.apicounts import RequestCounter
from neuronplace.local.bench.podwatch import PodWatch
from neuronplace.local.bench.procstats import cpu_seconds, status_kb
from neuronplace.local.bench.prometheus import scrape
from neuronplace.local.bench.results import (
    KUBE_ALONE,
    KUBE_REPLICASETS,
    OURS_SIDES,
    PhaseResult,
    group_latencies,
    median_round,
    phase_order,
    plot,
    report,
)
from neuronplace.local.bench.workload import (
    PLAIN_GROUP_LABEL,
    Group,
    check_fits,
    extra_nodes,
    fleet_for,
    inference_manifest,
    plain_pod,
    replicaset_manifest,
    workload,
)
from neuronplace.local.operator_process import BINDING_VARIABLE, OperatorProcess, free_port, install_crd
from neuronplace.placement.conditions import is_ready
from neuronplace.placement.names import BINDINGS, GROUP, INFERENCE_LABEL, PLURAL, VERSION

DEFAULT_PLOT = Path(__file__).resolve().parent.parent / "out" / "scale.png"

BENCH_NAMESPACE = "neuronplace-bench"
OPERATOR_ACCOUNT = "neuronplace-operator"
FLOW_SCHEMA = "neuronplace-bench-operator"
MEMORY_PODS = 10_000


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def cpu_of(operator: OperatorProcess) -> float:
    return cpu_seconds(operator.pid)


class Bench:
    """The cluster side: setup, the two phases, the memory check."""

    def __init__(self, cluster, workdir: Path) -> None:
        from kubernetes import client, config

        self.cluster = cluster
        self.workdir = workdir
        configuration = client.Configuration()
        config.load_kube_config(config_file=cluster.kubeconfig, client_configuration=configuration)
        configuration.connection_pool_maxsize = 32
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.requests = RequestCounter(cluster, BENCH_NAMESPACE, OPERATOR_ACCOUNT, FLOW_SCHEMA)
        self.operator_env: dict[str, str] = {}

    # ---- setup -------------------------------------------------------------------------------

    def wait_nodes_ready(self, count: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while True:
            nodes = json.loads(self.core.list_node(_preload_content=False).data)["items"]
            ready = sum(1 for node in nodes if is_ready(node))
            if ready >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {ready} of {count} nodes Ready after {timeout:.0f} s")
            time.sleep(1)

    def install(self) -> None:
        """CRD, the operator's service account and the FlowSchema that counts its requests."""
        install_crd(self.cluster)
        self.requests.install(self.workdir, say)

    @property
    def counts_operator(self) -> bool:
        return self.requests.counts_account

    def request_counts(self) -> tuple[float, float]:
        """(all requests, the operator's requests) the apiserver has served so far."""
        return self.requests.counts()

    def create_namespace(self, name: str) -> None:
        self.cluster.kubectl("create", "namespace", name)

    def delete_namespace(self, name: str, timeout: float = 900) -> None:
        say(f"deleting namespace {name} and waiting until its pods are gone ...")
        self.cluster.kubectl(
            "delete", "namespace", name, "--wait=true", f"--timeout={timeout:.0f}s", timeout=timeout + 30
        )

    def start_operator(
        self, log_name: str, metrics_port: int | None = None, binding: str | None = None
    ) -> OperatorProcess:
        """The operator with default settings (plus ``--operator-env``; ``binding`` sets its binding
        mode), as the service account, without a liveness endpoint (nothing but the operator's own
        work runs in the process)."""
        env = dict(self.operator_env)
        if binding:
            env[BINDING_VARIABLE] = binding
        if metrics_port:
            env["NEURONPLACE_METRICS_PORT"] = str(metrics_port)
        operator = OperatorProcess(
            self.cluster,
            self.workdir / log_name,
            env=env,
            kubeconfig=self.requests.kubeconfig,
            liveness=False,
            cwd=self.workdir,
        )
        operator.start(timeout=120)
        return operator

    def create_inference(self, namespace: str, group: Group) -> tuple[str, float]:
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, inference_manifest(group), _preload_content=False
        )
        return group.name, time.monotonic()

    # ---- creating objects --------------------------------------------------------------------

    def _create_all(self, jobs: Sequence, create, threads: int = 8) -> dict:
        """Run ``create(job)`` for every job from ``threads`` threads; {job key: time it returned}."""
        done: dict = {}
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for key, finished in pool.map(create, jobs):
                done[key] = finished
        return done

    def run_ours(self, groups: Sequence[Group], namespace: str, timeout: float, binding: str) -> PhaseResult:
        pods = sum(g.replicas for g in groups)
        self.create_namespace(namespace)
        watch = PodWatch(self.core, namespace, INFERENCE_LABEL, say)
        watch.start()
        operator = self.start_operator(f"operator-scale-{binding.lower()}.log", binding=binding)
        try:
            say(
                f"ours, {binding} mode: operator pid {operator.pid} started; "
                f"creating {len(groups)} NeuronInferences ({pods} replicas)"
            )
            all_before, ours_before = self.request_counts()
            cpu_before = cpu_of(operator)
            start = time.monotonic()
            created = self._create_all(groups, lambda group: self.create_inference(namespace, group))
            watch.wait_running(pods, timeout, f"ours ({binding})")
            cpu = cpu_of(operator) - cpu_before
            peak_kb = status_kb(operator.pid, "VmHWM")
            all_after, ours_after = self.request_counts()
        finally:
            watch.stop()
            operator.stop()
        return PhaseResult(
            OURS_SIDES[binding],
            pods,
            start,
            dict(watch.bound),
            dict(watch.running),
            group_latencies(created, watch.bound, watch.members),
            max(created.values()) - start,
            all_after - all_before,
            requests_operator=(ours_after - ours_before) if self.counts_operator else None,
            operator_cpu_s=cpu,
            operator_peak_rss_mb=peak_kb / 1024,
        )

    def run_kube_scheduler(
        self, groups: Sequence[Group], namespace: str, timeout: float, alone: bool = False
    ) -> PhaseResult:
        """The twins: one ReplicaSet per group (kube-controller-manager creates the pods), or with
        ``alone`` every pod created by this benchmark; kube-scheduler binds them."""
        pods = sum(g.replicas for g in groups)
        self.create_namespace(namespace)
        watch = PodWatch(self.core, namespace, PLAIN_GROUP_LABEL, say)
        watch.start()
        if alone:
            say(f"kube-scheduler: creating {pods} plain pods in {len(groups)} groups")
            jobs = [(group, index) for group in groups for index in range(group.replicas)]
        else:
            say(f"kube-scheduler: creating {len(groups)} ReplicaSets ({pods} plain pods)")
            jobs = [(group, None) for group in groups]
        try:
            all_before, _ = self.request_counts()

            def create(job):
                group, index = job
                if index is None:
                    self.apps.create_namespaced_replica_set(
                        namespace, replicaset_manifest(group), _preload_content=False
                    )
                else:
                    self.core.create_namespaced_pod(namespace, plain_pod(group, index), _preload_content=False)
                return (group.name, index), time.monotonic()

            start = time.monotonic()
            done = self._create_all(jobs, create)
            watch.wait_running(pods, timeout, "kube-scheduler")
            all_after, _ = self.request_counts()
        finally:
            watch.stop()
        created: dict[str, float] = {}
        for (group, _index), finished in done.items():
            created[group] = min(created.get(group, finished), finished)
        label = KUBE_ALONE if alone else KUBE_REPLICASETS
        return PhaseResult(
            label,
            pods,
            start,
            dict(watch.bound),
            dict(watch.running),
            group_latencies(created, watch.bound, watch.members),
            max(done.values()) - start,
            all_after - all_before,
        )

    def run_memory(self, namespace: str, fleet: Mapping[str, int], timeout: float) -> dict:
        """A fresh operator managing MEMORY_PODS one-core replicas: its RSS once all are Running."""
        mix = (("inf2.48xlarge", 1), ("trn1.32xlarge", 1))
        groups = workload(MEMORY_PODS, group_size=100, mix=mix, prefix="m")
        extra = extra_nodes(groups, fleet)
        if extra:
            say(
                f"memory: adding nodes {', '.join(f'{t}={n}' for t, n in extra.items())} so that "
                f"{MEMORY_PODS} one-core replicas fit"
            )
            self.cluster.create_nodes(extra, prefix="mem-", wait=False)
            self.wait_nodes_ready(sum(fleet.values()) + sum(extra.values()))
        self.create_namespace(namespace)
        watch = PodWatch(self.core, namespace, INFERENCE_LABEL, say)
        watch.start()
        metrics_port = free_port()
        operator = self.start_operator("operator-memory.log", metrics_port)
        try:
            rss_idle_kb = status_kb(operator.pid, "VmRSS")
            say(f"memory: creating {len(groups)} NeuronInferences ({MEMORY_PODS} one-core replicas)")
            start = time.monotonic()
            self._create_all(groups, lambda group: self.create_inference(namespace, group))
            watch.wait_running(MEMORY_PODS, timeout, "memory")
            placed_seconds = max(watch.bound.values()) - start
            # Let the operator finish its status writes, then take the steady figure.
            previous = -1.0
            while True:
                time.sleep(5)
                cpu = cpu_of(operator)
                if cpu - previous < 0.5:
                    break
                previous = cpu
            ledger_pods = scrape(f"http://127.0.0.1:{metrics_port}/metrics", "neuronplace_ledger_pods", kind="managed")
            return {
                "pods": MEMORY_PODS,
                "ledger_pods": ledger_pods,
                "rss_mb": status_kb(operator.pid, "VmRSS") / 1024,
                "peak_rss_mb": status_kb(operator.pid, "VmHWM") / 1024,
                "rss_before_mb": rss_idle_kb / 1024,
                "placed_seconds": placed_seconds,
            }
        finally:
            watch.stop()
            operator.stop()


KUBE_SIDES = {"both": (KUBE_REPLICASETS, KUBE_ALONE), "replicasets": (KUBE_REPLICASETS,), "alone": (KUBE_ALONE,)}
OUR_SIDES = {"both": BINDINGS, **{binding: (binding,) for binding in BINDINGS}}
BINDING_OF = {label: binding for binding, label in OURS_SIDES.items()}
SLUGS = {
    **{label: f"ours-{binding.lower()}" for binding, label in OURS_SIDES.items()},
    KUBE_REPLICASETS: "kube-rs",
    KUBE_ALONE: "kube-alone",
}


def _setting(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
        raise ValueError(f"--operator-env {item!r} is not NAME=VALUE (e.g. NEURONPLACE_WORKERS=8)")
    if key == BINDING_VARIABLE:
        raise ValueError(f"--operator-env {key}: the binding mode is a side of the benchmark; use --binding")
    return key, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nodes", type=int, help="simulated nodes, half inf2.48xlarge, half trn1.32xlarge (default 1000)"
    )
    parser.add_argument("--pods", type=int, help="replicas to place in each phase (default: as many as nodes)")
    parser.add_argument(
        "--plot", type=Path, default=DEFAULT_PLOT, help=f"PNG of pods bound over time (default {DEFAULT_PLOT})"
    )
    parser.add_argument(
        "--kube",
        choices=sorted(KUBE_SIDES),
        default="both",
        help="the kube sides: ReplicaSets (controller-manager + scheduler), pods created directly "
        "(the scheduler alone), or both (default)",
    )
    parser.add_argument(
        "--binding",
        choices=sorted(OUR_SIDES),
        default="both",
        help="our sides: the operator in Scheduler mode (kube-scheduler binds its pinned pods), in "
        "Direct mode (it binds them itself), or both (default)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the sides this many times on the same cluster, the order rotated every round; "
        "medians and spread are printed",
    )
    parser.add_argument(
        "--quick", action="store_true", help="10 nodes, 20 pods, one round unless given (the CI smoke test)"
    )
    parser.add_argument("--no-monitor", action="store_true", help="do not run the invariant monitor")
    parser.add_argument(
        "--memory", action="store_true", help=f"also measure operator RSS with {MEMORY_PODS} managed pods"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds each phase may take")
    parser.add_argument(
        "--operator-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable of the operator process (repeatable), e.g. a setting "
        "NEURONPLACE_WORKERS=16 or glibc's MALLOC_ARENA_MAX=2",
    )
    parser.add_argument("--name", default="np-scale", help="name of the local cluster (created and removed)")
    args = parser.parse_args(argv)
    args.nodes = args.nodes or (10 if args.quick else 1000)
    if args.quick:
        args.pods = args.pods or 20

    pods = args.pods or args.nodes
    try:
        operator_env = dict(_setting(item) for item in args.operator_env)
        fleet = fleet_for(args.nodes)
        groups = workload(pods)
        check_fits(groups, fleet)
        if args.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    except ValueError as error:
        parser.error(str(error))

    from neuronplace.local.cluster import LocalCluster

    cluster = LocalCluster(args.name)
    monitor = None
    monitor_report = None
    if cluster.exists() and not cluster.running_components():
        cluster.down()  # state left by a killed run
    with tempfile.TemporaryDirectory(prefix="np-scale-") as scratch:
        try:
            say(f"starting the local control plane {args.name!r} ...")
            cluster.up(progress=say)
            say(f"creating {args.nodes} nodes ({', '.join(f'{t}={n}' for t, n in fleet.items())}) ...")
            cluster.create_nodes(fleet, wait=False)
            bench = Bench(cluster, Path(scratch))
            bench.operator_env = operator_env
            bench.wait_nodes_ready(args.nodes)
            bench.install()
            if not args.no_monitor:
                from neuronplace.local.reliability.monitor import monitor_for

                monitor = monitor_for(cluster.kubeconfig).start()
                say("invariant monitor: following pods, nodes and NeuronInferences")
            sides = [OURS_SIDES[binding] for binding in OUR_SIDES[args.binding]] + list(KUBE_SIDES[args.kube])
            rounds = []
            for number in range(1, args.rounds + 1):
                results = []
                order = phase_order(sides, number)
                say(f"round {number}: {' -> '.join(order)}")
                for position, side in enumerate(order):
                    namespace = f"scale-{SLUGS[side]}-{number}"
                    if side in BINDING_OF:
                        result = bench.run_ours(groups, namespace, args.timeout, BINDING_OF[side])
                    else:
                        result = bench.run_kube_scheduler(groups, namespace, args.timeout, alone=side == KUBE_ALONE)
                    say(f"{side}: {result.pods} pods bound in {result.bound_seconds:.1f} s")
                    results.append(result)
                    if number < args.rounds or position < len(order) - 1 or args.memory:
                        bench.delete_namespace(namespace)
                rounds.append(results)
            memory = bench.run_memory("scale-memory", fleet, args.timeout) if args.memory else None
            if monitor is not None:
                monitor_report = monitor.stop()
        except BaseException:
            logs = sorted(Path(scratch).glob("*.log"))
            for log in logs:
                print(f"--- {log.name} (tail) ---\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            raise
        finally:
            if monitor is not None and monitor_report is None:
                monitor.stop()
            say("tearing the cluster down ...")
            cluster.down()

    settings = cluster.settings
    header = (
        f"scale benchmark: {args.nodes} kwok nodes ({', '.join(f'{t}={n}' for t, n in fleet.items())}), "
        f"{pods} replicas per phase in {len(groups)} groups of cores {sorted({g.cores for g in groups})}; "
        f"kube-scheduler client QPS {settings.api_qps} / burst {settings.api_burst}; {os.cpu_count()} CPUs"
        + (
            f"; operator {' '.join(f'{k}={v}' for k, v in operator_env.items())}"
            if operator_env
            else "; operator default settings"
        )
        + f" but {BINDING_VARIABLE} as its side says"
    )
    print()
    print(report(rounds, memory, header))
    if monitor_report is not None:
        print(f"invariant monitor over the whole run: {monitor_report.summary()}")
        for seen in monitor_report.first:
            print(f"  {seen}")
    middle = median_round(rounds)
    plot(
        rounds[middle],
        args.plot,
        f"{pods} pods on {args.nodes} nodes"
        + (f" (round {middle + 1} of {len(rounds)}: the median ratio)" if len(rounds) > 1 else ""),
    )
    print(f"plot: {args.plot}")
    if monitor_report is not None and monitor_report.violations:
        print(f"FAILED: the invariant monitor saw {monitor_report.violations} violation(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
