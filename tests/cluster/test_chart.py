"""The Helm chart on the real local control plane: lint, server-side dry-run, install/uninstall
hygiene, least-privilege RBAC (kubectl auth can-i), and the operator running locally AS the chart's
ServiceAccount (a token kubeconfig) placing a NeuronInference: the RBAC is sufficient, not just
plausible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

from neuronplace.local.operator_process import free_port
from support.builders import inference
from support.chart import (
    CHART,
    RELEASE,
    container_env,
    crd_exists,
    helm_template,
    install,
    server_version,
    token_kubeconfig,
)

ROOT = Path(__file__).resolve().parents[2]
CRD_SOURCE = ROOT / "crds" / "neuronplace.io_neuroninferences.yaml"
CRD_CHART_COPY = CHART / "files" / "neuronplace.io_neuroninferences.yaml"
CRD_NAME = "neuroninferences.neuronplace.io"
SERVICE_ACCOUNT = "np-neuronplace"  # <release>-<chart>: the chart's fullname


def test_the_charts_crd_is_the_generated_crd():
    # One source of truth: placement/crd.py → crds/ (checked by test_crd.py) → the chart's copy.
    assert CRD_CHART_COPY.read_bytes() == CRD_SOURCE.read_bytes(), (
        "charts/neuronplace/files/ has a stale CRD; run: cp crds/neuronplace.io_neuroninferences.yaml charts/neuronplace/files/"
    )


def test_chart_app_version_is_the_package_version():
    # image.tag defaults to appVersion: the chart installs the operator built from this checkout.
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


def test_every_value_is_documented():
    """Each key in values.yaml has a comment right above it (or above its parent block's first key)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        key, _, rest = stripped.partition(":")
        is_block = rest.strip() == ""
        previous = lines[index - 1].strip() if index else ""
        child = lines[index + 1].strip() if index + 1 < len(lines) else ""
        documented = previous.startswith("#") or (is_block and child.startswith("#"))
        # keys nested inside a documented map value (resources.requests.cpu, ...) are example data
        indent = len(line) - len(line.lstrip())
        parent = next(
            (
                lines[j]
                for j in range(index - 1, -1, -1)
                if lines[j].strip()
                and not lines[j].strip().startswith("#")
                and len(lines[j]) - len(lines[j].lstrip()) < indent
            ),
            "",
        )
        if not documented and not parent.strip().startswith(
            (
                "resources",
                "podSecurityContext",
                "securityContext",
                "requests",
                "limits",
                "seccompProfile",
                "capabilities",
            )
        ):
            undocumented.append(key)
    assert not undocumented, f"values.yaml keys without a comment: {undocumented}"


# ---- helpers ---------------------------------------------------------------------------------


def can_i(cluster, verb: str, resource: str, namespace: str | None, service_account: str) -> bool:
    """`kubectl auth can-i` as the ServiceAccount (``ns:name``); ``pods/exec`` means the subresource."""
    resource, _, subresource = resource.partition("/")
    args = ["auth", "can-i", verb, resource, f"--as=system:serviceaccount:{service_account}"]
    args += [f"--subresource={subresource}"] if subresource else []
    args += ["-n", namespace] if namespace else []
    result = cluster.kubectl(*args, check=False)
    assert result.stdout.strip() in ("yes", "no"), result.stdout + result.stderr
    return result.stdout.strip() == "yes"


def cluster_inventory(cluster, skip_namespaces: set[str] = frozenset()) -> set[str]:
    """Every object's kind/namespace/name the API lists, except the ones that come and go on their own."""
    kinds = cluster.kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    volatile = {
        "events",
        "events.events.k8s.io",
        "leases.coordination.k8s.io",
        "endpointslices.discovery.k8s.io",
        "endpoints",
        "pods",
        "nodes",
        "componentstatuses",
        "namespaces",
    }
    kinds = [k for k in kinds if k not in volatile]
    listing = cluster.kubectl(
        "get",
        ",".join(kinds),
        "--all-namespaces",
        "--ignore-not-found",
        "-o",
        "jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name}{'\\n'}{end}",
        timeout=180,
    ).stdout
    return {line for line in listing.splitlines() if line and line.split("/")[1] not in skip_namespaces}


# ---- lint and dry-run -----------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.parametrize(
    "values",
    [[], ["--set", "watch.namespaces={team-a,team-b}", "--set", "operator.logFormat=json"]],
    ids=["cluster-wide", "namespaced"],
)
def test_helm_lint_is_clean(local_cluster, values):
    result = local_cluster.helm(
        "lint", "--strict", str(CHART), "--kube-version", server_version(local_cluster), *values
    )
    assert "0 chart(s) failed" in result.stdout, result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.cluster
