"""The chart's production defaults (issue 28): common labels on every object, a value for every
operator setting, the operator's PriorityClass, node affinity off Neuron (and, if asked, Karpenter)
nodes, a startup probe and ``karpenter.sh/do-not-disrupt``. Rendered with the cluster's helm; the
PriorityClass and the Deployment also pass a server-side dry run.
"""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import yaml

from neuronplace.local.fleet import KWOK_TOLERATION, POOL_LABEL, build_node
from neuronplace.operator.settings import OperatorSettings, env_name
from neuronplace.placement.names import INSTANCE_TYPE_LABEL
from neuronplace.placement.topology import INSTANCE_TOPOLOGIES
from support.chart import CHART, MONITORING_ON, container_env, helm_template

pytestmark = pytest.mark.cluster

COMMON_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
)
EVERYTHING_ON = [
    *MONITORING_ON,
    "--set",
    "networkPolicy.enabled=true",
    "--set",
    "commonLabels.team=platform",
]


def deployment_of(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "Deployment")


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_every_object_carries_the_common_labels(local_cluster, namespace, mode):
    values = ["--set", f"watch.namespaces={{{namespace}}}"] if mode == "namespaced" else []
    docs = helm_template(local_cluster, namespace, *EVERYTHING_ON, *values)
    kinds = {doc["kind"] for doc in docs}
    assert {"CustomResourceDefinition", "PriorityClass", "ServiceMonitor", "PrometheusRule", "Job"} <= kinds, kinds
    missing = [
        f"{doc['kind']}/{doc['metadata']['name']}: {label}"
        for doc in docs
        for label in (*COMMON_LABELS, "team")
        if label not in (doc["metadata"].get("labels") or {})
    ]
    assert not missing, missing
    release = {doc["metadata"]["labels"]["app.kubernetes.io/instance"] for doc in docs}
    assert release == {"np"}


def test_every_operator_setting_has_a_chart_value(local_cluster, namespace):
    """Each OperatorSettings field reaches the operator as its NEURONPLACE_* variable, and the chart's
    defaults are the operator's own (metrics are served on 9090 by default; the operator namespace
    is the pod's; the leader-election Lease is the release's, in its namespace, where the chart's Role
    grants it; each pod's identity is its name). A setting added without a chart value fails here."""
    env = container_env(deployment_of(helm_template(local_cluster, namespace)))
    missing = [env_name(f.name) for f in fields(OperatorSettings) if env_name(f.name) not in env]
    assert not missing, f"settings without a chart value (values.yaml + templates/deployment.yaml): {missing}"
    chart, defaults = OperatorSettings.from_env(env), OperatorSettings()
    differ = {f.name for f in fields(OperatorSettings) if getattr(chart, f.name) != getattr(defaults, f.name)}
    assert differ == {
        "metrics_port",
        "operator_namespace",
        "leader_election_namespace",
        "leader_election_id",
        "pod_name",
    }, differ
    assert chart.metrics_port == 9090 and chart.operator_namespace == namespace
    assert chart.leader_election_namespace == namespace and chart.leader_election_id.endswith("neuronplace")


def test_the_charts_neuron_instance_types_are_the_known_ones():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert sorted(values["operatorNodeAffinity"]["neuronInstanceTypes"]) == sorted(INSTANCE_TOPOLOGIES)


