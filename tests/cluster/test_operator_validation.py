"""Bad input: invalid specs are refused by the API server with the rule's message and create
nothing; objects that pass the schema but cannot work get a condition saying why, and the
operator keeps serving everything else."""

from __future__ import annotations

import copy

import pytest

from neuronplace.local.operator_process import TEST_TIMINGS
from support.builders import inference
from support.cluster import apply, condition, get_inference, placed_and_ready, pods_of
from support.waits import hold

pytestmark = pytest.mark.cluster


def with_spec(**changes) -> dict:
    resource = inference("bad", cores=4, replicas=1)
    resource["spec"].update(changes)
    return resource


def with_container(**changes) -> dict:
    resource = inference("bad", cores=4, replicas=1)
    resource["spec"]["template"]["spec"]["containers"][0].update(changes)
    return resource


def with_pod_spec(**changes) -> dict:
    resource = inference("bad", cores=4, replicas=1)
    resource["spec"]["template"]["spec"].update(changes)
    return resource


INVALID = [
    (with_spec(coresPerReplica=0), "spec.coresPerReplica"),
    (with_spec(coresPerReplica=-4), "spec.coresPerReplica"),
    (with_spec(coresPerReplica=129), "spec.coresPerReplica"),
    (with_spec(replicas=-1), "spec.replicas"),
    (with_spec(replicas=100000), "spec.replicas"),
    (with_spec(coresPerReplica="four"), "spec.coresPerReplica"),
    (with_spec(coresPerReplica=6, processesPerReplica=4), "coresPerReplica must be divisible by processesPerReplica"),
    (with_spec(processesPerReplica=0), "spec.processesPerReplica"),
    (with_spec(placement={"strategy": "Random"}), "spec.placement.strategy"),
    (with_spec(placement={"shapePolicy": "Loose"}), "spec.placement.shapePolicy"),
    (with_spec(placement={"nodeSelector": {"a": 1}}), "spec.placement.nodeSelector"),
    (with_spec(placement={"tolerations": [{"key": "a", "operator": "Sometimes"}]}), "operator"),
    (with_pod_spec(nodeName="inf2-a"), "template.spec.nodeName must not be set"),
    (with_pod_spec(schedulerName="my-scheduler"), "template.spec.schedulerName must not be set"),
    (with_pod_spec(containers=[]), "containers"),
    (with_container(resources={"limits": {"aws.amazon.com/neuroncore": 2}}), "must not request Neuron resources"),
    (with_container(resources={"requests": {"aws.amazon.com/neuron": 1}}), "must not request Neuron resources"),
    (with_container(env=[{"name": "NEURON_RT_VISIBLE_CORES", "value": "0-3"}]), "must not set NEURON_RT_VISIBLE_CORES"),
    ({**inference("x" * 64, cores=2)}, "metadata.name must be at most 63 characters"),
    ({k: v for k, v in inference("bad").items() if k != "spec"}, "spec"),
]


@pytest.mark.parametrize("resource,message", INVALID, ids=[m for _, m in INVALID])
def test_invalid_specs_are_rejected_by_the_api_server(local_cluster, crd, namespace, resource, message):
    result = apply(local_cluster, namespace, resource, check=False)
    assert result.returncode != 0, f"accepted: {resource}"
    assert message in result.stderr, result.stderr
    assert not local_cluster.kubectl("get", "ninf,pods", "-n", namespace, "-o", "name").stdout.strip()


def test_objects_that_pass_the_schema_but_cannot_work_get_a_reason(local_cluster, operator, namespace, fleet, wait_for):
    nodes = fleet({"inf2.48xlarge": 1})
    privileged = inference("privileged", cores=2, pool=nodes.pool)
    privileged["spec"]["template"]["spec"]["hostNetwork"] = True
    no_image = inference("no-image", cores=2, pool=nodes.pool)
    del no_image["spec"]["template"]["spec"]["containers"][0]["image"]
    nowhere = inference("nowhere", cores=2, pool=nodes.pool)
    nowhere["spec"]["placement"]["nodeSelector"]["node.kubernetes.io/instance-type"] = "trn2.48xlarge"
    too_big = inference("too-big", cores=32, pool=nodes.pool)
    good = inference("good", cores=2, replicas=2, pool=nodes.pool)
    apply(local_cluster, namespace, privileged, no_image, nowhere, too_big, good)

    expected = {
        "privileged": ("InvalidSpec", "hostNetwork"),
        "no-image": ("PodRejected", "image"),
        "nowhere": ("Unschedulable", "nodeSelector"),
        "too-big": ("Unschedulable", "32"),
    }
    for name, (reason, words) in expected.items():
        placed = wait_for(
            lambda name=name, reason=reason: (
                condition(get_inference(local_cluster, namespace, name), "Placed").get("reason") == reason
                and condition(get_inference(local_cluster, namespace, name), "Placed")
            ),
            60,
            f"{name}: Placed reason {reason}",
        )
        assert placed["status"] == "False" and words in placed["message"], placed
        assert not pods_of(local_cluster, namespace, name), f"{name} got pods"
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "good", 2), 60, "the valid resource placed")
    assert operator.alive()

    # Fixing the spec is enough: the new generation is reconciled and placed.
    fixed = copy.deepcopy(privileged)
    del fixed["spec"]["template"]["spec"]["hostNetwork"]
    apply(local_cluster, namespace, fixed)
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "privileged", 1), 60, "the fixed resource placed")