def test_offline_render_assumes_the_kubernetes_helm_was_built_for(local_cluster):
    # No --kube-version: the built helm carries helm's own stamps, so the chart's kubeVersion holds.
    rendered = local_cluster.helm("template", RELEASE, str(CHART)).stdout
    assert "kind: Deployment" in rendered
    assert local_cluster.helm("lint", "--strict", str(CHART)).returncode == 0


@pytest.mark.cluster
@pytest.mark.parametrize(
    "bad, message",
    [
        (["--set", "operator.numbering=chip"], "numbering"),
        (["--set", "operator.logFormat=xml"], "logFormat"),
        (["--set", "watch.namespaces={Bad_Name}"], "namespaces"),
        (["--set", "operator.workers=0"], "workers"),
        (["--set", "operator.podSecurity=strict"], "podSecurity"),
        (["--set", "admission.enabled=yes"], "admission"),
        (["--set", "operator.allowVolumeTypes={hostPath}"], "allowVolumeTypes"),
        (["--set", "networkPolicy.apiServerPorts={}"], "apiServerPorts"),
    ],
)
def test_schema_refuses_bad_values(local_cluster, bad, message):
    result = local_cluster.helm(
        "template", RELEASE, str(CHART), "--kube-version", server_version(local_cluster), *bad, check=False
    )
    assert result.returncode != 0 and message in result.stderr, result.stderr


