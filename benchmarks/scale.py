"""Scale benchmark: our operator against the real kube-scheduler, side by side on one control plane.

Run (the local control plane's binaries are built on first use, ~8 min cold):

    python benchmarks/scale.py --nodes 200            # a few minutes on 2 cores
    python benchmarks/scale.py                        # 1,000 nodes, 1,000 pods (the default)
    python benchmarks/scale.py --nodes 200 --memory   # also: operator RSS with 10,000 managed pods
    python benchmarks/scale.py --rounds 3             # the side-by-side 3 times; the median ratio counts

One run, one cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok started
by ``neuronplace.local``), a simulated fleet of N kwok nodes, half inf2.48xlarge (24 cores), half
trn1.32xlarge (32 cores). Then, one after the other on the same nodes:

1. **ours**: the operator runs as a real subprocess (``python -m neuronplace.cli run``, default
   settings) authenticated as the service account ``neuronplace-bench/neuronplace-operator``. The
   benchmark creates NeuronInference resources (a fixed mix of 1–16 cores per replica, 10 replicas
   each, K replicas in all) from 8 threads, and a watch in this process records when every pod is
   bound and Running. Then the operator is stopped and the namespace deleted (all pods gone).
2. **kube-scheduler**: the same groups as ReplicaSets (one per NeuronInference, same replicas, same
   node selector, pods requesting the same ``aws.amazon.com/neuroncore`` count), created from 8
   threads; kube-controller-manager creates the plain pods and the cluster's real kube-scheduler binds
   them (it counts cores but computes no ranges). Both sides thus go "resource → controller → bound
   pods". ``LocalCluster`` raises the client rate limits of kube-scheduler and
   kube-controller-manager to QPS 500 / burst 1000 (DESIGN §9's tuned figure; printed in the header).
   ``--direct-pods`` instead creates the K pods from this benchmark (8 threads).

Figures (the same definitions for both):

- **pods/s**: K / (last pod bound − first create call issued), end to end: "K replicas wanted" to
  "K pods bound". Ours: K/10 resource creates plus the operator's work (one pod create, already
  bound, per replica). kube-scheduler: K/10 ReplicaSet creates, kube-controller-manager's pod creates
  and kube-scheduler's binds. **created s** says when the benchmark's last create call returned
  (with ``--direct-pods``, when it is close to "bound s" this client, not kube-scheduler, set the pace).
- **group p50/p99**: per group (a NeuronInference or its ReplicaSet twin), from the group's creation
  (its create call returning; with ``--direct-pods`` its first pod's) to the moment all of its pods
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
- **operator CPU s / peak RSS**: user+system CPU of the operator process during the phase (psutil),
  and its ``VmHWM`` (peak resident set since it started, so including its startup).
- **--memory**: a fresh operator, resources totalling 10,000 one-core replicas (nodes are added when
  the fleet has fewer than 11,000 cores); once all 10,000 pods are Running and the operator is idle,
  its ``VmRSS`` and ``VmHWM``. This is the real operator process managing 10,000 real pods. It
  serves its metrics (``NEURONPLACE_METRICS_PORT``) so that its own ``neuronplace_ledger_pods``
  gauge can confirm it holds all 10,000 in its ledger.

The load of everything else on the machine moves the figures by ±30 % from run to run: use
``--rounds`` and read the median. Everything runs on the same 2 cores (etcd, apiserver, controller-manager, scheduler, kwok, the
operator and this process), so absolute figures are low; the ratio is what to read.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CRD_FILE = REPO / "crds" / "neuronplace.io_neuroninferences.yaml"
DEFAULT_PLOT = REPO / "out" / "scale.png"

INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
NEURONCORE = "aws.amazon.com/neuroncore"
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake", "effect": "NoSchedule"}
INFERENCE_LABEL = "neuronplace.io/inference"
PLAIN_GROUP_LABEL = "bench.neuronplace.io/group"
IMAGE = "registry.k8s.io/pause:3.10"  # never pulled: kwok runs no containers

BENCH_NAMESPACE = "neuronplace-bench"
OPERATOR_ACCOUNT = "neuronplace-operator"
FLOW_SCHEMA = "neuronplace-bench-operator"
STARTED_LINE = "neuronplace operator started"

# (instance type, cores per replica): typical inference sizes on each family.
MIX: tuple[tuple[str, int], ...] = (
    ("inf2.48xlarge", 1), ("inf2.48xlarge", 2), ("inf2.48xlarge", 4),
    ("trn1.32xlarge", 2), ("trn1.32xlarge", 8), ("trn1.32xlarge", 16),
)
FAMILY_CORES = {"inf2.48xlarge": 24, "trn1.32xlarge": 32}
MEMORY_PODS = 10_000


# ---- pure parts (tests/unit/test_scale_helpers.py) --------------------------------------------------

@dataclass(frozen=True)
class Group:
    """One NeuronInference (ours) or its twin set of plain pods (kube-scheduler)."""

    name: str
    instance_type: str
    cores: int
    replicas: int


def fleet_for(nodes: int) -> dict[str, int]:
    """Half inf2.48xlarge (the odd one extra), half trn1.32xlarge."""
    if nodes < 2:
        raise ValueError(f"--nodes must be at least 2 (one of each instance type), got {nodes}")
    return {"inf2.48xlarge": nodes - nodes // 2, "trn1.32xlarge": nodes // 2}


def workload(pods: int, group_size: int = 10, mix: Sequence[tuple[str, int]] = MIX, prefix: str = "g") -> list[Group]:
    """``pods`` replicas in groups of ``group_size`` (the last one smaller), cycling through ``mix``."""
    if pods < 1 or group_size < 1:
        raise ValueError(f"pods and group size must be >= 1, got {pods} and {group_size}")
    groups = []
    for index, start in enumerate(range(0, pods, group_size)):
        instance_type, cores = mix[index % len(mix)]
        groups.append(Group(f"{prefix}{index:04d}-{cores}c", instance_type, cores, min(group_size, pods - start)))
    return groups


def check_fits(groups: Iterable[Group], fleet: Mapping[str, int], share: float = 0.8) -> None:
    """Refuse a workload that needs more than ``share`` of any family's cores (fragmentation would
    then decide the outcome, not speed)."""
    needed: dict[str, int] = {}
    for group in groups:
        needed[group.instance_type] = needed.get(group.instance_type, 0) + group.cores * group.replicas
    for instance_type, cores in needed.items():
        available = fleet.get(instance_type, 0) * FAMILY_CORES[instance_type]
        if cores > share * available:
            raise ValueError(f"the workload needs {cores} {instance_type} cores but the fleet has {available} "
                             f"(at most {share:.0%} may be used): add nodes or ask for fewer pods")


def extra_nodes(groups: Iterable[Group], fleet: Mapping[str, int], headroom: float = 1.05) -> dict[str, int]:
    """Nodes of each family to add so that every family has ``headroom`` × the cores its groups need."""
    needed: dict[str, int] = {}
    for group in groups:
        needed[group.instance_type] = needed.get(group.instance_type, 0) + group.cores * group.replicas
    extra = {}
    for instance_type, cores in needed.items():
        missing = cores * headroom - fleet.get(instance_type, 0) * FAMILY_CORES[instance_type]
        if missing > 0:
            extra[instance_type] = math.ceil(missing / FAMILY_CORES[instance_type])
    return extra


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def group_latencies(created: Mapping[str, float], bound: Mapping[str, float],
                    members: Mapping[str, Iterable[str]]) -> dict[str, float]:
    """Seconds from each group's creation until its last pod was bound."""
    result = {}
    for group, start in created.items():
        pods = list(members.get(group, ()))
        missing = [pod for pod in pods if pod not in bound]
        if not pods or missing:
            raise ValueError(f"group {group}: pods never bound: {missing or 'no pods at all'}")
        result[group] = max(bound[pod] for pod in pods) - start
    return result


