"""A local Kubernetes control plane run by kwokctl's binary runtime with the pinned binaries.

``LocalCluster(name).up()`` starts etcd, kube-apiserver (RBAC and Node authorization on),
kube-controller-manager, kube-scheduler and the kwok controller as plain processes on 127.0.0.1
only; ``down()`` kills them and removes the cluster's folder. kwokctl keeps its state in
``<cache root>/kwok/clusters/<name>/`` (pids/, logs/, kubeconfig.yaml, the cluster's
configuration), and never touches ``~/.kube/config``.

Fault helpers for the reliability tests:

- :meth:`LocalCluster.restart_component` restarts kube-apiserver or etcd alone. ``kwokctl stop`` +
  ``start`` cannot do this: it restarts the kwok controller before the apiserver is ready and kwok
  then stays stuck. So the process is stopped and started again from its own
  ``/proc/<pid>`` command line, working directory and environment, logging to the same file, and
  its pid file is updated so that ``kwokctl delete`` still finds it.
- :meth:`LocalCluster.set_node_ready` has kwok report a node NotReady (its ``node-not-ready``
  stage, switched by a label) or Ready again.
- :meth:`LocalCluster.delete_node` / :meth:`LocalCluster.create_nodes` lose and add instances.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from neuronplace.local import build, dra_driver, procs
from neuronplace.local.fleet import FleetSpec, build_fleet, describe_fleet, fleet_instances, normalize_fleet
from neuronplace.placement.capacity_requests import build_priority_class

CONTROL_PLANE_COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller")
RESTARTABLE = ("kube-apiserver", "etcd")
NOT_READY_LABEL = "node-not-ready.stage.kwok.x-k8s.io"
STAGES_FILE = Path(__file__).with_name("kwok-stages.yaml")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")


class CommandError(subprocess.CalledProcessError):
    """A kubectl / helm / kwokctl call failed; ``str()`` includes what it printed on stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or self.output or '').strip()[-3000:]}"


def workdir() -> Path:
    """kwokctl's work folder (``KWOK_WORKDIR``): all clusters' state lives under it."""
    return build.cache_root() / "kwok"


@dataclass
class ClusterSettings:
    """How a local cluster runs.

    ``wait_seconds`` bounds how long ``kwokctl create cluster`` may take to report the cluster
    ready (a cold machine under load needs far more than the usual few seconds).
    ``api_qps``/``api_burst`` raise the client rate limits of kube-scheduler and
    kube-controller-manager (their defaults of 50/100 make the scheduler the bottleneck on this
    machine: one bind request per pod, at most 50 requests a second). Node heartbeat timing stays
    at kwokctl's defaults (lease 200 s, grace 100 s): on two busy cores shorter ones mark healthy
    nodes NotReady; fault tests switch readiness explicitly with :meth:`LocalCluster.set_node_ready`
    instead.

    ``admission_plugins`` are kube-apiserver admission plugins to enable beyond its defaults (as
    production clusters do, e.g. ``OwnerReferencesPermissionEnforcement``).
    ``controller_credentials`` runs kube-controller-manager's controllers as their own
    ServiceAccounts (``--use-service-account-credentials``, as kubeadm and EKS run it) instead of
    with the admin's credentials, so that RBAC and admission policies see the identities a real
    cluster's controllers (the garbage collector among them) have.
    """

    wait_seconds: int = 180
    api_qps: int = 500
    api_burst: int = 1000
    admission_plugins: tuple[str, ...] = ()
    controller_credentials: bool = False