@pytest.mark.cluster
@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_rendered_chart_passes_server_side_dry_run(local_cluster, namespace, mode):
    values = ["--set", f"watch.namespaces={{{namespace}}}"] if mode == "namespaced" else []
    docs = helm_template(local_cluster, namespace, *values)
    kinds = sorted(doc["kind"] for doc in docs)
    expected = {
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "Service",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    assert expected <= set(kinds), kinds
    # Roles for watched namespaces; the leader-election Role is there in both modes.
    watched_roles = [d for d in docs if d["kind"] == "Role" and not d["metadata"]["name"].endswith("-leader-election")]
    assert bool(watched_roles) == (mode == "namespaced")
    manifest = "\n---\n".join(
        yaml.safe_dump(doc) for doc in docs if "helm.sh/hook" not in doc["metadata"].get("annotations", {})
    )
    result = local_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    assert result.returncode == 0, result.stderr
    assert "(server dry run)" in result.stdout


@pytest.mark.cluster
def test_network_policy_is_optional_and_admits_only_health_metrics_api_and_dns(local_cluster, namespace):
    assert not [d for d in helm_template(local_cluster, namespace) if d["kind"] == "NetworkPolicy"]
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    docs = helm_template(
        local_cluster,
        namespace,
        "--set",
        "networkPolicy.enabled=true",
        "--set-json",
        f"networkPolicy.ingressFrom=[{json.dumps(monitoring)}]",
    )
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    spec = policy["spec"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert spec["podSelector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = spec["ingress"]
    assert ingress["from"] == [monitoring] and sorted(p["port"] for p in ingress["ports"]) == [8080, 9090]
    egress_ports = sorted((p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"])
    assert egress_ports == [(53, "TCP"), (53, "UDP"), (443, "TCP"), (6443, "TCP")]
    result = local_cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(policy), check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.cluster
def test_rendered_deployment_is_restricted_with_settings(local_cluster, namespace):
    values = [
        "--set",
        f"watch.namespaces={{{namespace}}}",
        "--set",
        "operator.numbering=global",
        "--set",
        "operator.nodeSelector=neuronplace.io/pool=a",
        "--set",
        "operator.logFormat=json",
        "--set",
        "operator.podSecurity=restricted",
    ]
    docs = helm_template(local_cluster, namespace, *values)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    # Two replicas, one leading (tests/cluster/test_chart_ha.py): a rolling update is safe.
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert f"--liveness=http://0.0.0.0:{container['ports'][0]['containerPort']}/healthz" in container["args"]
    assert "--standalone" in container["args"] and f"--namespace={namespace}" in container["args"]
    assert "--log-format=json" in container["args"]
    env = container_env(deployment)

    # The chart's environment is exactly what the operator's settings read back.
    from neuronplace.operator.settings import OperatorSettings

    settings = OperatorSettings.from_env(env)
    assert settings.namespaces == (namespace,)
    assert settings.numbering == "global" and settings.node_selector == "neuronplace.io/pool=a"
    assert settings.log_format == "json" and settings.allow_privileged is False
    assert env["NEURONPLACE_POD_SECURITY"] == "restricted"
    # Its own namespace (the release's, from the pod's metadata) is not served by default.
    assert settings.operator_namespace == namespace and settings.serve_operator_namespace is False
    assert settings.template_policy().allowed_volume_types == frozenset() and settings.metrics_address == "0.0.0.0"
    assert (
        settings.metrics_port == 9090
        and {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    )
    no_metrics = helm_template(local_cluster, namespace, "--set", "metrics.enabled=false")
    no_metrics_env = next(d for d in no_metrics if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][
        0
    ]["env"]
    assert {"name": "NEURONPLACE_METRICS_PORT", "value": "0"} in no_metrics_env
    assert {"name": "NEURONPLACE_POD_SECURITY", "value": "baseline"} in no_metrics_env, "the default level"
    unknown = {name for name in env if name not in OperatorSettings().to_env()}
    assert not unknown, f"the chart sets variables the operator does not read: {unknown}"

    # The pod template passes the API server's own "restricted" Pod Security admission: for a
    # Deployment it answers with a "would violate PodSecurity" warning when it would not.
    local_cluster.kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
        "--overwrite",
    )
    result = local_cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(deployment), check=False
    )
    assert result.returncode == 0, result.stderr
    assert "PodSecurity" not in result.stderr, result.stderr
    # ... and the same admission does flag a template that breaks the profile (the check can fail).
    unsafe = yaml.safe_load(yaml.safe_dump(deployment))
    unsafe["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    result = local_cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(unsafe), check=False
    )
    assert "would violate PodSecurity" in result.stderr, result.stderr


@pytest.mark.cluster
def test_rendered_crd_is_the_generated_crd_with_the_keep_policy(local_cluster, namespace):
    docs = helm_template(local_cluster, namespace)
    crd = next(d for d in docs if d["kind"] == "CustomResourceDefinition")
    source = yaml.safe_load(CRD_SOURCE.read_text())
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["spec"] == source["spec"] and crd["metadata"]["name"] == source["metadata"]["name"]
    without_crd = helm_template(local_cluster, namespace, "--set", "crds.install=false")
    assert "CustomResourceDefinition" not in {d["kind"] for d in without_crd}
    not_kept = helm_template(local_cluster, namespace, "--set", "crds.keep=false")
    crd = next(d for d in not_kept if d["kind"] == "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


# ---- install, uninstall, RBAC ---------------------------------------------------------------


@pytest.mark.cluster
def test_install_then_uninstall_leaves_the_cluster_as_before_except_the_kept_crd(local_cluster, namespace):
    # What kube-controller-manager adds to every new namespace must be there before the snapshot.
    wait_for(
        lambda: (
            local_cluster.kubectl(
                "get", "serviceaccount/default", "configmap/kube-root-ca.crt", "-n", namespace, check=False
            ).returncode
            == 0
        ),
        60,
        "the namespace's default objects",
    )
    crd_before = crd_exists(local_cluster)
    before = cluster_inventory(local_cluster)
    output = install(local_cluster, namespace)
    # NOTES.txt tells the user what to do next, with this release's names.
    notes = output[output.index("NOTES:") :]
    for step in (
        f"kubectl -n {namespace} rollout status deployment/np-neuronplace",
        f"helm test np -n {namespace}",
        "kubectl get ninf",
        "every namespace",
        "helm.sh/resource-policy: keep",
    ):
        assert step in notes, notes
    during = cluster_inventory(local_cluster)
    added = {line.split("/")[0] for line in during - before}
    assert {
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    } <= added, during - before
    status = local_cluster.helm("status", RELEASE, "-n", namespace, "-o", "json").stdout
    assert json.loads(status)["info"]["status"] == "deployed"

    local_cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "120s", timeout=180)
    # The kept CRD, and the APIService the API server registers for its group/version while it exists.
    crd_lines = {f"CustomResourceDefinition//{CRD_NAME}", "APIService//v1alpha1.neuronplace.io"}
    # The Deployment's ReplicaSet goes by garbage collection, a moment after the uninstall returns.
    deadline = time.monotonic() + 60
    while True:
        after = cluster_inventory(local_cluster)
        leftovers = after - before
        if leftovers <= crd_lines or time.monotonic() > deadline:
            break
        time.sleep(2)  # the poll interval (a full inventory of the cluster is many kubectl calls)
    assert leftovers <= crd_lines, f"left behind by helm uninstall: {sorted(leftovers)}"
    # Objects of earlier tests' namespaces (deleted in the background) may vanish meanwhile; ours must not.
    removed = {line for line in before - after if line.split("/")[1] in ("", namespace)}
    assert removed == set(), f"removed by install+uninstall: {sorted(removed)}"
    assert crd_exists(local_cluster), "the CRD is kept (helm.sh/resource-policy: keep)"
    if not crd_before:
        assert leftovers == crd_lines


# Exactly the calls operator/sync.py, operator/writes.py and kopf's watches make.
NEEDED_IN_WATCHED = [
    ("get", "neuroninferences.neuronplace.io"),
    ("list", "neuroninferences.neuronplace.io"),
    ("watch", "neuroninferences.neuronplace.io"),
    ("patch", "neuroninferences.neuronplace.io/status"),
    # What OwnerReferencesPermissionEnforcement asks of a pod creator naming its owner with
    # blockOwnerDeletion (tests/cluster/test_pod_admission.py runs the operator under it).
    ("update", "neuroninferences.neuronplace.io/finalizers"),
    ("get", "pods"),
    ("list", "pods"),
    ("watch", "pods"),
    ("create", "pods"),
    ("delete", "pods"),
    ("create", "events"),
    ("list", "persistentvolumeclaims"),
    ("watch", "persistentvolumeclaims"),
    *((verb, "resourceclaims.resource.k8s.io") for verb in ("get", "list", "watch", "create", "delete")),
]
NEEDED_CLUSTER = [
    ("list", "nodes"),
    ("watch", "nodes"),
    ("list", "priorityclasses.scheduling.k8s.io"),
    ("watch", "priorityclasses.scheduling.k8s.io"),
    ("list", "persistentvolumes"),
    ("watch", "persistentvolumes"),
    ("list", "storageclasses.storage.k8s.io"),
    ("watch", "storageclasses.storage.k8s.io"),
    ("list", "resourceslices.resource.k8s.io"),
    ("watch", "resourceslices.resource.k8s.io"),
]
FORBIDDEN_ANYWHERE = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("get", "configmaps"),
    ("create", "pods/exec"),
    ("create", "pods/attach"),
    ("get", "pods/log"),
    ("create", "pods/eviction"),
    ("create", "neuroninferences.neuronplace.io"),
    ("delete", "neuroninferences.neuronplace.io"),
    ("update", "neuroninferences.neuronplace.io"),
    ("patch", "neuroninferences.neuronplace.io"),
    ("update", "neuroninferences.neuronplace.io/status"),
    ("patch", "neuroninferences.neuronplace.io/finalizers"),
    ("update", "pods"),
    ("patch", "pods"),
    ("create", "deployments.apps"),
    ("create", "serviceaccounts/token"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("bind", "roles.rbac.authorization.k8s.io"),
    ("escalate", "roles.rbac.authorization.k8s.io"),
    ("update", "events"),
    ("update", "persistentvolumeclaims"),
    ("delete", "persistentvolumeclaims"),
    # kube-scheduler allocates claims; the operator never writes an allocation or changes a claim.
    ("update", "resourceclaims.resource.k8s.io/status"),
    ("patch", "resourceclaims.resource.k8s.io/status"),
    ("update", "resourceclaims.resource.k8s.io"),
]
FORBIDDEN_CLUSTER = [
    ("update", "nodes"),
    ("patch", "nodes"),
    ("delete", "nodes"),
    ("create", "nodes"),
    ("patch", "nodes/status"),
    ("update", "persistentvolumes"),
    ("delete", "persistentvolumes"),
    ("update", "storageclasses.storage.k8s.io"),
    ("create", "priorityclasses.scheduling.k8s.io"),
    ("delete", "priorityclasses.scheduling.k8s.io"),
    ("bind", "clusterroles.rbac.authorization.k8s.io"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("list", "namespaces"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("impersonate", "serviceaccounts"),
    ("create", "certificatesigningrequests.certificates.k8s.io"),
    ("create", "resourceslices.resource.k8s.io"),
    ("delete", "resourceslices.resource.k8s.io"),
]


def assert_rbac(cluster, service_account: str, allowed_namespaces: list[str], other_namespaces: list[str]) -> None:
    wrong = []
    for namespace in allowed_namespaces:
        wrong += [
            f"{verb} {res} in {namespace}: no"
            for verb, res in NEEDED_IN_WATCHED
            if not can_i(cluster, verb, res, namespace, service_account)
        ]
    wrong += [
        f"{verb} {res}: no" for verb, res in NEEDED_CLUSTER if not can_i(cluster, verb, res, None, service_account)
    ]
    for namespace in allowed_namespaces + other_namespaces:
        wrong += [
            f"{verb} {res} in {namespace}: yes"
            for verb, res in FORBIDDEN_ANYWHERE
            if can_i(cluster, verb, res, namespace, service_account)
        ]
    for namespace in other_namespaces:
        wrong += [
            f"{verb} {res} in {namespace}: yes"
            for verb, res in NEEDED_IN_WATCHED
            if can_i(cluster, verb, res, namespace, service_account)
        ]
    wrong += [
        f"{verb} {res}: yes" for verb, res in FORBIDDEN_CLUSTER if can_i(cluster, verb, res, None, service_account)
    ]
    assert not wrong, "RBAC differs from the least-privilege contract:\n" + "\n".join(wrong)


@pytest.mark.cluster
def test_rbac_namespaced_mode_is_least_privilege(local_cluster, namespace):
    watched = f"{namespace}-w"
    local_cluster.kubectl("create", "namespace", watched)
    try:
        install(local_cluster, namespace, "--set", f"watch.namespaces={{{watched}}}")
        # the operator's own namespace and an unrelated one are out of reach
        assert_rbac(local_cluster, f"{namespace}:{SERVICE_ACCOUNT}", [watched], [namespace, "default"])
        result = local_cluster.kubectl(
            "auth",
            "can-i",
            "list",
            "pods",
            "--all-namespaces",
            f"--as=system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}",
            check=False,
        )
        assert result.stdout.strip() == "no"
    finally:
        local_cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False, timeout=180)
        local_cluster.kubectl("delete", "namespace", watched, "--wait=false", check=False)


@pytest.mark.cluster
def test_rbac_cluster_wide_mode_is_least_privilege(local_cluster, namespace):
    try:
        install(local_cluster, namespace)
        assert_rbac(local_cluster, f"{namespace}:{SERVICE_ACCOUNT}", [namespace, "default"], [])
        result = local_cluster.kubectl(
            "auth",
            "can-i",
            "create",
            "pods",
            "--all-namespaces",
            f"--as=system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}",
            check=False,
        )
        assert result.stdout.strip() == "yes"
    finally:
        local_cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False, timeout=180)


# ---- the operator running as the chart's ServiceAccount -------------------------------------


def chart_operator_command(docs: list[dict]) -> tuple[list[str], dict[str, str]]:
    """The rendered Deployment's command, args and env, to run the same operator locally."""
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return container["command"] + container["args"], container_env(deployment)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)  # the poll interval: what is awaited is the predicate's answer
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, allow_privileged",
    [("namespaced", False), ("cluster-wide", True)],
    ids=["namespaced", "cluster-wide-allow-privileged"],
)
def test_operator_as_the_charts_service_account_places_a_neuroninference(
    local_cluster, namespace, fleet, tmp_path, mode, allow_privileged, operator
):
    # The session's admin-credentialed operator (tests/cluster/conftest.py) manages every node; it
    # must not do the work this test attributes to the ServiceAccount's operator. The next test
    # that asks for `operator` gets it started again.
    operator.stop()
    nodes = fleet({"inf2.xlarge": 2})
    watched = f"{namespace}-w"
    local_cluster.kubectl("create", "namespace", watched)
    # The node selector keeps this operator to this test's nodes (other operators may run in the session).
    values = ["--set", f"operator.nodeSelector=neuronplace.io/pool={nodes.pool}", "--set", "operator.resyncSeconds=5"]
    if mode == "namespaced":
        values += ["--set", f"watch.namespaces={{{watched}}}"]
    if allow_privileged:
        values += ["--set", "operator.allowPrivileged=true"]
    process = None
    log_path = tmp_path / "operator.log"
    try:
        install(local_cluster, namespace, *values)
        local_cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
        kubeconfig = token_kubeconfig(local_cluster, namespace, SERVICE_ACCOUNT, tmp_path / "sa.kubeconfig")
        # the token kubeconfig really is the ServiceAccount, not an admin
        denied = local_cluster.kubectl("--kubeconfig", str(kubeconfig), "get", "secrets", "-n", watched, check=False)
        assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr

        command, env = chart_operator_command(helm_template(local_cluster, namespace, *values))
        # Same flags and environment, on free local ports instead of the pod's 8080 and 9090.
        port, metrics_port = free_port(), free_port()
        command = [
            arg.replace(f":{8080}/healthz", f":{port}/healthz").replace("0.0.0.0", "127.0.0.1") for arg in command
        ]
        assert command[:2] == ["kopf", "run"] and env["NEURONPLACE_METRICS_PORT"] == "9090"
        env["NEURONPLACE_METRICS_PORT"] = str(metrics_port)
        run_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("NEURONPLACE_")},
            **env,
            "KUBECONFIG": str(kubeconfig),
        }
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "kopf", *command[1:]],
                env=run_env,
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def healthy():
            assert process.poll() is None, f"operator exited {process.returncode}:\n{log_path.read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    return response.status == 200 and json.loads(response.read()).get("ledger", {}).get("ready")
            except OSError:
                return False

        wait_for(healthy, 60, "the operator's /healthz")

        manifest = inference(
            "rbac-proof",
            namespace=watched,
            processes=None,
            strategy=None,
            image="example.com/model:1",
            labels={},
        )
        local_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))

        def running_pod():
            assert process.poll() is None, f"operator exited {process.returncode}:\n{log_path.read_text()[-4000:]}"
            pods = local_cluster.get_json("pods", "-n", watched, "-l", "neuronplace.io/inference=rbac-proof")["items"]
            return next((p for p in pods if p["status"].get("phase") == "Running"), None)

        try:
            pod = wait_for(running_pod, 90, "the replica pod to be Running")
        except AssertionError as timeout:
            state = local_cluster.kubectl("get", "ninf,pods", "-n", watched, "-o", "yaml", check=False).stdout
            raise AssertionError(f"{timeout}\n{state[-6000:]}\noperator log:\n{log_path.read_text()[-3000:]}") from None
        assert pod["metadata"]["name"] == "rbac-proof-0"
        assert pod["spec"]["nodeName"] in nodes
        assert pod["metadata"]["annotations"]["neuronplace.io/cores"] in ("0-1",)
        # Pod-template safety through the same operator: a privileged template and one naming another
        # namespace get no pods, only a condition saying why; the chart's allowPrivileged lets the
        # privileged one through (in its own namespace only).
        for name, template in (
            (
                "privileged",
                {
                    "spec": {
                        "hostNetwork": True,
                        "containers": [
                            {"name": "model", "image": "example.com/model:1", "securityContext": {"privileged": True}}
                        ],
                    }
                },
            ),
            (
                "elsewhere",
                {
                    "metadata": {"namespace": "kube-system"},
                    "spec": {"containers": [{"name": "model", "image": "example.com/model:1"}]},
                },
            ),
        ):
            unsafe = {
                **manifest,
                "metadata": {"name": name, "namespace": watched},
                "spec": {**manifest["spec"], "template": template},
            }
            applied = local_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(unsafe), check=False)
            if applied.returncode != 0:  # the CRD's schema may refuse it before the operator sees it
                assert "namespace" in applied.stderr or "privileged" in applied.stderr, applied.stderr
                continue

            if name == "privileged" and allow_privileged:
                wait_for(
                    lambda: (
                        local_cluster.kubectl("get", "pod", "privileged-0", "-n", watched, check=False).returncode == 0
                    ),
                    30,
                    "the privileged replica, allowed by the chart",
                )
                continue

            def refused(name=name):
                conditions = local_cluster.get_json("ninf", name, "-n", watched).get("status", {}).get("conditions", [])
                return next((c for c in conditions if c["type"] == "Placed" and c["reason"] == "InvalidSpec"), None)

            condition = wait_for(refused, 30, f"{name} to be refused")
            assert "allowPrivileged" in condition["message"] or "namespace" in condition["message"], condition
        for namespace_to_check in (watched, "kube-system"):
            pods = local_cluster.get_json("pods", "-n", namespace_to_check, "-l", "neuronplace.io/inference")["items"]
            allowed = (
                {"rbac-proof-0", "privileged-0"}
                if allow_privileged and namespace_to_check == watched
                else {"rbac-proof-0"}
            )
            assert {p["metadata"]["name"] for p in pods} <= allowed, pods

        log = log_path.read_text()
        assert "403" not in log and "forbidden" not in log.lower(), log[-4000:]
    finally:
        # Delete the resources while the operator still runs, so that it sees them go.
        local_cluster.kubectl("delete", "neuroninferences", "--all", "-n", watched, "--timeout=60s", check=False)
        if process is not None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        local_cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False, timeout=180)
        local_cluster.kubectl("delete", "namespace", watched, "--wait=false", check=False)


@pytest.mark.cluster
def test_helm_test_hook_runs_and_is_cleaned_up(local_cluster, namespace, fleet):
    # kwok runs no containers: it marks Job pods Succeeded, so on this cluster the hook proves the
    # plumbing (the Job is created, completes, is reported and deleted), not the HTTP check itself.
    fleet({"inf2.xlarge": 1})
    toleration = [
        "--set",
        "tolerations[0].key=kwok.x-k8s.io/node",
        "--set",
        "tolerations[0].operator=Exists",
        "--set",
        "tolerations[0].effect=NoSchedule",
    ]
    try:
        install(local_cluster, namespace, *toleration)
        result = local_cluster.helm("test", RELEASE, "-n", namespace, "--timeout", "90s", timeout=150, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "np-neuronplace-test" in result.stdout and "Succeeded" in result.stdout, result.stdout
        jobs = local_cluster.get_json("jobs", "-n", namespace)["items"]
        assert jobs == [], "hook-delete-policy hook-succeeded removes the Job"
    finally:
        local_cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False, timeout=180)
