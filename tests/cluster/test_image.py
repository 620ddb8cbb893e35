"""The operator image, really built and really run.

``neuronplace local image`` builds it (podman here; the Debian base when no registry answers),
then the image must run the CLI, must not contain torch or pip, and must stay under the size
budget. On the local control plane, the image's operator runs as the Helm chart runs it: the
chart's command, arguments and environment, as the chart's ServiceAccount (its RBAC applied from
``helm template``, its token in a read-only kubeconfig), with a read-only root filesystem and only
an in-memory /tmp, uid 10001, every capability dropped and no privilege escalation. It must place
an example NeuronInference with no 403, serve /healthz and /metrics, and stop on SIGTERM within the
chart's terminationGracePeriodSeconds.

With CI=true a missing container engine fails these tests: CI installs podman (.ci/run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from neuronplace.local import image
from neuronplace.local.operator_process import free_port
from support.builders import example
from support.chart import container_env, token_kubeconfig
from support.cluster import assert_no_shared_cores, assert_pod_consistent, live, placed_and_ready, pods_of

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "neuronplace"
RELEASE = "npimg"  # not test_chart.py's "np": the two must not share cluster-scoped RBAC objects
SERVICE_ACCOUNT = f"{RELEASE}-neuronplace"
SIZE_BUDGET = 250 * 10**6  # bytes, uncompressed, as `podman images` counts them
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
KUBECONFIG_IN_CONTAINER = "/var/run/neuronplace/kubeconfig"

pytestmark = pytest.mark.slow


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _show(request: pytest.FixtureRequest, line: str) -> None:
    """A line on the terminal even under output capture (the build takes minutes when cold)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[image] {line}")


@pytest.fixture(scope="module")
def engine() -> image.Engine:
    try:
        return image.find_engine()
    except image.ImageError as missing:
        if _in_ci():
            pytest.fail(f"CI=true and no usable container engine: {missing}")
        pytest.skip(str(missing))


@pytest.fixture(scope="module")
def image_ref(engine: image.Engine, request: pytest.FixtureRequest) -> str:
    """The reference `neuronplace local image` prints last, after building the image for real."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "neuronplace.cli", "local", "image"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, f"neuronplace local image failed:\n{result.stderr[-6000:]}"
    reference = result.stdout.strip().splitlines()[-1]
    assert engine.image_exists(reference), f"{reference!r} (the last line printed) is not an image"
    summary = [
        line for line in result.stderr.splitlines() if line.startswith(("built with", "base image", "cannot pull"))
    ]
    _show(request, f"{reference} in {time.monotonic() - started:.0f} s: {'; '.join(summary)}")
    return reference


def container(
    engine: image.Engine, reference: str, *args: str, entrypoint: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """``run --rm`` under the chart's pod security (read-only root, uid 10001, no capabilities)."""
    command = ["run", "--rm", *engine.run_flags, *restricted_flags(engine)]
    command += ["--entrypoint", entrypoint] if entrypoint else []
    return engine.run(*command, reference, *args, timeout=timeout)


def restricted_flags(engine: image.Engine) -> list[str]:
    """The chart's securityContext as engine flags, with the chart's only writable path: an
    in-memory /tmp (podman would otherwise add writable tmpfs mounts of its own to --read-only)."""
    flags = [
        "--read-only",
        "--tmpfs",
        "/tmp:rw,size=16m,mode=1777",
        "--user",
        "10001:10001",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
    ]
    return flags + (["--read-only-tmpfs=false"] if engine.name == "podman" else [])


# Inside the image: who runs, what is importable, what can be written.
IMAGE_PROBE = """
import importlib.util, os, shutil, sys
import neuronplace.operator
print('uid', os.getuid(), os.getgid())
print('python', sys.version.split()[0], sys.prefix)
for name in ('torch', 'pip', 'setuptools', 'kubernetes.aio'):
    print('absent' if importlib.util.find_spec(name) is None else 'PRESENT', name)
for tool in ('gcc', 'cc', 'make'):
    print('tool', tool, shutil.which(tool))
print('writable /opt/neuronplace', os.access(sys.prefix, os.W_OK))
print('writable /tmp', os.access('/tmp', os.W_OK))
"""


