"""The chart's monitoring objects (ServiceMonitor, PrometheusRule, Grafana dashboard): off by
default, lint-clean, accepted by a server-side dry run with the monitoring.coreos.com CRDs installed
(minimal stand-ins, tests/support/manifests/monitoring-crds.yaml), and every expression of the
dashboard and the alerts reads only metric names and labels a running operator exposes.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from neuronplace.local.operator_process import free_port
from neuronplace.placement.names import CORES_ANNOTATION, INFERENCE_LABEL
from support.builders import inference
from support.chart import CHART, MONITORING_ON, helm_template, server_version
from support.cluster import apply, condition, get_inference, placed_and_ready
from support.promql import parse

pytestmark = pytest.mark.cluster

MONITORING_CRDS = Path(__file__).resolve().parents[1] / "support" / "manifests" / "monitoring-crds.yaml"
MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
# Labels Prometheus adds to every series of a target scraped through a ServiceMonitor.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}


def test_monitoring_objects_are_off_by_default(local_cluster, namespace):
    kinds = {doc["kind"] for doc in helm_template(local_cluster, namespace)}
    assert not kinds & MONITORING_KINDS, kinds


def test_monitoring_objects_lint_and_pass_server_side_dry_run(local_cluster, namespace):
    values = [
        *MONITORING_ON,
        "--set",
        "metrics.serviceMonitor.namespace=monitoring",
        "--set-json",
        'metrics.serviceMonitor.labels={"release":"kps"}',
        "--set",
        "metrics.prometheusRule.runbookBaseUrl=https://example.com/monitoring",
    ]
    lint = local_cluster.helm("lint", "--strict", str(CHART), "--kube-version", server_version(local_cluster), *values)
    assert "0 chart(s) failed" in lint.stdout and "[WARNING]" not in lint.stdout, lint.stdout
    docs = {doc["kind"]: doc for doc in helm_template(local_cluster, namespace, *values)}
    monitor, rule, dashboard = docs["ServiceMonitor"], docs["PrometheusRule"], docs["ConfigMap"]
    assert monitor["metadata"]["namespace"] == "monitoring" and monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [namespace]
    service = docs["Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"] and monitor["spec"]["endpoints"][0][
        "honorLabels"
    ]
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert set(alerts) == {
        "NeuronplaceOperatorDown",
        "NeuronplaceReplicasUnavailable",
        "NeuronplaceWaitingForCapacityTooLong",
        "NeuronplaceSchedulerNotResponding",
        "NeuronplaceInconsistentClaims",
    }
    for name, alert in alerts.items():
        assert alert["annotations"]["runbook_url"] == f"https://example.com/monitoring#{name.lower()}"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["neuronplace.json"])["uid"] == "neuronplace"

    local_cluster.kubectl("apply", "--server-side", "-f", str(MONITORING_CRDS))
    try:
        for crd in ("servicemonitors", "prometheusrules"):
            local_cluster.kubectl(
                "wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}.monitoring.coreos.com"
            )
        local_cluster.kubectl("create", "namespace", "monitoring", check=False)
        manifest = "\n---\n".join(
            yaml.safe_dump(docs[kind]) for kind in ("ServiceMonitor", "PrometheusRule", "ConfigMap")
        )
        result = local_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("(server dry run)") == 3, result.stdout
    finally:
        local_cluster.kubectl("delete", "-f", str(MONITORING_CRDS), "--ignore-not-found", "--wait=false")
        local_cluster.kubectl("delete", "namespace", "monitoring", "--ignore-not-found", "--wait=false")


@pytest.mark.parametrize(
    "values, message",
    [(["metrics.enabled=false"], "needs metrics.enabled"), (["metrics.address=127.0.0.1"], "not loopback")],
)
def test_service_monitor_without_a_scrapable_metrics_port_is_refused(local_cluster, values, message):
    result = local_cluster.helm(
        "template",
        "np",
        str(CHART),
        "--kube-version",
        server_version(local_cluster),
        *MONITORING_ON,
        *[arg for value in values for arg in ("--set", value)],
        check=False,
    )
    assert result.returncode != 0 and message in result.stderr, result.stderr


def exposed(text: str) -> tuple[dict[str, set[str]], set[str]]:
    """The sample names of an exposition with the label names their samples carry, and every sample
    name its families declare (a family without samples has no labels to show)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    sampled: dict[str, set[str]] = {}
    declared: set[str] = set()
    for family in text_string_to_metric_families(text):
        declared.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        for sample in family.samples:
            sampled.setdefault(sample.name, set()).update(sample.labels)
    return sampled, declared | set(sampled)


def chart_expressions(cluster, namespace: str) -> dict[str, str]:
    """Every PromQL expression of the rendered alerts and of the dashboard, by where it is."""
    docs = helm_template(cluster, namespace, *MONITORING_ON)
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    expressions = {f"alert {r['alert']}": r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]}
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expressions[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(metric, label): the metric must carry the label
            metric, label = variable["definition"].removeprefix("label_values(").rstrip(")").split(", ")
            expressions[f"variable {variable['name']}"] = f"sum by ({label}) ({metric})"
    return expressions


def test_every_dashboard_and_alert_expression_reads_exposed_series(
    local_cluster, operator_factory, namespace, fleet, wait_for
):
    port = free_port()
    operator_factory(log_name="neuronplace-operator-monitoring.log", metrics_port=port)
    url = f"http://127.0.0.1:{port}/metrics"
    nodes = fleet({"inf2.xlarge": 1})  # two NeuronCores
    # Every series the chart reads must have a sample to show its labels: placed replicas, one that
    # waits for a new node (capacity wait, failures), a hand-made pod claiming cores (inconsistent claims).
    apply(local_cluster, namespace, inference("served", cores=1, replicas=1, pool=nodes.pool))
    apply(local_cluster, namespace, inference("waits", cores=8, replicas=1, pool=nodes.pool))
    fake = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "fake", "labels": {INFERENCE_LABEL: "ghost"}, "annotations": {CORES_ANNOTATION: "1"}},
        "spec": {
            "nodeName": nodes[0],
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "c", "image": "tenant:1"}],
        },
    }
    apply(local_cluster, namespace, fake)
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "served", 1), 90, "served placed and ready")
    wait_for(
        lambda: (
            condition(get_inference(local_cluster, namespace, "waits"), "WaitingForCapacity").get("status") == "True"
        ),
        60,
        "waits WaitingForCapacity",
    )

    def scrape_all():
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        sampled, declared = exposed(text)
        wanted = (
            "neuronplace_capacity_wait_seconds",
            "neuronplace_node_inconsistent_claims",
            "neuronplace_time_to_place_seconds_bucket",
        )
        return (sampled, declared) if all(name in sampled for name in wanted) else None

    sampled, declared = wait_for(scrape_all, 60, "every series the chart reads to have a sample")
    problems = []
    for where, expression in chart_expressions(local_cluster, namespace).items():
        selectors, grouping = parse(expression)
        assert selectors, f"{where}: no series in {expression!r}"
        available = set(TARGET_LABELS)
        for selector in selectors:
            if selector.metric not in declared:
                problems.append(f"{where}: {selector.metric} is not exposed")
                continue
            if selector.metric not in sampled:
                problems.append(f"{where}: {selector.metric} has no sample to show its labels")
                continue
            labels = sampled[selector.metric] | TARGET_LABELS
            problems += [f"{where}: {selector.metric} has no label {label}" for label in selector.labels - labels]
            available |= labels
        problems += [f"{where}: no series read has the label {label}" for label in grouping - available]
    assert not problems, "\n".join(problems)
