"""Helpers for the operator's cluster tests: resources, pods, and the invariants every test checks."""

from __future__ import annotations

import base64
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import yaml

from neuronplace.local.autoscaler import TEST_CONSOLIDATE_AFTER, build_node_pool
from neuronplace.local.examples import example_file
from neuronplace.local.fleet import KWOK_TOLERATION, POOL_LABEL
from neuronplace.local.operator_process import TEST_TIMINGS
from neuronplace.placement import conditions
from neuronplace.placement.claims import node_of
from neuronplace.placement.names import (
    API_VERSION,
    AWS_NEURON_IDS,
    CORES_ANNOTATION,
    CRD_NAME,
    ENV_NODE_CORES,
    ENV_VISIBLE_CORES,
    INFERENCE_LABEL,
    KIND,
    NEURON_ALLOC_TIME,
    NEURON_ALLOCATED,
    NEURON_RESOURCE_TYPE,
    NEURONCORE_RESOURCE,
    TERMINAL_PHASES,
)
from neuronplace.runtime.coreset import CoreRange, parse_core_set

# The one reader of status.conditions; the tests take it from here too.
condition = conditions.condition
is_ready = conditions.is_ready

# Short on purpose: the tests make nodes NotReady and wait for the re-placement.
TEST_NODE_GRACE_SECONDS = TEST_TIMINGS["node_grace_seconds"]


def quick_node_pool(**narrowed) -> dict:
    """Karpenter's NodePool with the test bed's short ``consolidateAfter``: an emptied node goes in
    seconds. ``narrowed``: more ``build_node_pool`` arguments (instance types ...)."""
    return build_node_pool(consolidate_after=TEST_CONSOLIDATE_AFTER, **narrowed)


def hold(check: Callable[[], object], seconds: float, interval: float = 0.5) -> None:
    """Call ``check()`` (it asserts) every ``interval`` for ``seconds``, and once more at the end.

    For what must NOT happen for a while, where no event can say "it never will": the caller
    derives ``seconds`` from the operator timing that would make it happen (``TEST_TIMINGS``: a
    resync, a backoff, a grace period) and says why in a comment.
    """
    deadline = time.monotonic() + seconds
    while True:
        check()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(interval, left))  # between two looks at the state: only time is awaited here


def inference(
    name: str,
    *,
    cores: int = 2,
    replicas: int = 1,
    processes: int = 1,
    pool: str | None = None,
    strategy: str = "BinPack",
    image: str = "model:1",
    **placement,
) -> dict:
    spec_placement = {"strategy": strategy, "tolerations": [KWOK_TOLERATION], **placement}
    if pool:
        spec_placement.setdefault("nodeSelector", {})[POOL_LABEL] = pool
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "coresPerReplica": cores,
            "processesPerReplica": processes,
            "placement": spec_placement,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "model", "image": image}]},
            },
        },
    }


def example(file_name: str, pool: str) -> dict:
    """An example shipped with the package (the repository's examples/), confined to the test's node pool."""
    resource = yaml.safe_load(example_file(file_name).read_text())
    resource["spec"]["placement"].setdefault("nodeSelector", {})[POOL_LABEL] = pool
    return resource


def apply(cluster, namespace: str, *resources: dict, check: bool = True):
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(resources)})
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=body, check=check)


def get_inference(cluster, namespace: str, name: str) -> dict:
    return json.loads(cluster.kubectl("get", "ninf", name, "-n", namespace, "-o", "json").stdout)


def pods_of(cluster, namespace: str, name: str | None = None) -> list[dict]:
    selector = f"{INFERENCE_LABEL}={name}" if name else INFERENCE_LABEL
    items = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)["items"]
    return sorted(items, key=lambda p: p["metadata"]["name"])


def live(pods: list[dict]) -> list[dict]:
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def running_ready(pod: dict) -> bool:
    if pod["status"].get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
        return False
    return is_ready(pod)


def placed_and_ready(cluster, namespace: str, name: str, replicas: int):
    """The resource when all ``replicas`` pods are Running+Ready and its status says so; else None."""
    resource = get_inference(cluster, namespace, name)
    pods = live(pods_of(cluster, namespace, name))
    status = resource.get("status") or {}
    if (
        len(pods) == replicas
        and all(running_ready(p) for p in pods)
        and status.get("readyReplicas") == replicas
        and status.get("replicas") == replicas
        and is_ready(resource)
        and status.get("observedGeneration") == resource["metadata"]["generation"]
    ):
        return resource
    return None


def all_managed_pods(cluster) -> list[dict]:
    return json.loads(cluster.kubectl("get", "pods", "-A", "-l", INFERENCE_LABEL, "-o", "json").stdout)["items"]


def assert_no_shared_cores(cluster) -> dict[str, dict[int, str]]:
    """No two live pods hold the same core on any node; returns node → core → pod."""
    held_by: dict[str, dict[int, str]] = defaultdict(dict)
    for pod in all_managed_pods(cluster):
        if pod["status"].get("phase") in TERMINAL_PHASES:
            continue
        node = node_of(pod)  # bound, or pinned there while kube-scheduler has yet to bind it
        assert node, f"managed pod {pod['metadata']['name']} is neither bound nor pinned to a node"
        name = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        for core in parse_core_set(pod["metadata"]["annotations"][CORES_ANNOTATION]):
            assert core not in held_by[node], f"core {core} on {node} held by both {held_by[node][core]} and {name}"
            held_by[node][core] = name
    return held_by


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def assert_pod_consistent(pod: dict, cores_per_chip: int, processes: int, numbering: str = "device-local") -> None:
    """Annotation, device-plugin annotations, per-process env and resources all say the same thing."""
    annotations = pod["metadata"]["annotations"]
    cores = CoreRange.parse(annotations[CORES_ANNOTATION])
    assert annotations[AWS_NEURON_IDS] == ",".join(map(str, cores.ids))
    assert annotations[NEURON_RESOURCE_TYPE] == NEURONCORE_RESOURCE
    assert annotations[NEURON_ALLOCATED] in ("true", "false") and annotations[NEURON_ALLOC_TIME].isdigit()
    assert "schedulerName" not in pod["spec"] or pod["spec"]["schedulerName"] == "default-scheduler"
    offset = (cores.start // cores_per_chip) * cores_per_chip if numbering == "device-local" else 0
    neuron_containers = [c for c in pod["spec"]["containers"] if ENV_VISIBLE_CORES in env_of(c)]
    assert len(neuron_containers) == processes
    expected = cores.split(processes)
    for index, container in enumerate(neuron_containers):
        env = env_of(container)
        visible = parse_core_set(env[ENV_VISIBLE_CORES])
        assert [v + offset for v in visible] == list(expected[index].ids), (pod["metadata"]["name"], env)
        assert env[ENV_NODE_CORES] == str(expected[index])
        for kind in ("requests", "limits"):
            assert container["resources"][kind][NEURONCORE_RESOURCE] == str(cores.count // processes)


# ---- the Helm chart, with the cluster's pinned helm -------------------------------------------

CHART = Path(__file__).resolve().parents[2] / "charts" / "neuronplace"
RELEASE = "np"


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
    plain values, and ``fieldRef: metadata.namespace`` as the Deployment's namespace (the only
    reference the chart uses; any other fails here rather than being dropped)."""
    env = {}
    for entry in deployment["spec"]["template"]["spec"]["containers"][container].get("env") or []:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            field = ((entry.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
            assert field == "metadata.namespace", f"unexpected env source {entry}"
            env[entry["name"]] = deployment["metadata"]["namespace"]
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
