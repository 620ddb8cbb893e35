"""Karpenter with its kwok cloud provider as the local cluster's node autoscaler.

:class:`Autoscaler` runs the pinned Karpenter (``controlplane/karpenter``, built into a cache folder
of its own) outside the cluster as one more process of a :class:`LocalCluster`: pid file and log
beside the other components', so ``down`` stops it and ``status`` lists it. Karpenter watches
Pending pods, creates a NodeClaim for capacity that would fit them, and its kwok provider creates a
kwok Node for it; ``consolidateAfter`` after a node empties it removes the node again.

The pure builders give what it needs: :func:`build_instance_types` (the file Karpenter reads its
instance types from), :func:`build_node_class` and :func:`build_node_pool`. Instance types come
from the same tables as the simulated fleet (:mod:`neuronplace.local.fleet`), and the NodePool puts
the fleet's taint and labels on every node, so a node Karpenter creates looks to the operator (and
to kube-scheduler) exactly like a fleet node of that type. Its nodes are device-plugin nodes (Neuron
allocatable, no Neuron DRA driver slices): Karpenter's DRA support is behind a feature gate.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from neuronplace.local import build, procs
from neuronplace.local.cluster import LocalCluster
from neuronplace.local.fleet import HOST_SHAPES, KWOK_TAINT, REGION, REGION_LABEL, ZONE_LABEL, ZONES, host_resources
from neuronplace.local.operator_process import free_port
from neuronplace.placement.names import INSTANCE_TYPE_LABEL, NEURON_DEVICE_RESOURCE, NEURONCORE_RESOURCE
from neuronplace.placement.topology import INSTANCE_TOPOLOGIES, topology_for

COMPONENT = "karpenter"
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"
NODE_POOL_LABEL = "karpenter.sh/nodepool"
NODE_CLASS_NAME = "default"
DEFAULT_NODE_POOL = "neuron"
NEURON_INSTANCE_TYPES: tuple[str, ...] = tuple(t for t in INSTANCE_TOPOLOGIES if t in HOST_SHAPES)
# How long a node must stay empty before Karpenter gives it back (the NodePool's ``consolidateAfter``),
# by default: long enough that a node whose capacity request just made room for a replica is not
# taken away before kube-scheduler binds the replica there. Tests pass a shorter one.
CONSOLIDATE_AFTER = "10s"
# The test bed's: the autoscaler tests wait for emptied nodes to go, in seconds.
TEST_CONSOLIDATE_AFTER = "3s"
# Karpenter gathers Pending pods until none came for 1 s, for at most this long (its
# ``BATCH_MAX_DURATION``; 10 s by default): short, so a test's scale-up is quick, while a burst of
# pods still lands in one batch.
BATCH_MAX_SECONDS = 2

# On-demand USD per hour in us-east-1 (AWS list prices; the trn2 ones are estimates). In the
# simulation they only decide which type Karpenter launches: the cheapest one that fits.
PRICES: dict[str, float] = {
    "inf1.xlarge": 0.228,
    "inf1.2xlarge": 0.362,
    "inf1.6xlarge": 1.18,
    "inf1.24xlarge": 4.721,
    "inf2.xlarge": 0.7582,
    "inf2.8xlarge": 1.9679,
    "inf2.24xlarge": 6.4906,
    "inf2.48xlarge": 12.9813,
    "trn1.2xlarge": 1.3438,
    "trn1.32xlarge": 21.50,
    "trn1n.32xlarge": 24.78,
    "trn2.3xlarge": 2.235,
    "trn2.48xlarge": 35.76,
    "trn2u.48xlarge": 42.91,
}
# The kwok provider subtracts a fixed kube-reserved from every instance type's resources to get its
# allocatable (100m cpu, 10Mi memory, hard-coded in Karpenter's kwok/cloudprovider). The resources we
# declare add it back, so a Karpenter node's allocatable equals a fleet node's of the same type.
KWOK_RESERVED_MILLICPU = 100
KWOK_RESERVED_MEMORY_MI = 10

# Every gate named, so an upgrade that changes a default changes nothing here unseen. CapacityBuffer
# (a buffer of spare capacity declared ahead of demand) stays off: demand here comes from Pending pods.
FEATURE_GATES: dict[str, bool] = {
    "NodeRepair": False,
    "ReservedCapacity": False,
    "SpotToSpotConsolidation": False,
    "NodeOverlay": False,
    "StaticCapacity": False,
    "CapacityBuffer": False,
    "TerminateFirstDrift": False,
    "TerminateFirstRepair": False,
    "PodDeletionCostManagement": False,
}
# The CRDs Karpenter's kwok build serves and watches, as files of the pinned module.
CRD_FILES = (
    "kwok/charts/crds/karpenter.sh_nodepools.yaml",
    "kwok/charts/crds/karpenter.sh_nodeclaims.yaml",
    "kwok/charts/crds/karpenter.sh_nodeoverlays.yaml",
    "kwok/charts/crds/autoscaling.x-k8s.io_capacitybuffers.yaml",
    "kwok/apis/crds/karpenter.kwok.sh_kwoknodeclasses.yaml",
)


class AutoscalerError(RuntimeError):
    """Karpenter could not be set up or did not come up; the message says why (log tail included)."""


def _kwok_resources(instance_type: str) -> dict[str, str]:
    _, allocatable = host_resources(instance_type)
    topology = topology_for(instance_type, None)
    return {
        "cpu": f"{int(allocatable['cpu'].removesuffix('m')) + KWOK_RESERVED_MILLICPU}m",
        "memory": f"{int(allocatable['memory'].removesuffix('Mi')) + KWOK_RESERVED_MEMORY_MI}Mi",
        "ephemeral-storage": allocatable["ephemeral-storage"],
        "pods": allocatable["pods"],
        NEURONCORE_RESOURCE: str(topology.cores),
        NEURON_DEVICE_RESOURCE: str(topology.chips),
    }


def build_instance_types(instance_types: Sequence[str] = NEURON_INSTANCE_TYPES) -> list[dict]:
    """The kwok provider's instance-types file (``INSTANCE_TYPES_FILE_PATH``) for ``instance_types``.

    One on-demand offering per zone of the simulated fleet, each carrying the region too, so the
    node gets the fleet's zone and region labels.
    """
    unknown = [t for t in instance_types if t not in NEURON_INSTANCE_TYPES]
    if unknown:
        raise ValueError(f"unknown instance type(s) {unknown}; known: {', '.join(NEURON_INSTANCE_TYPES)}")
    return [
        {
            "name": instance_type,
            "offerings": [
                {
                    "Price": PRICES[instance_type],
                    "Available": True,
                    "Requirements": [
                        {"key": CAPACITY_TYPE_LABEL, "operator": "In", "values": ["on-demand"]},
                        {"key": ZONE_LABEL, "operator": "In", "values": [zone]},
                        {"key": REGION_LABEL, "operator": "In", "values": [REGION]},
                    ],
                }
                for zone in ZONES
            ],
            "architecture": "amd64",
            "operatingSystems": ["linux"],
            "resources": _kwok_resources(instance_type),
        }
        for instance_type in instance_types
    ]


def build_node_class(name: str = NODE_CLASS_NAME) -> dict:
    """The KWOKNodeClass a NodePool refers to (the kwok provider has no settings in it)."""
    return {"apiVersion": "karpenter.kwok.sh/v1alpha1", "kind": "KWOKNodeClass", "metadata": {"name": name}}


def build_node_pool(
    name: str = DEFAULT_NODE_POOL,
    instance_types: Sequence[str] = NEURON_INSTANCE_TYPES,
    labels: Mapping[str, str] | None = None,
    consolidate_after: str = CONSOLIDATE_AFTER,
    max_cores: int = 1024,
    requirements: Sequence[Mapping] = (),
) -> dict:
    """A NodePool that may create the given Neuron instance types, on demand.

    Nodes carry the fleet's taint and its ``type: kwok`` label plus ``labels``. ``requirements``
    (NodeSelectorRequirements) are added to the instance-type one, e.g. a zone. ``max_cores`` caps
    the NeuronCores the pool may hold in all, so a fault can never make it create nodes without end.

    Consolidation is ``WhenEmpty``: a node is given back once no pod but daemon pods has run on it for
    ``consolidate_after`` (a Kubernetes duration, :data:`CONSOLIDATE_AFTER` by default). The
    alternative, ``WhenEmptyOrUnderutilized``, also evicts pods to pack them onto fewer or cheaper
    nodes; a replica pinned to its NeuronCore range would then be restarted elsewhere just to save
    money, which a serving workload should choose explicitly, not inherit from a test bed.
    """
    build_instance_types(instance_types)  # the same check: only types the simulation knows
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"labels": {"type": "kwok", **dict(labels or {})}},
                "spec": {
                    "nodeClassRef": {"group": "karpenter.kwok.sh", "kind": "KWOKNodeClass", "name": NODE_CLASS_NAME},
                    "requirements": [
                        {"key": INSTANCE_TYPE_LABEL, "operator": "In", "values": list(instance_types)},
                        {"key": CAPACITY_TYPE_LABEL, "operator": "In", "values": ["on-demand"]},
                        *(dict(r) for r in requirements),
                    ],
                    "taints": [dict(KWOK_TAINT)],
                    "expireAfter": "Never",
                },
            },
            "limits": {NEURONCORE_RESOURCE: str(max_cores)},
            # All empty nodes may go at once: in a test bed nothing is gained by draining slowly.
            "disruption": {
                "consolidationPolicy": "WhenEmpty",
                "consolidateAfter": consolidate_after,
                "budgets": [{"nodes": "100%"}],
            },
        },
    }


def module_dir() -> Path:
    """The pinned Karpenter module's source folder in the Go module cache (downloaded if missing)."""
    module = build.KARPENTER
    result = subprocess.run(
        ["go", "mod", "download", "-json", module.upstream],
        cwd=build.CONTROLPLANE_DIR / module.module,
        env=build.go_env(module.module),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise AutoscalerError(f"go mod download {module.upstream} failed:\n{result.stderr[-2000:]}")
    return Path(json.loads(result.stdout)["Dir"])


class Autoscaler:
    """Karpenter for one local cluster. :meth:`start` installs and starts it; :meth:`stop` stops it."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.bin_dir = build.bin_dir(build.AUTOSCALER)
        self.state_dir = cluster.cluster_dir / COMPONENT

    @property
    def instance_types_file(self) -> Path:
        return self.state_dir / "instance-types.json"

    def pid(self) -> int | None:
        """Karpenter's pid while it runs, else None."""
        return self.cluster.running_components().get(COMPONENT)

    def apply(self, *manifests: dict) -> None:
        self.cluster.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifests)})
        )

    def install_crds(self) -> None:
        """Apply the pinned module's CRDs and wait until the API serves them."""
        source = module_dir()
        args = ["apply", "--server-side", "--force-conflicts"]
        for path in CRD_FILES:
            args += ["-f", str(source / path)]
        self.cluster.kubectl(*args)
        self.cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", *(f"-f{source / p}" for p in CRD_FILES)
        )

    def start(
        self,
        node_pool: dict | None = None,
        progress: Callable[[str], None] | None = None,
        timeout: float = 120,
    ) -> int:
        """Build Karpenter if needed, install its CRDs, start it, apply the KWOKNodeClass and
        ``node_pool`` (default :func:`build_node_pool`), and wait until it reports ready.

        Returns its pid. Refuses a second start while one runs.
        """
        say = progress or (lambda line: None)
        if self.pid() is not None:
            raise AutoscalerError(f"Karpenter already runs for cluster {self.cluster.name!r} (pid {self.pid()})")
        build.ensure_binaries(progress, build.AUTOSCALER)
        say("installing Karpenter's CRDs ...")
        self.install_crds()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.instance_types_file.write_text(json.dumps(build_instance_types(), indent=1))
        health_port = free_port()
        env = {
            **self.cluster.env(),
            "SYSTEM_NAMESPACE": "kube-system",
            # No webhook server and no lease: one Karpenter per cluster, run as a plain process.
            "DISABLE_WEBHOOK": "true",
            "DISABLE_LEADER_ELECTION": "true",
            "INSTANCE_TYPES_FILE_PATH": str(self.instance_types_file),
            "FEATURE_GATES": ",".join(f"{gate}={str(on).lower()}" for gate, on in FEATURE_GATES.items()),
            "METRICS_PORT": str(free_port()),
            "HEALTH_PROBE_PORT": str(health_port),
            "BATCH_MAX_DURATION": f"{BATCH_MAX_SECONDS}s",
        }
        say(f"starting Karpenter {build.pins(build.AUTOSCALER)[build.KARPENTER.upstream]} ...")
        pid = self.cluster.start_process(COMPONENT, [str(self.bin_dir / build.KARPENTER.binary)], env)
        self.apply(build_node_class(), node_pool or build_node_pool())
        self._wait_ready(pid, health_port, timeout)
        return pid

    def _wait_ready(self, pid: int, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not procs.is_alive(pid):
                raise AutoscalerError(f"Karpenter exited while starting:\n{self.cluster.log_tail(lines=30)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AutoscalerError(f"Karpenter not ready after {timeout:.0f} s:\n{self.cluster.log_tail(lines=30)}")
            time.sleep(0.3)

    def stop(self) -> None:
        """Stop Karpenter (the nodes it made stay; NodeClaims keep their finalizers until it runs again)."""
        self.cluster.stop_process(COMPONENT)