def node_terms(deployment: dict) -> list[dict]:
    affinity = deployment["spec"]["template"]["spec"].get("affinity") or {}
    required = (affinity.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    return required.get("nodeSelectorTerms") or []


def test_production_defaults(local_cluster, namespace):
    docs = helm_template(local_cluster, namespace)
    deployment = deployment_of(docs)
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    # The operator's own PriorityClass, made by the chart, above ordinary workloads.
    (own,) = [d for d in docs if d["kind"] == "PriorityClass" and d["value"] > 0]
    assert pod["spec"]["priorityClassName"] == own["metadata"]["name"] == "np-neuronplace"
    assert own["value"] == 1000000 and own["globalDefault"] is False
    (container,) = pod["spec"]["containers"]
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 300
    # One term, every expression must hold: not a Neuron instance type, not a Karpenter AWS accelerator node.
    (term,) = node_terms(deployment)
    expressions = {e["key"]: e for e in term["matchExpressions"]}
    instance_types = expressions["node.kubernetes.io/instance-type"]
    assert instance_types["operator"] == "NotIn" and set(instance_types["values"]) == set(INSTANCE_TOPOLOGIES)
    accelerator = expressions["karpenter.k8s.aws/instance-accelerator-manufacturer"]
    assert accelerator == {"key": accelerator["key"], "operator": "NotIn", "values": ["aws"]}
    assert "karpenter.sh/nodepool" not in expressions

    result = local_cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump_all([own, deployment]),
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_production_defaults_can_be_changed(local_cluster, namespace):
    docs = helm_template(
        local_cluster,
        namespace,
        "--set",
        "priorityClassName=system-cluster-critical",
        "--set",
        "operatorNodeAffinity.avoidKarpenterNodes=true",
        "--set",
        "karpenterDoNotDisrupt=false",
    )
    pod = deployment_of(docs)["spec"]["template"]
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert not [d for d in docs if d["kind"] == "PriorityClass" and d["value"] > 0]
    assert "karpenter.sh/do-not-disrupt" not in (pod["metadata"].get("annotations") or {})
    (term,) = node_terms(deployment_of(docs))
    assert {"key": "karpenter.sh/nodepool", "operator": "DoesNotExist"} in term["matchExpressions"]

    # An affinity of the user's own replaces the default node affinity (the replicas' spreading stays);
    # nothing at all without either, with one replica.
    docs = helm_template(
        local_cluster,
        namespace,
        "--set-json",
        'affinity={"nodeAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":[]}}',
    )
    affinity = deployment_of(docs)["spec"]["template"]["spec"]["affinity"]
    assert affinity["nodeAffinity"] == {"preferredDuringSchedulingIgnoredDuringExecution": []}
    assert set(affinity) == {"nodeAffinity", "podAntiAffinity"}
    docs = helm_template(
        local_cluster,
        namespace,
        "--set",
        "operatorNodeAffinity.avoidNeuronNodes=false",
        "--set",
        "priorityClass.create=false",
        "--set",
        "replicaCount=1",
    )
    spec = deployment_of(docs)["spec"]["template"]["spec"]
    assert "affinity" not in spec and "priorityClassName" not in spec


def test_kube_scheduler_keeps_the_operator_pod_off_neuron_nodes(local_cluster, namespace, fleet, wait_for):
    """The rendered pod's node affinity, judged by the real kube-scheduler: it binds to a
    general-purpose node, never to a Neuron one."""
    neuron = fleet({"inf2.xlarge": 1})
    general = build_node(f"{neuron.pool}-general", "inf2.xlarge", labels={POOL_LABEL: neuron.pool})
    general["metadata"]["labels"][INSTANCE_TYPE_LABEL] = "m7i.large"
    for resources in (general["status"]["capacity"], general["status"]["allocatable"]):
        for name in [r for r in resources if r.startswith("aws.amazon.com/")]:
            del resources[name]
    local_cluster.kubectl("create", "-f", "-", input=json.dumps(general))
    local_cluster.wait_nodes([general["metadata"]["name"]])

    template = deployment_of(helm_template(local_cluster, namespace))["spec"]["template"]

    def operator_pod(name: str, node_selector: dict) -> dict:
        (container,) = template["spec"]["containers"]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "affinity": template["spec"]["affinity"],
                "nodeSelector": node_selector,
                "tolerations": [KWOK_TOLERATION],
                "containers": [{"name": "operator", "image": container["image"]}],
            },
        }

    pods = [
        operator_pod("anywhere", {POOL_LABEL: neuron.pool}),
        operator_pod("neuron", {"kubernetes.io/hostname": neuron[0]}),
    ]
    local_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(pods))

    def scheduled(name: str) -> dict:
        pod = local_cluster.get_json("pod", name, "-n", namespace)
        return next((c for c in pod["status"].get("conditions") or [] if c["type"] == "PodScheduled"), {}) | {
            "node": pod["spec"].get("nodeName")
        }

    bound = wait_for(lambda: scheduled("anywhere")["node"], 60, "the pod bound")
    assert bound == general["metadata"]["name"]
    refused = wait_for(
        lambda: scheduled("neuron").get("reason") == "Unschedulable" and scheduled("neuron"), 60, "refused"
    )
    assert refused["node"] is None and "affinity" in refused["message"], refused