@pytest.fixture
def operator_with_env(operator_factory):
    """``operator_with_env(log_name, **env)``: an operator configured through its environment (as the
    chart configures it) in place of the session's operator, for one test."""
    return lambda log_name, **env: operator_factory(log_name=log_name, env=env)


def restricted_ready(name: str, pool: str) -> dict:
    """A resource whose template meets the restricted profile."""
    resource = inference(name, cores=2, pool=pool)
    pod_spec = resource["spec"]["template"]["spec"]
    pod_spec["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    pod_spec["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    return resource


def test_the_restricted_level_refuses_each_rule_by_field_and_admits_a_compliant_template(
    local_cluster, operator_with_env, namespace, fleet, wait_for
):
    restricted_operator = operator_with_env(
        "neuronplace-operator-restricted.log",
        NEURONPLACE_POD_SECURITY="restricted",
        NEURONPLACE_ALLOW_VOLUME_TYPES="gitRepo",
    )
    nodes = fleet({"inf2.48xlarge": 1})
    compliant = restricted_ready("compliant", nodes.pool)
    escalating = restricted_ready("escalating", nodes.pool)
    del escalating["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"]
    rooted = restricted_ready("rooted", nodes.pool)
    del rooted["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    with_nfs = restricted_ready("with-nfs", nodes.pool)
    with_nfs["spec"]["template"]["spec"]["volumes"] = [{"name": "m", "nfs": {"server": "10.0.0.1", "path": "/m"}}]
    # Allowed by NEURONPLACE_ALLOW_VOLUME_TYPES=gitRepo, but restricted's own volume list still refuses it.
    with_git = restricted_ready("with-git", nodes.pool)
    with_git["spec"]["template"]["spec"]["volumes"] = [{"name": "g", "gitRepo": {"repository": "https://x/y"}}]
    apply(local_cluster, namespace, compliant, escalating, rooted, with_nfs, with_git)

    expected = {
        "escalating": "template.spec.containers[0].securityContext.allowPrivilegeEscalation: must be set to false",
        "rooted": "template.spec.containers[0].securityContext.runAsNonRoot: must be true",
        "with-nfs": "template.spec.volumes[0] (m): nfs volumes are refused",
        "with-git": "template.spec.volumes[0] (g): gitRepo volumes are not allowed; the restricted level admits only",
    }
    for name, words in expected.items():
        placed = wait_for(
            lambda name=name: (
                condition(get_inference(local_cluster, namespace, name), "Placed").get("reason") == "InvalidSpec"
                and condition(get_inference(local_cluster, namespace, name), "Placed")
            ),
            60,
            f"{name}: refused as InvalidSpec",
        )
        assert words in placed["message"], placed["message"]
        assert not pods_of(local_cluster, namespace, name), f"{name} got pods"
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "compliant", 1), 60, "the compliant resource placed")
    assert restricted_operator.alive()


def test_the_operators_own_namespace_is_not_served_unless_allowed(
    local_cluster, operator_with_env, namespace, fleet, wait_for
):
    # The test's namespace stands in for the operator's own (the chart sets it from the pod's namespace).
    refusing = operator_with_env("neuronplace-operator-own-namespace.log", NEURONPLACE_OPERATOR_NAMESPACE=namespace)
    nodes = fleet({"inf2.48xlarge": 1})
    apply(local_cluster, namespace, inference("here", cores=2, pool=nodes.pool))
    placed = wait_for(
        lambda: (
            condition(get_inference(local_cluster, namespace, "here"), "Placed").get("reason") == "NamespaceNotServed"
            and condition(get_inference(local_cluster, namespace, "here"), "Placed")
        ),
        60,
        "refused as NamespaceNotServed",
    )
    assert placed["status"] == "False" and "the operator's own namespace" in placed["message"], placed
    # Events were looked at at once; a resync and a margin later (the operator's other look): still no pod.
    hold(
        lambda: not pods_of(local_cluster, namespace, "here") or pytest.fail("a pod in the operator's namespace"),
        TEST_TIMINGS["resync_seconds"] + 1,
    )

    # The setting lets it through: the same resource is placed. The first operator stops (SIGTERM
    # releases its Lease at once): it would otherwise hold the Lease, and only the Lease's holder acts.
    refusing.stop()
    operator_with_env(
        "neuronplace-operator-own-namespace-served.log",
        NEURONPLACE_OPERATOR_NAMESPACE=namespace,
        NEURONPLACE_SERVE_OPERATOR_NAMESPACE="true",
    )
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "here", 1), 60, "placed once served")