def bound_curve(bound_times: Iterable[float], start: float) -> tuple[list[float], list[int]]:
    """(seconds since ``start``, pods bound so far): a step curve for the plot."""
    times = sorted(t - start for t in bound_times)
    return times, list(range(1, len(times) + 1))


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in a Prometheus text exposition whose labels match ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = _SAMPLE.match(line)
        if not match or match.group(1) != name:
            continue
        found = dict(_LABEL.findall(match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(3))
    return total


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def inference_manifest(group: Group) -> dict:
    return {
        "apiVersion": "neuronplace.io/v1alpha1",
        "kind": "NeuronInference",
        "metadata": {"name": group.name},
        "spec": {
            "replicas": group.replicas,
            "coresPerReplica": group.cores,
            "placement": {"strategy": "BinPack", "nodeSelector": {INSTANCE_TYPE_LABEL: group.instance_type},
                          "tolerations": [dict(KWOK_TOLERATION)]},
            "template": {"metadata": {"labels": {"app": group.name}},
                         "spec": {"containers": [{"name": "model", "image": IMAGE}]}},
        },
    }


def plain_pod(group: Group, index: int) -> dict:
    """The kube-scheduler twin of one replica: same node selector, same core count, no ranges."""
    cores = {NEURONCORE: str(group.cores)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{group.name}-{index}", "labels": {PLAIN_GROUP_LABEL: group.name}},
        "spec": {
            "nodeSelector": {INSTANCE_TYPE_LABEL: group.instance_type},
            "tolerations": [dict(KWOK_TOLERATION)],
            "containers": [{"name": "model", "image": IMAGE, "resources": {"requests": cores, "limits": dict(cores)}}],
        },
    }


def replicaset_manifest(group: Group) -> dict:
    """The group's twins as a ReplicaSet: kube-controller-manager creates the plain pods."""
    labels = {PLAIN_GROUP_LABEL: group.name}
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": group.name},
        "spec": {"replicas": group.replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": plain_pod(group, 0)["spec"]}},
    }


# ---- measuring on the cluster -----------------------------------------------------------------------

def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def read_status_kb(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` figure in kB (VmRSS, VmHWM), 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def own_ledger_pods(port: int) -> float | None:
    """The operator's own ``neuronplace_ledger_pods{kind="managed"}`` (None when it serves no metrics)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return metric_sum(response.read().decode(), "neuronplace_ledger_pods", kind="managed")
    except OSError:
        return None


class PodWatch(threading.Thread):
    """Records, with this process's monotonic clock, when each pod of a namespace is first seen
    bound to a node and first seen Running. ``group_label`` names the label holding its group."""

    def __init__(self, core, namespace: str, group_label: str) -> None:
        super().__init__(daemon=True, name=f"watch-{namespace}")
        self.core = core
        self.namespace = namespace
        self.group_label = group_label
        self.bound: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.members: dict[str, set[str]] = {}
        self.changed = threading.Condition()
        self.stopping = False
        self.error: BaseException | None = None

    def _see(self, pod: dict, now: float) -> None:
        meta = pod.get("metadata") or {}
        name = meta.get("name")
        group = (meta.get("labels") or {}).get(self.group_label)
        with self.changed:
            if group:
                self.members.setdefault(group, set()).add(name)
            if (pod.get("spec") or {}).get("nodeName") and name not in self.bound:
                self.bound[name] = now
            if (pod.get("status") or {}).get("phase") == "Running" and name not in self.running:
                self.running[name] = now
            self.changed.notify_all()

    def run(self) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        try:
            version = None
            while not self.stopping:
                if version is None:
                    listed = json.loads(self.core.list_namespaced_pod(self.namespace, _preload_content=False).data)
                    now = time.monotonic()
                    for pod in listed.get("items", []):
                        self._see(pod, now)
                    version = listed["metadata"]["resourceVersion"]
                response = self.core.list_namespaced_pod(self.namespace, watch=True, resource_version=version,
                                                         allow_watch_bookmarks=True, timeout_seconds=30,
                                                         _preload_content=False)
                for line in iter_resp_lines(response):
                    if not line:
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":  # 410 Gone: list again
                        version = None
                        break
                    version = event["object"]["metadata"].get("resourceVersion", version)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._see(event["object"], time.monotonic())
                response.release_conn()
        except BaseException as error:  # reported by wait()
            self.error = error
            with self.changed:
                self.changed.notify_all()

    def wait_running(self, count: int, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last_report = time.monotonic()
        with self.changed:
            while len(self.running) < count:
                if self.error is not None:
                    raise RuntimeError(f"watching pods of {self.namespace} failed: {self.error}") from self.error
                now = time.monotonic()
                if now > deadline:
                    raise TimeoutError(f"{what}: only {len(self.bound)} bound and {len(self.running)} Running "
                                       f"of {count} pods after {timeout:.0f} s")
                if now - last_report > 15:
                    say(f"  {what}: {len(self.bound)} bound, {len(self.running)} Running of {count}")
                    last_report = now
                self.changed.wait(timeout=1.0)

    def stop(self) -> None:
        self.stopping = True


@dataclass
class PhaseResult:
    label: str
    pods: int
    start: float
    bound: dict[str, float]
    running: dict[str, float]
    latencies: dict[str, float]
    created_seconds: float  # the last create call of the phase returned this long after the first was issued
    requests_all: float
    requests_operator: float | None = None
    operator_cpu_s: float | None = None
    operator_peak_rss_mb: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def bound_seconds(self) -> float:
        return max(self.bound.values()) - self.start

    @property
    def pods_per_second(self) -> float:
        return self.pods / self.bound_seconds

    @property
    def all_running_seconds(self) -> float:
        return max(self.running.values()) - self.start


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
        self.operator_kubeconfig: str = cluster.kubeconfig
        self.counts_operator = False
        self.operator_env: dict[str, str] = {}

    # ---- setup -------------------------------------------------------------------------------

    def wait_nodes_ready(self, count: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while True:
            nodes = json.loads(self.core.list_node(_preload_content=False).data)["items"]
            ready = sum(1 for n in nodes for c in (n.get("status") or {}).get("conditions") or ()
                        if c.get("type") == "Ready" and c.get("status") == "True")
            if ready >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {ready} of {count} nodes Ready after {timeout:.0f} s")
            time.sleep(1)

    def install(self) -> None:
        """CRD, the operator's service account and the FlowSchema that counts its requests."""
        self.cluster.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
        self.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                             "crd/neuroninferences.neuronplace.io")
        self.cluster.kubectl("create", "namespace", BENCH_NAMESPACE)
        self.cluster.kubectl("create", "serviceaccount", OPERATOR_ACCOUNT, "-n", BENCH_NAMESPACE)
        self.cluster.kubectl("create", "clusterrolebinding", "neuronplace-bench-operator", "--clusterrole=cluster-admin",
                             f"--serviceaccount={BENCH_NAMESPACE}:{OPERATOR_ACCOUNT}")
        token = self.cluster.kubectl("create", "token", OPERATOR_ACCOUNT, "-n", BENCH_NAMESPACE, "--duration=12h",
                                     check=False)
        if token.returncode != 0:
            say(f"no service-account token ({token.stderr.strip()[-200:]}); the operator runs as admin and "
                "its own API requests cannot be told apart")
            return
        import yaml

        admin = yaml.safe_load(Path(self.cluster.kubeconfig).read_text())
        context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
        cluster_entry = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
        kubeconfig = {
            "apiVersion": "v1", "kind": "Config", "clusters": [cluster_entry],
            "users": [{"name": OPERATOR_ACCOUNT, "user": {"token": token.stdout.strip()}}],
            "contexts": [{"name": "operator", "context": {"cluster": cluster_entry["name"], "user": OPERATOR_ACCOUNT}}],
            "current-context": "operator",
        }
        path = self.workdir / "operator.kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        self.operator_kubeconfig = str(path)
        flow_schema = {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "FlowSchema",
            "metadata": {"name": FLOW_SCHEMA},
            "spec": {
                "priorityLevelConfiguration": {"name": "exempt"},
                "matchingPrecedence": 100,
                "rules": [{
                    "subjects": [{"kind": "ServiceAccount",
                                  "serviceAccount": {"name": OPERATOR_ACCOUNT, "namespace": BENCH_NAMESPACE}}],
                    "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                       "clusterScope": True, "namespaces": ["*"]}],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }],
            },
        }
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(flow_schema))
        self.counts_operator = True

    def apiserver_metrics(self) -> str:
        return self.cluster.kubectl("get", "--raw", "/metrics", timeout=60).stdout

    def request_counts(self) -> tuple[float, float]:
        """(all requests, the operator's requests) the apiserver has served so far."""
        text = self.apiserver_metrics()
        return (metric_sum(text, "apiserver_request_total"),
                metric_sum(text, "apiserver_flowcontrol_dispatched_requests_total", flow_schema=FLOW_SCHEMA))

    def create_namespace(self, name: str) -> None:
        self.cluster.kubectl("create", "namespace", name)

    def delete_namespace(self, name: str, timeout: float = 900) -> None:
        say(f"deleting namespace {name} and waiting until its pods are gone ...")
        self.cluster.kubectl("delete", "namespace", name, "--wait=true", f"--timeout={timeout:.0f}s",
                             timeout=timeout + 30)

    # ---- the operator process ----------------------------------------------------------------

    def start_operator(self, log_name: str, metrics_port: int | None = None):
        import psutil

        log_path = self.workdir / log_name
        env = self.cluster.env()
        env["KUBECONFIG"] = self.operator_kubeconfig
        env.update(self.operator_env)
        if metrics_port:
            env["NEURONPLACE_METRICS_PORT"] = str(metrics_port)
        with open(log_path, "wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "neuronplace.cli", "run"], env=env, cwd=self.workdir,
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        deadline = time.monotonic() + 120
        while STARTED_LINE not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                self.stop_operator(process)
                raise RuntimeError(f"the operator did not start (log {log_path}):\n{tail}")
            time.sleep(0.2)
        return process, psutil.Process(process.pid)

    @staticmethod
    def stop_operator(process: subprocess.Popen) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # ---- creating objects --------------------------------------------------------------------

    def _create_all(self, jobs: Sequence, create, threads: int = 8) -> dict:
        """Run ``create(job)`` for every job from ``threads`` threads; {job key: time it returned}."""
        done: dict = {}
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for key, finished in pool.map(create, jobs):
                done[key] = finished
        return done

    def run_ours(self, groups: Sequence[Group], namespace: str, timeout: float) -> PhaseResult:
        pods = sum(g.replicas for g in groups)
        self.create_namespace(namespace)
        watch = PodWatch(self.core, namespace, INFERENCE_LABEL)
        watch.start()
        process, ps = self.start_operator("operator-scale.log")
        try:
            say(f"ours: operator pid {process.pid} started; creating {len(groups)} NeuronInferences ({pods} replicas)")
            all_before, ours_before = self.request_counts()
            cpu_before = sum(ps.cpu_times()[:2])

            def create(group: Group):
                self.custom.create_namespaced_custom_object("neuronplace.io", "v1alpha1", namespace, "neuroninferences",
                                                            inference_manifest(group), _preload_content=False)
                return group.name, time.monotonic()

            start = time.monotonic()
            created = self._create_all(groups, create)
            watch.wait_running(pods, timeout, "ours")
            cpu = sum(ps.cpu_times()[:2]) - cpu_before
            peak_kb = read_status_kb(process.pid, "VmHWM")
            all_after, ours_after = self.request_counts()
        finally:
            watch.stop()
            self.stop_operator(process)
        return PhaseResult(
            "ours (operator)", pods, start, dict(watch.bound), dict(watch.running),
            group_latencies(created, watch.bound, watch.members), max(created.values()) - start,
            all_after - all_before, requests_operator=(ours_after - ours_before) if self.counts_operator else None,
            operator_cpu_s=cpu, operator_peak_rss_mb=peak_kb / 1024,
        )

    def run_kube_scheduler(self, groups: Sequence[Group], namespace: str, timeout: float,
                           direct: bool = False) -> PhaseResult:
        """The twins: one ReplicaSet per group (kube-controller-manager creates the pods), or with
        ``direct`` every pod created by this benchmark; kube-scheduler binds them."""
        pods = sum(g.replicas for g in groups)
        self.create_namespace(namespace)
        watch = PodWatch(self.core, namespace, PLAIN_GROUP_LABEL)
        watch.start()
        if direct:
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
                    self.apps.create_namespaced_replica_set(namespace, replicaset_manifest(group), _preload_content=False)
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
        label = "kube-scheduler (direct pods)" if direct else "kube-scheduler (ReplicaSets)"
        return PhaseResult(label, pods, start, dict(watch.bound), dict(watch.running),
                           group_latencies(created, watch.bound, watch.members), max(done.values()) - start,
                           all_after - all_before)

    def run_memory(self, namespace: str, fleet: Mapping[str, int], timeout: float) -> dict:
        """A fresh operator managing MEMORY_PODS one-core replicas: its RSS once all are Running."""
        mix = (("inf2.48xlarge", 1), ("trn1.32xlarge", 1))
        groups = workload(MEMORY_PODS, group_size=100, mix=mix, prefix="m")
        extra = extra_nodes(groups, fleet)
        if extra:
            say(f"memory: adding nodes {', '.join(f'{t}={n}' for t, n in extra.items())} so that "
                f"{MEMORY_PODS} one-core replicas fit")
            self.cluster.create_nodes(extra, prefix="mem-", wait=False)
            self.wait_nodes_ready(sum(fleet.values()) + sum(extra.values()))
        self.create_namespace(namespace)
        watch = PodWatch(self.core, namespace, INFERENCE_LABEL)
        watch.start()
        metrics_port = free_port()
        process, ps = self.start_operator("operator-memory.log", metrics_port)
        try:
            rss_idle_kb = read_status_kb(process.pid, "VmRSS")
            say(f"memory: creating {len(groups)} NeuronInferences ({MEMORY_PODS} one-core replicas)")

            def create(group: Group):
                self.custom.create_namespaced_custom_object("neuronplace.io", "v1alpha1", namespace, "neuroninferences",
                                                            inference_manifest(group), _preload_content=False)
                return group.name, time.monotonic()

            start = time.monotonic()
            self._create_all(groups, create)
            watch.wait_running(MEMORY_PODS, timeout, "memory")
            placed_seconds = max(watch.bound.values()) - start
            # Let the operator finish its status writes, then take the steady figure.
            previous = -1.0
            while True:
                time.sleep(5)
                cpu = sum(ps.cpu_times()[:2])
                if cpu - previous < 0.5:
                    break
                previous = cpu
            return {"pods": MEMORY_PODS, "ledger_pods": own_ledger_pods(metrics_port),
                    "rss_mb": read_status_kb(process.pid, "VmRSS") / 1024,
                    "peak_rss_mb": read_status_kb(process.pid, "VmHWM") / 1024,
                    "rss_before_mb": rss_idle_kb / 1024, "placed_seconds": placed_seconds}
        finally:
            watch.stop()
            self.stop_operator(process)


# ---- report ----------------------------------------------------------------------------------------

def median_round(rounds: Sequence[tuple[PhaseResult, PhaseResult]]) -> int:
    """Index of the round whose ours/kube-scheduler ratio is the median (the lower one of two)."""
    ratios = [ours.pods_per_second / kube.pods_per_second for ours, kube in rounds]
    return sorted(range(len(rounds)), key=lambda i: ratios[i])[(len(rounds) - 1) // 2]


def report(rounds: Sequence[tuple[PhaseResult, PhaseResult]], memory: dict | None, header: str) -> str:
    def opt(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    rows = []
    for number, pair in enumerate(rounds, 1):
        for result in pair:
            lat = list(result.latencies.values())
            rows.append([
                f"{result.label}" + (f" #{number}" if len(rounds) > 1 else ""), str(result.pods),
                f"{result.created_seconds:.1f}", f"{result.bound_seconds:.1f}", f"{result.pods_per_second:.1f}",
                f"{result.all_running_seconds:.1f}", f"{percentile(lat, 50):.2f}", f"{percentile(lat, 99):.2f}",
                opt(None if result.requests_operator is None else result.requests_operator / result.pods, ".2f"),
                f"{result.requests_all / result.pods:.2f}",
                opt(result.operator_cpu_s, ".1f"), opt(result.operator_peak_rss_mb, ".0f"),
            ])
    table = format_table(["", "pods", "created s", "bound s", "pods/s", "Running s", "group p50 s", "group p99 s",
                          "req/pod (operator)", "req/pod (all)", "op CPU s", "op peak RSS MB"], rows)
    ratios = [ours.pods_per_second / kube.pods_per_second for ours, kube in rounds]
    middle = median_round(rounds)
    ratio = ratios[middle]
    lines = [header, "", table, "",
             f"ratio pods/s ours / kube-scheduler: {ratio:.2f}"
             + (f" (median of {len(rounds)} rounds: {', '.join(f'{r:.2f}' for r in ratios)})" if len(rounds) > 1 else "")
             + f"  (goal >= 1.0: {'met' if ratio >= 1.0 else 'NOT met'})"]
    if memory is not None:
        lines.append(f"operator RSS with {memory['pods']} managed pods Running: {memory['rss_mb']:.0f} MB "
                     f"(peak {memory['peak_rss_mb']:.0f} MB, {memory['rss_before_mb']:.0f} MB before; "
                     f"goal <= 200 MB: {'met' if memory['rss_mb'] <= 200 else 'NOT met'}); "
                     f"{memory['pods']} placed in {memory['placed_seconds']:.0f} s; the operator's own ledger gauge: "
                     + ("not served" if memory["ledger_pods"] is None else f"{memory['ledger_pods']:.0f} managed pods"))
    return "\n".join(lines)


def plot(results: Sequence[PhaseResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for result in results:
        xs, ys = bound_curve(result.bound.values(), result.start)
        axes.step([0.0, *xs], [0, *ys], where="post", label=f"{result.label} ({result.pods_per_second:.0f} pods/s)")
    axes.set_xlabel("seconds since the first create call")
    axes.set_ylabel("pods bound")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def _setting(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
        raise ValueError(f"--operator-env {item!r} is not NAME=VALUE (e.g. NEURONPLACE_WORKERS=8)")
    return key, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000, help="simulated nodes, half inf2.48xlarge, half trn1.32xlarge")
    parser.add_argument("--pods", type=int, help="replicas to place in each phase (default: as many as nodes)")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help=f"PNG of pods bound over time (default {DEFAULT_PLOT})")
    parser.add_argument("--direct-pods", action="store_true",
                        help="create kube-scheduler's pods from this benchmark (8 threads) instead of ReplicaSets")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the side-by-side this many times on the same cluster; the median ratio is the result")
    parser.add_argument("--memory", action="store_true", help=f"also measure operator RSS with {MEMORY_PODS} managed pods")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds each phase may take")
    parser.add_argument("--operator-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable of the operator process (repeatable), e.g. a setting "
                             "NEURONPLACE_WORKERS=16 or glibc's MALLOC_ARENA_MAX=2")
    parser.add_argument("--name", default="np-scale", help="name of the local cluster (created and removed)")
    args = parser.parse_args(argv)

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
            rounds = []
            for number in range(1, args.rounds + 1):
                ours = bench.run_ours(groups, f"scale-ours-{number}", args.timeout)
                say(f"ours: {ours.pods} pods bound in {ours.bound_seconds:.1f} s")
                bench.delete_namespace(f"scale-ours-{number}")
                kube = bench.run_kube_scheduler(groups, f"scale-kube-{number}", args.timeout, direct=args.direct_pods)
                say(f"kube-scheduler: {kube.pods} pods bound in {kube.bound_seconds:.1f} s")
                rounds.append((ours, kube))
                if number < args.rounds or args.memory:
                    bench.delete_namespace(f"scale-kube-{number}")
            memory = bench.run_memory("scale-memory", fleet, args.timeout) if args.memory else None
        except BaseException:
            logs = sorted(Path(scratch).glob("*.log"))
            for log in logs:
                print(f"--- {log.name} (tail) ---\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            raise
        finally:
            say("tearing the cluster down ...")
            cluster.down()

    settings = cluster.settings
    header = (f"scale benchmark: {args.nodes} kwok nodes ({', '.join(f'{t}={n}' for t, n in fleet.items())}), "
              f"{pods} replicas per phase in {len(groups)} groups of cores {sorted({g.cores for g in groups})}; "
              f"kube-scheduler client QPS {settings.api_qps} / burst {settings.api_burst}; {os.cpu_count()} CPUs"
              + (f"; operator {' '.join(f'{k}={v}' for k, v in operator_env.items())}" if operator_env else
                 "; operator default settings"))
    print()
    print(report(rounds, memory, header))
    middle = median_round(rounds)
    plot(rounds[middle], args.plot, f"{pods} pods on {args.nodes} nodes"
         + (f" (round {middle + 1} of {len(rounds)}: the median ratio)" if len(rounds) > 1 else ""))
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
