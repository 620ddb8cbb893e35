"""The Helm chart in cluster tests, with the cluster's pinned helm: render, install, and what a
rendered Deployment's container gets."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import yaml

from neuronplace.placement.names import CRD_NAME

CHART = Path(__file__).resolve().parents[2] / "charts" / "neuronplace"
RELEASE = "np"
# Values that turn on every monitoring object the chart can render (all off by default).
MONITORING_ON = (
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "metrics.prometheusRule.enabled=true",
    "--set",
    "metrics.dashboard.enabled=true",
)


def server_version(cluster) -> str:
    """The API server's version: helm renders and lints for this cluster, not for its built-in default."""
    return json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]


def helm_template(cluster, namespace: str, *values: str, release: str = RELEASE) -> list[dict]:
    rendered = cluster.helm(
        "template", release, str(CHART), "--namespace", namespace, "--kube-version", server_version(cluster), *values
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def crd_exists(cluster) -> bool:
    return cluster.kubectl("get", "crd", CRD_NAME, check=False).returncode == 0


def adopt_crd(cluster, namespace: str, release: str = RELEASE) -> None:
    """The chart README's adoption step for a CRD that exists already (kubectl-applied or kept)."""
    cluster.kubectl("label", "crd", CRD_NAME, "app.kubernetes.io/managed-by=Helm", "--overwrite")
    cluster.kubectl(
        "annotate",
        "crd",
        CRD_NAME,
        "--overwrite",
        f"meta.helm.sh/release-name={release}",
        f"meta.helm.sh/release-namespace={namespace}",
    )


def install(cluster, namespace: str, *values: str, release: str = RELEASE) -> str:
    """helm install (adopting an existing CRD first); returns helm's output, NOTES included."""
    if crd_exists(cluster):
        adopt_crd(cluster, namespace, release)
    return cluster.helm(
        "install", release, str(CHART), "--namespace", namespace, "--wait=false", *values, timeout=240
    ).stdout


def container_env(deployment: dict, container: int = 0) -> dict[str, str]:
    """The environment a container of a rendered Deployment gets, as the kubelet would fill it in:
    plain values, ``fieldRef: metadata.namespace`` as the Deployment's namespace and
    ``metadata.name`` as a pod name of it (the only references the chart uses; any other fails here
    rather than being dropped)."""
    fields = {
        "metadata.namespace": deployment["metadata"]["namespace"],
        "metadata.name": f"{deployment['metadata']['name']}-pod",
    }
    env = {}
    for entry in deployment["spec"]["template"]["spec"]["containers"][container].get("env") or []:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            field = ((entry.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
            assert field in fields, f"unexpected env source {entry}"
            env[entry["name"]] = fields[field]
    return env


def token_kubeconfig(cluster, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig for the same API server that authenticates as the ServiceAccount (a bearer token
    from ``kubectl create token``). Self-contained (the CA embedded, no file paths of this machine),
    so a container can use it as well as a local process."""
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    server = dict(next(c for c in admin["clusters"] if c["name"] == context["cluster"])["cluster"])
    if "certificate-authority" in server:
        ca = Path(server.pop("certificate-authority")).read_bytes()
        server["certificate-authority-data"] = base64.b64encode(ca).decode()
    token = cluster.kubectl("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "operator",
        "clusters": [{"name": "local", "cluster": server}],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [
            {"name": "operator", "context": {"cluster": "local", "user": service_account, "namespace": namespace}}
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path
