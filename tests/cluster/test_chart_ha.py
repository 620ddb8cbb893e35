"""The chart's high availability (docs/high-availability.md): two replicas spread across nodes, a
PodDisruptionBudget, a rolling update, each pod's identity from its name, and RBAC for exactly the
release's Lease in the release's namespace."""

from __future__ import annotations

import pytest
import yaml

from neuronplace.operator.settings import OperatorSettings
from support.chart import RELEASE, container_env, helm_template, install

pytestmark = pytest.mark.cluster

FULLNAME = f"{RELEASE}-neuronplace"


def rendered(cluster, namespace: str, *values: str) -> dict[str, dict]:
    return {d["kind"]: d for d in helm_template(cluster, namespace, *values)}


def test_two_replicas_spread_with_a_disruption_budget_and_their_own_identities(local_cluster, namespace):
    docs = rendered(local_cluster, namespace)
    deployment, budget = docs["Deployment"], docs["PodDisruptionBudget"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = deployment["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert budget["spec"] == {"minAvailable": 1, "selector": deployment["spec"]["selector"]}
    settings = OperatorSettings.from_env(container_env(deployment))
    assert settings.leader_election and settings.leader_election_id == FULLNAME
    assert settings.lease_namespace() == namespace and settings.pod_name == f"{FULLNAME}-pod"
    assert (settings.lease_duration_seconds, settings.renew_deadline_seconds, settings.retry_period_seconds) == (
        15,
        10,
        2,
    )
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["NEURONPLACE_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # One replica: no budget (it would block every drain) and nothing to spread; with more, a user's
    # node affinity keeps the spread.
    single = rendered(local_cluster, namespace, "--set", "replicaCount=1", "--set", "affinity.nodeAffinity.x=1")
    assert "PodDisruptionBudget" not in single
    assert set(single["Deployment"]["spec"]["template"]["spec"]["affinity"]) == {"nodeAffinity"}
    three = rendered(local_cluster, namespace, "--set", "replicaCount=3", "--set", "affinity.nodeAffinity.x=1")
    assert set(three["Deployment"]["spec"]["template"]["spec"]["affinity"]) == {"nodeAffinity", "podAntiAffinity"}
    # The server accepts what it renders.
    result = local_cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(budget), check=False
    )
    assert result.returncode == 0, result.stderr


def can_i(cluster, verb: str, resource: str, namespace: str) -> bool:
    result = cluster.kubectl(
        "auth",
        "can-i",
        verb,
        resource,
        "-n",
        namespace,
        f"--as=system:serviceaccount:{namespace}:{FULLNAME}",
        check=False,
    )
    return result.stdout.strip() == "yes"


def test_rbac_grants_the_releases_lease_and_nothing_else(local_cluster, namespace):
    try:
        install(local_cluster, namespace)
        assert can_i(local_cluster, "create", "leases.coordination.k8s.io", namespace)
        for verb in ("get", "update", "patch"):
            assert can_i(local_cluster, verb, f"leases.coordination.k8s.io/{FULLNAME}", namespace), verb
            assert not can_i(local_cluster, verb, "leases.coordination.k8s.io/kube-scheduler", namespace), verb
        for verb in ("delete", "list", "watch"):
            assert not can_i(local_cluster, verb, f"leases.coordination.k8s.io/{FULLNAME}", namespace), verb
        assert not can_i(local_cluster, "create", "leases.coordination.k8s.io", "kube-system")
        assert not can_i(local_cluster, "update", f"leases.coordination.k8s.io/{FULLNAME}", "default")
    finally:
        local_cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False, timeout=180)