def test_the_image_runs_the_cli_has_no_torch_and_fits_the_budget(engine, image_ref, request):
    helped = container(engine, image_ref, "--help", entrypoint="neuronplace")
    assert helped.returncode == 0 and "usage: neuronplace" in helped.stdout, helped.stderr
    # The entrypoint is kopf's operator: arguments after the image go to `kopf run`.
    kopf_help = container(engine, image_ref, "--help")
    assert kopf_help.returncode == 0 and "kopf run" in kopf_help.stdout and "--liveness" in kopf_help.stdout

    torch = container(engine, image_ref, "-c", "import torch", entrypoint="python3")
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr, torch.stdout + torch.stderr

    probe = container(engine, image_ref, "-c", IMAGE_PROBE, entrypoint="python3")
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert "uid 10001 10001" in lines
    assert "python 3.11" in probe.stdout and "/opt/neuronplace" in probe.stdout
    assert [line for line in lines if line.startswith("absent")] == [
        "absent torch",
        "absent pip",
        "absent setuptools",
        "absent kubernetes.aio",
    ], lines
    assert [line for line in lines if line.startswith("tool")] == ["tool gcc None", "tool cc None", "tool make None"]
    assert "writable /opt/neuronplace False" in lines and "writable /tmp True" in lines

    config = json.loads(engine.run("image", "inspect", image_ref, check=True).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"][:2] == ["kopf", "run"] and "neuronplace.operator" in config["Entrypoint"]

    size = engine.image_size(image_ref)
    _show(request, f"{image_ref}: {size / 1e6:.0f} MB")
    assert size < SIZE_BUDGET, f"{size / 1e6:.0f} MB, over the {SIZE_BUDGET / 1e6:.0f} MB budget"


# ---- the image's operator on the local control plane ------------------------------------------


def container_kubeconfig(cluster, namespace: str, path: Path) -> Path:
    """The chart ServiceAccount's kubeconfig, as the container gets it: read-only, bind-mounted."""
    token_kubeconfig(cluster, namespace, SERVICE_ACCOUNT, path)
    server = yaml.safe_load(path.read_text())["clusters"][0]["cluster"]["server"]
    assert server.startswith("https://127.0.0.1:"), server  # reached over the host network
    # Readable by the container's uid 10001 (the file is bind-mounted read-only); the folder
    # around it (pytest's tmp_path) stays private to this machine's user.
    path.chmod(0o444)
    return path


def until(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll ``predicate`` until it returns something truthy. Unlike the ``wait_for`` fixture, an
    AssertionError (the operator's container died) ends the wait at once instead of being retried;
    other errors (a transient kubectl failure) are retried and reported if they persist."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except AssertionError:
            raise
        except Exception as error:
            last_error, value = error, None
        if value:
            return value
        time.sleep(interval)  # the poll interval: what is awaited is the predicate's answer
    raise TimeoutError(
        f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last_error})" if last_error else "")
    )


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


@pytest.mark.cluster
def test_the_images_operator_places_as_the_charts_service_account(
    local_cluster, crd, namespace, fleet, operator, engine, image_ref, tmp_path, request
):
    # The session's admin-credentialed operator (tests/cluster/conftest.py) serves every node and
    # namespace; the work below must be the container's. The next test that needs it restarts it.
    operator.stop()
    nodes = fleet({"inf2.48xlarge": 1})
    version = json.loads(local_cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    rendered = local_cluster.helm(
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        version,
        "--set",
        f"watch.namespaces={{{namespace}}}",
        "--set",
        f"operator.nodeSelector=neuronplace.io/pool={nodes.pool}",
        "--set",
        "crds.install=false",
        # One namespace for the operator and the example it places: the chart must say so, since
        # the operator otherwise creates no pods in its own namespace.
        "--set",
        "operator.serveOperatorNamespace=true",
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    rbac = [doc for doc in docs if doc["kind"] in RBAC_KINDS]
    assert {doc["kind"] for doc in rbac} == set(RBAC_KINDS), [doc["kind"] for doc in docs]
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (spec,) = pod["containers"]
    grace = pod["terminationGracePeriodSeconds"]
    assert spec["command"] == ["kopf", "run"] and pod["serviceAccountName"] == SERVICE_ACCOUNT

    name = f"np-operator-{uuid.uuid4().hex[:8]}"
    cluster_scoped = [
        f"{doc['kind'].lower()}/{doc['metadata']['name']}" for doc in rbac if doc["kind"].startswith("Cluster")
    ]
    try:
        local_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
        kubeconfig = container_kubeconfig(local_cluster, namespace, tmp_path / "kubeconfig")

        # The chart's arguments and environment; only the ports move to free ones on this host.
        port, metrics_port = free_port(), free_port()
        args = [arg.replace(f"0.0.0.0:{deployment_port(spec, 'http')}", f"127.0.0.1:{port}") for arg in spec["args"]]
        assert f"--liveness=http://127.0.0.1:{port}/healthz" in args, args
        env = container_env(deployment)
        # The operator's own namespace (the release's) is where the example goes too, here.
        assert env["NEURONPLACE_OPERATOR_NAMESPACE"] == namespace
        assert env["NEURONPLACE_METRICS_PORT"] == str(deployment_port(spec, "metrics"))
        env["NEURONPLACE_METRICS_PORT"] = str(metrics_port)
        env_flags = [flag for key, value in env.items() for flag in ("--env", f"{key}={value}")]
        started = engine.run(
            "run",
            "--detach",
            "--name",
            name,
            *engine.run_flags,
            *restricted_flags(engine),
            "--volume",
            f"{kubeconfig}:{KUBECONFIG_IN_CONTAINER}:ro",
            "--env",
            f"KUBECONFIG={KUBECONFIG_IN_CONTAINER}",
            *env_flags,
            "--entrypoint",
            spec["command"][0],
            image_ref,
            *spec["command"][1:],
            *args,
        )
        assert started.returncode == 0, started.stderr

        def logs() -> str:
            result = engine.run("logs", name)
            return result.stdout + result.stderr

        def running() -> bool:
            state = engine.run("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            assert state == "true", f"the operator's container stopped:\n{logs()[-4000:]}"
            return True

        def healthy():
            running()
            try:
                status, body = http_get(f"http://127.0.0.1:{port}/healthz")
            except OSError:
                return False
            return status == 200 and json.loads(body or "{}").get("ledger", {}).get("ready")

        try:
            until(healthy, 90, "the container's /healthz with the ledger ready")
        except TimeoutError as timeout:
            raise AssertionError(f"{timeout}\noperator log:\n{logs()[-4000:]}") from None

        resource = example("neuroninference.yaml", nodes.pool)
        replicas = resource["spec"]["replicas"]
        local_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(resource))
        try:
            placed = until(
                lambda: (
                    running() and placed_and_ready(local_cluster, namespace, resource["metadata"]["name"], replicas)
                ),
                120,
                "the example placed and Ready",
            )
        except TimeoutError as timeout:
            state = local_cluster.kubectl("get", "ninf,pods", "-n", namespace, "-o", "yaml", check=False).stdout
            raise AssertionError(f"{timeout}\n{state[-5000:]}\noperator log:\n{logs()[-4000:]}") from None
        pods = live(pods_of(local_cluster, namespace, resource["metadata"]["name"]))
        assert {p["spec"]["nodeName"] for p in pods} <= set(nodes), pods
        for p in pods:
            assert_pod_consistent(p, cores_per_chip=2, processes=1)
        assert_no_shared_cores(local_cluster)
        assert placed["status"]["readyReplicas"] == replicas

        status, metrics = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        placements = next(
            float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("neuronplace_placements_total")
        )
        assert placements >= replicas, metrics[:2000]

        log = logs()
        assert "403" not in log and "forbidden" not in log.lower(), log[-4000:]

        # Delete the example while the operator still runs, as a user would; then SIGTERM, as the
        # kubelet does, which must end the operator by itself well within the grace period.
        local_cluster.kubectl("delete", "ninf", resource["metadata"]["name"], "-n", namespace, "--timeout=60s")
        signalled = time.monotonic()
        assert engine.run("kill", "--signal", "TERM", name).returncode == 0
        waited = engine.run("wait", name, timeout=grace + 30)
        stopped_after = time.monotonic() - signalled
        _show(request, f"operator container stopped {stopped_after:.1f} s after SIGTERM (grace {grace} s)")
        assert waited.stdout.strip() == "0", f"exit status {waited.stdout.strip()}:\n{logs()[-4000:]}"
        assert stopped_after < grace, f"{stopped_after:.1f} s to stop, the chart allows {grace} s"
        final_log = logs()
        assert "403" not in final_log and "forbidden" not in final_log.lower(), final_log[-4000:]
        assert "Traceback" not in final_log, final_log[-4000:]
    finally:
        engine.run("rm", "--force", name)
        if cluster_scoped:
            local_cluster.kubectl("delete", *cluster_scoped, "--ignore-not-found", check=False)


def deployment_port(spec: dict, name: str) -> int:
    return next(p["containerPort"] for p in spec["ports"] if p["name"] == name)