@dataclass
class LocalCluster:
    """One named local cluster. Cheap to construct; :meth:`up` starts it, :meth:`down` removes it."""

    name: str = "neuronplace"
    settings: ClusterSettings = field(default_factory=ClusterSettings)
    bin_dir: Path = field(default_factory=build.bin_dir)
    _spawned: list[subprocess.Popen] = field(default_factory=list, repr=False)
    _ports: set[int] = field(default_factory=set, repr=False)
    _stopped: dict[str, dict] = field(default_factory=dict, repr=False)  # component -> how to start it again

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"cluster name {self.name!r} must be 1-42 lowercase letters, digits or '-', "
                "starting and ending with a letter or digit"
            )
        self.bin_dir = Path(self.bin_dir)

    # ---- where things are -------------------------------------------------------------------
    @property
    def cluster_dir(self) -> Path:
        return workdir() / "clusters" / self.name

    @property
    def kubeconfig(self) -> str:
        return str(self.cluster_dir / "kubeconfig.yaml")

    @property
    def logs_dir(self) -> Path:
        return self.cluster_dir / "logs"

    @property
    def helm_dir(self) -> Path:
        return self.cluster_dir / "helm"

    def env(self) -> dict[str, str]:
        """``os.environ`` plus this cluster's kubeconfig, the built binaries first on PATH, and
        helm's config/cache/data folders kept inside the cluster's folder."""
        env = dict(os.environ)
        env["KUBECONFIG"] = self.kubeconfig
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["KWOK_WORKDIR"] = str(workdir())
        for kind in ("CACHE", "CONFIG", "DATA"):
            env[f"HELM_{kind}_HOME"] = str(self.helm_dir / kind.lower())
        return env

    # ---- running commands -------------------------------------------------------------------
    def _run(self, argv: Sequence[str], input: str | None, check: bool, timeout: float) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(a) for a in argv],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise CommandError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        return self._run([self.bin_dir / "kubectl", "--kubeconfig", self.kubeconfig, *args], input, check, timeout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess:
        return self._run([self.bin_dir / "helm", "--kubeconfig", self.kubeconfig, *args], input, check, timeout)

    def kwokctl(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return self._run([self.bin_dir / "kwokctl", "--name", self.name, *args], None, check, timeout)

    def get_json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    # ---- lifecycle --------------------------------------------------------------------------
    def configuration(self) -> dict:
        """The KwokctlConfiguration this cluster is created with (pure apart from paths)."""
        versions = build.pins()
        # DRA needs no flag: in 1.36 resource.k8s.io/v1, kube-scheduler's DynamicResources plugin and
        # kube-controller-manager's resourceclaim controller (which unreserves and deallocates a
        # claim whose pod is gone) are GA and on by default (see local/dra_driver.py).
        # One scheduler and one controller-manager per cluster: leader election only adds a way to
        # die, since each exits when it cannot renew its lease while kube-apiserver is restarted.
        extra_args = [
            {"key": "kube-api-qps", "value": str(self.settings.api_qps)},
            {"key": "kube-api-burst", "value": str(self.settings.api_burst)},
            {"key": "leader-elect", "value": "false"},
        ]
        apiserver_args = []
        if self.settings.admission_plugins:
            plugins = ",".join(self.settings.admission_plugins)
            apiserver_args.append({"key": "enable-admission-plugins", "value": plugins})
        controller_args = [dict(arg) for arg in extra_args]
        if self.settings.controller_credentials:
            controller_args.append({"key": "use-service-account-credentials", "value": "true"})
        return {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokctlConfiguration",
            "options": {
                "runtime": "binary",
                "bindAddress": "127.0.0.1",
                "kubeVersion": versions["k8s.io/kubernetes"],
                "etcdVersion": versions["go.etcd.io/etcd/server/v3"].lstrip("v"),
                "kwokVersion": versions["sigs.k8s.io/kwok"],
                "kubeBinaryPrefix": str(self.bin_dir),
                "kubeApiserverBinary": str(self.bin_dir / "kube-apiserver"),
                "kubeControllerManagerBinary": str(self.bin_dir / "kube-controller-manager"),
                "kubeSchedulerBinary": str(self.bin_dir / "kube-scheduler"),
                "kubectlBinary": str(self.bin_dir / "kubectl"),
                "etcdBinary": str(self.bin_dir / "etcd"),
                "kwokControllerBinary": str(self.bin_dir / "kwok"),
                "kubeAuthorization": True,
                "kubeAdmission": True,
            },
            "componentsPatches": [
                {"name": "kube-scheduler", "extraArgs": [dict(arg) for arg in extra_args]},
                {"name": "kube-controller-manager", "extraArgs": controller_args},
                *([{"name": "kube-apiserver", "extraArgs": apiserver_args}] if apiserver_args else []),
            ],
        }

    def exists(self) -> bool:
        return (self.cluster_dir / "pids").is_dir()

    def up(self, fleet: FleetSpec | None = None, progress=None) -> LocalCluster:
        """Build what is missing, create the cluster, then the fleet (waiting until Ready).

        Refuses to start over an existing cluster of the same name (``down`` it first).
        """
        say = progress or (lambda line: None)
        if fleet is not None:
            fleet = normalize_fleet(fleet)  # validate before starting anything
        if self.exists():
            raise RuntimeError(
                f"a cluster named {self.name!r} already exists in {self.cluster_dir}; "
                f"run `neuronplace local down --name {self.name}` first"
            )
        build.ensure_binaries(progress)
        config_path = workdir() / f"{self.name}.config.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        # One file: the kwokctl configuration, then the kwok Stages (which replace kwok's defaults).
        config_path.write_text(
            yaml.safe_dump(self.configuration(), sort_keys=False) + "---\n" + STAGES_FILE.read_text()
        )
        say(f"starting cluster {self.name} ...")
        try:
            with port_lock():
                self.kwokctl(
                    "create",
                    "cluster",
                    "--config",
                    str(config_path),
                    "--kubeconfig",
                    "",
                    "--wait",
                    f"{self.settings.wait_seconds}s",
                    "--quiet-pull",
                    timeout=self.settings.wait_seconds + 60,
                )
                missing = set(CONTROL_PLANE_COMPONENTS) - set(self.running_components())
                if missing:
                    raise RuntimeError(f"cluster {self.name!r} started without {', '.join(sorted(missing))}")
                self._ports = self.listening_ports()
            # As the chart does: the operator's capacity requests name this class.
            self.kubectl("apply", "-f", "-", input=json.dumps(build_priority_class()))
            if fleet:
                say(f"creating nodes {describe_fleet(fleet)} ...")
                self.create_nodes(fleet)
        except BaseException as error:
            error.add_note(f"component logs of {self.name!r}:\n{self.log_tail(lines=12)}")
            self.down()
            raise
        finally:
            config_path.unlink(missing_ok=True)
        return self

    def down(self) -> None:
        """Stop every component and remove the cluster's folder. Safe to call more than once."""
        pids = self.running_components()
        if self.exists() or self.cluster_dir.exists():
            self.kwokctl("delete", "cluster", "--kubeconfig", "", check=False)
        # kwokctl kills the pids it recorded; a process we restarted is our child, so reap it here.
        for pid in pids.values():
            _kill(pid)
        for child in self._spawned:
            if child.poll() is None:
                child.kill()
            child.wait()
        self._spawned.clear()
        shutil.rmtree(self.cluster_dir, ignore_errors=True)

    def component_pids(self) -> dict[str, int]:
        """Component name → pid from kwokctl's pid files (the processes may have exited)."""
        pid_dir = self.cluster_dir / "pids"
        pids = {}
        if pid_dir.is_dir():
            for pid_file in pid_dir.glob("*.pid"):
                try:
                    pids[pid_file.stem] = int(pid_file.read_text().strip())
                except ValueError:
                    continue
        return pids

    def running_components(self) -> dict[str, int]:
        """The components alive now. A pid counts only while its process still runs in this
        cluster's folder, so a stale pid file can never point us at an unrelated process."""
        return {name: pid for name, pid in self.component_pids().items() if self._owns(pid)}

    def _owns(self, pid: int) -> bool:
        if not procs.is_alive(pid):
            return False
        try:
            return Path(procs.working_dir(pid)).is_relative_to(self.cluster_dir)
        except OSError:
            return False

    def listening_ports(self) -> set[int]:
        """TCP ports the cluster's live processes listen on right now."""
        return procs.listening_ports(list(self.running_components().values()))

    @property
    def ports(self) -> set[int]:
        """Ports the cluster listened on when it came up (to check they are all closed after down)."""
        return set(self._ports)

    def rss_bytes(self) -> dict[str, int]:
        return {name: procs.rss_bytes(pid) for name, pid in self.running_components().items()}

    # ---- nodes ------------------------------------------------------------------------------
    def create_nodes(
        self,
        fleet: FleetSpec,
        labels: Mapping[str, str] | None = None,
        prefix: str = "np-",
        wait: bool = True,
        timeout: float = 120,
    ) -> list[str]:
        """Create one kwok Node per instance in ``fleet``; by default wait until all are Ready.

        A DRA-managed instance (``:dra``) gets the simulated Neuron DRA driver's ResourceSlices
        (and the cluster its DeviceClass) once its Node exists.
        """
        instances = fleet_instances(fleet, prefix)
        manifests = build_fleet(fleet, prefix, labels)
        created = self.kubectl(
            "create",
            "-o",
            'jsonpath={.metadata.name} {.metadata.uid}{"\\n"}',  # one line per node created
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}),
        )
        uids = dict(line.split() for line in created.stdout.splitlines() if line.strip())
        for instance in instances:
            if instance.dra:
                dra_driver.publish(self, instance.name, instance.instance_type, node_uid=uids[instance.name])
        names = [i.name for i in instances]
        if wait:
            self.wait_nodes(names, ready=True, timeout=timeout)
        return names

    def wait_nodes(self, names: Sequence[str], ready: bool = True, timeout: float = 120) -> None:
        """Wait until every named node's Ready condition is True (or, with ``ready=False``, is not)."""
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending:
            pending = [n for n in pending if self.node_ready(n) != ready]
            if not pending:
                return
            if time.monotonic() > deadline:
                wanted = "Ready" if ready else "NotReady"
                raise TimeoutError(f"nodes {pending} did not become {wanted} within {timeout:.0f} s")
            time.sleep(0.2)

    def node_ready(self, name: str) -> bool | None:
        """The node's Ready condition (None when the node does not exist or has none yet)."""
        result = self.kubectl(
            "get", "node", name, "-o", 'jsonpath={.status.conditions[?(@.type=="Ready")].status}', check=False
        )
        if result.returncode != 0 or not result.stdout.strip():
            return None
        return result.stdout.strip() == "True"

    def delete_node(self, name: str, wait: bool = True, timeout: float = 60) -> None:
        self.kubectl("delete", "node", name, "--wait=" + ("true" if wait else "false"), f"--timeout={timeout:.0f}s")

    def set_node_ready(self, name: str, ready: bool, timeout: float = 60) -> None:
        """Make a node NotReady (as if its kubelet failed) or Ready again; returns once it shows.

        Uses kwok's own ``node-not-ready`` stage (see ``kwok-stages.yaml``): while the node carries
        the label ``node-not-ready.stage.kwok.x-k8s.io=true`` kwok reports its Ready condition False
        (kube-controller-manager then taints it ``node.kubernetes.io/not-ready``); without the label
        kwok's ``node-initialize`` stage reports it Ready again.
        """
        if ready:
            self.kubectl("label", "node", name, f"{NOT_READY_LABEL}-")
        else:
            self.kubectl("label", "node", name, f"{NOT_READY_LABEL}=true", "--overwrite")
        self.wait_nodes([name], ready=ready, timeout=timeout)

    # ---- component faults -------------------------------------------------------------------
    def stop_component(self, component: str, hard: bool = False, timeout: float = 30) -> list[str]:
        """Stop one restartable component; return how to start it again (see :meth:`start_component`)."""
        if component not in RESTARTABLE:
            raise ValueError(
                f"component {component!r} cannot be restarted alone; choose one of {', '.join(RESTARTABLE)}"
            )
        pid = self.running_components().get(component)
        if pid is None:
            raise RuntimeError(f"{component} of cluster {self.name!r} is not running")
        recipe = {"argv": procs.command_line(pid), "cwd": procs.working_dir(pid), "env": procs.environment(pid)}
        _kill(pid, signal.SIGKILL if hard else signal.SIGTERM, timeout)
        self._stopped[component] = recipe
        return recipe["argv"]

    def start_component(self, component: str, timeout: float = 60) -> int:
        """Start a component stopped by :meth:`stop_component` with its original command line."""
        recipe = self._stopped.pop(component, None)
        if recipe is None:
            raise RuntimeError(f"{component} was not stopped by stop_component; nothing to start")
        with open(self.logs_dir / f"{component}.log", "ab") as log:
            child = subprocess.Popen(
                recipe["argv"],
                cwd=recipe["cwd"],
                env=recipe["env"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._spawned.append(child)
        (self.cluster_dir / "pids" / f"{component}.pid").write_text(str(child.pid))
        self.wait_healthy(timeout)
        return child.pid

    def start_process(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> int:
        """Run one more process as part of this cluster (the autoscaler); return its pid.

        Its log and pid file sit beside the components', so :meth:`down` stops it, :meth:`log_tail`
        shows it and :meth:`running_components` lists it (it runs in the cluster's folder).
        """
        with open(self.logs_dir / f"{name}.log", "ab") as log:
            child = subprocess.Popen(
                list(argv),
                cwd=self.cluster_dir,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._spawned.append(child)
        (self.cluster_dir / "pids" / f"{name}.pid").write_text(str(child.pid))
        return child.pid

    def stop_process(self, name: str, timeout: float = 30) -> None:
        """Stop a process started by :meth:`start_process` (SIGTERM, SIGKILL after ``timeout``)."""
        pid = self.running_components().get(name)
        if pid is not None:
            _kill(pid, signal.SIGTERM, timeout)
        for child in [c for c in self._spawned if c.pid == pid]:
            child.wait()
            self._spawned.remove(child)
        (self.cluster_dir / "pids" / f"{name}.pid").unlink(missing_ok=True)

    def restart_component(self, component: str, hard: bool = False, downtime: float = 0.0, timeout: float = 60) -> int:
        """Restart kube-apiserver or etcd alone (kwok and the pods keep running); return the new pid.

        Waits until the apiserver answers ``/readyz`` again. ``hard`` kills with SIGKILL instead of
        SIGTERM; ``downtime`` keeps the component down that many seconds first. The component's
        port is free meanwhile, so no other cluster may be created until it is back (port lock).
        """
        with port_lock():
            self.stop_component(component, hard=hard)
            time.sleep(downtime)
            return self.start_component(component, timeout=timeout)

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = self.kubectl("get", "--raw", "/readyz", check=False, timeout=10)
            if result.returncode == 0 and result.stdout.strip() == "ok":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"kube-apiserver of {self.name!r} not ready after {timeout:.0f} s: {result.stderr.strip()[-500:]}"
                )
            time.sleep(0.3)

    # ---- reporting --------------------------------------------------------------------------
    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` of every component's log, for failure reports."""
        parts = []
        for log in sorted(self.logs_dir.glob("*.log")) if self.logs_dir.is_dir() else []:
            with open(log, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 200 * lines))
                tail = handle.read().decode(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name} (last {len(tail)} lines) ---\n" + "\n".join(tail))
        return "\n".join(parts)


@contextlib.contextmanager
def port_lock() -> Iterator[None]:
    """Serialise port allocation between all local clusters on this machine (all processes).

    kwokctl picks each component's port by probing downwards from 32767 for one that is free at
    that moment; two clusters created at once probe the same ports and their components then
    fail to bind (or, worse, talk to the other cluster). Holding this lock from ``kwokctl create``
    until every component listens, and while a restarted component is down, prevents that.
    """
    path = workdir() / "ports.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _kill(pid: int, sig: int = signal.SIGKILL, timeout: float = 30) -> None:
    """Signal a process and wait until it is gone, escalating to SIGKILL after ``timeout``."""
    if not procs.is_alive(pid):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while procs.is_alive(pid):
        if time.monotonic() > deadline and sig != signal.SIGKILL:
            os.kill(pid, signal.SIGKILL)
            sig = signal.SIGKILL
        time.sleep(0.05)


def list_clusters() -> list[LocalCluster]:
    """Every cluster that has state in the work folder (running or not)."""
    clusters_dir = workdir() / "clusters"
    if not clusters_dir.is_dir():
        return []
    return [
        LocalCluster(path.name) for path in sorted(clusters_dir.iterdir()) if path.is_dir() and _NAME.match(path.name)
    ]
