"""The scale benchmark's workload: a fleet of inf2.48xlarge and trn1.32xlarge nodes, groups of
replicas of typical inference sizes, and each group as a NeuronInference (for the operator) or as
plain pods / a ReplicaSet asking for the same cores on the same family (for kube-scheduler). Pure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from neuronplace.local.fleet import KWOK_TOLERATION
from neuronplace.local.manifests import inference
from neuronplace.placement.names import INSTANCE_TYPE_LABEL, NEURONCORE_RESOURCE
from neuronplace.placement.topology import INSTANCE_TOPOLOGIES

# The label that groups kube-scheduler's twin pods (ours carry neuronplace.io/inference instead).
PLAIN_GROUP_LABEL = "bench.neuronplace.io/group"
IMAGE = "registry.k8s.io/pause:3.10"  # never pulled: kwok runs no containers

# (instance type, cores per replica): typical inference sizes on each family.
MIX: tuple[tuple[str, int], ...] = (
    ("inf2.48xlarge", 1),
    ("inf2.48xlarge", 2),
    ("inf2.48xlarge", 4),
    ("trn1.32xlarge", 2),
    ("trn1.32xlarge", 8),
    ("trn1.32xlarge", 16),
)
FAMILY_CORES = {
    instance_type: INSTANCE_TOPOLOGIES[instance_type].cores for instance_type in ("inf2.48xlarge", "trn1.32xlarge")
}


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


def _cores_needed(groups: Iterable[Group]) -> dict[str, int]:
    needed: dict[str, int] = {}
    for group in groups:
        needed[group.instance_type] = needed.get(group.instance_type, 0) + group.cores * group.replicas
    return needed


def check_fits(groups: Iterable[Group], fleet: Mapping[str, int], share: float = 0.8) -> None:
    """Refuse a workload that needs more than ``share`` of any family's cores (fragmentation would
    then decide the outcome, not speed)."""
    for instance_type, cores in _cores_needed(groups).items():
        available = fleet.get(instance_type, 0) * FAMILY_CORES[instance_type]
        if cores > share * available:
            raise ValueError(
                f"the workload needs {cores} {instance_type} cores but the fleet has {available} "
                f"(at most {share:.0%} may be used): add nodes or ask for fewer pods"
            )


def extra_nodes(groups: Iterable[Group], fleet: Mapping[str, int], headroom: float = 1.05) -> dict[str, int]:
    """Nodes of each family to add so that every family has ``headroom`` × the cores its groups need."""
    extra = {}
    for instance_type, cores in _cores_needed(groups).items():
        missing = cores * headroom - fleet.get(instance_type, 0) * FAMILY_CORES[instance_type]
        if missing > 0:
            extra[instance_type] = math.ceil(missing / FAMILY_CORES[instance_type])
    return extra


def inference_manifest(group: Group) -> dict:
    """The group as a NeuronInference on its instance type (BinPack, default settings)."""
    return inference(
        group.name,
        replicas=group.replicas,
        cores=group.cores,
        processes=None,
        image=IMAGE,
        nodeSelector={INSTANCE_TYPE_LABEL: group.instance_type},
    )


def plain_pod(group: Group, index: int) -> dict:
    """The kube-scheduler twin of one replica: same node selector, same core count, no ranges."""
    cores = {NEURONCORE_RESOURCE: str(group.cores)}
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
        "spec": {
            "replicas": group.replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": plain_pod(group, 0)["spec"]},
        },
    }
