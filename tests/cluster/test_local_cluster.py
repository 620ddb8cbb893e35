"""The local control plane is real: etcd, kube-apiserver (RBAC), kube-controller-manager,
kube-scheduler and kwok built from the pins, with simulated Neuron nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from neuronplace.local import build, procs
from neuronplace.local.cluster import CONTROL_PLANE_COMPONENTS, LocalCluster, port_lock
from neuronplace.local.fleet import HOST_SHAPES, KWOK_TAINT, KWOK_TOLERATION
from neuronplace.placement.names import NEURON_DEVICE_RESOURCE, NEURONCORE_RESOURCE

pytestmark = pytest.mark.cluster


def pod_manifest(name: str, node: str | None = None, cores: int = 0, node_selector: dict | None = None) -> dict:
    resources = {NEURONCORE_RESOURCE: str(cores)} if cores else {}
    spec = {
        "containers": [
            {
                "name": "main",
                "image": "example.invalid/model:1",
                "resources": {"requests": resources, "limits": resources},
            }
        ],
        "tolerations": [KWOK_TOLERATION],
    }
    if node:
        spec["nodeName"] = node
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)  # the poll interval: what is awaited is the predicate's answer


def test_binaries_report_their_pinned_versions(local_cluster):
    for component in build.COMPONENTS:
        assert build.expected_version(component) in build.binary_version(component, local_cluster.bin_dir), (
            component.binary
        )


def test_all_components_run_and_listen_on_loopback_only(local_cluster):
    assert set(local_cluster.running_components()) == set(CONTROL_PLANE_COMPONENTS)
    listening = procs.listening_ports(list(local_cluster.running_components().values()))
    assert listening, "the control plane listens on no port"
    loopback = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1 as /proc writes them
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.rsplit(":", 1)
            if state == "0A" and int(port, 16) in listening:
                assert address in loopback, f"port {int(port, 16)} listens on {address}, beyond loopback"
    version = json.loads(local_cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == build.pinned_version("kubernetes", "k8s.io/kubernetes")


def test_nodes_report_instance_labels_capacity_and_allocatable(local_cluster, fleet):
    nodes = fleet({"inf2.48xlarge": 2, "trn1.32xlarge": 1, "inf2.xlarge": 1})
    assert len(nodes) == 4
    expected = {"inf2.48xlarge": ("24", "12"), "trn1.32xlarge": ("32", "16"), "inf2.xlarge": ("2", "1")}
    items = local_cluster.get_json("nodes", "-l", f"neuronplace.io/pool={nodes.pool}")["items"]
    assert sorted(n["metadata"]["name"] for n in items) == sorted(nodes)
    for node in items:
        labels = node["metadata"]["labels"]
        instance_type = labels["node.kubernetes.io/instance-type"]
        assert labels["topology.kubernetes.io/zone"].startswith("us-east-1")
        cores, devices = expected[instance_type]
        for key in ("capacity", "allocatable"):
            assert node["status"][key][NEURONCORE_RESOURCE] == cores
            assert node["status"][key][NEURON_DEVICE_RESOURCE] == devices
        assert node["status"]["capacity"]["cpu"] == str(HOST_SHAPES[instance_type].vcpus)
        assert KWOK_TAINT in [{k: t[k] for k in ("key", "value", "effect")} for t in node["spec"]["taints"]]
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True"


def test_bound_pod_requesting_8_neuroncores_becomes_running_and_ready(local_cluster, namespace, fleet):
    (node,) = fleet({"inf2.48xlarge": 1})
    local_cluster.kubectl(
        "-n", namespace, "create", "-f", "-", input=json.dumps(pod_manifest("infer-0", node, cores=8))
    )
    local_cluster.kubectl("-n", namespace, "wait", "pod/infer-0", "--for=condition=Ready", "--timeout=60s")
    pod = local_cluster.get_json("-n", namespace, "pod", "infer-0")
    assert pod["status"]["phase"] == "Running"
    assert pod["spec"]["nodeName"] == node
    assert pod["spec"]["containers"][0]["resources"]["limits"][NEURONCORE_RESOURCE] == "8"


def test_scheduler_places_within_allocatable_and_refuses_beyond_it(local_cluster, namespace, fleet):
    nodes = fleet({"inf2.48xlarge": 1})
    fits = pod_manifest("fits", cores=24, node_selector=nodes.selector)
    too_big = pod_manifest("too-big", cores=25, node_selector=nodes.selector)
    for pod in (fits, too_big):
        local_cluster.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(pod))
    local_cluster.kubectl("-n", namespace, "wait", "pod/fits", "--for=condition=Ready", "--timeout=60s")
    assert local_cluster.get_json("-n", namespace, "pod", "fits")["spec"]["nodeName"] == nodes[0]

    def unschedulable():
        conditions = local_cluster.get_json("-n", namespace, "pod", "too-big")["status"].get("conditions", [])
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conditions)

    wait_for(unschedulable, 30, "kube-scheduler to report the 25-core pod Unschedulable")
    assert "nodeName" not in local_cluster.get_json("-n", namespace, "pod", "too-big")["spec"]


def test_deleting_an_owner_garbage_collects_its_dependents(local_cluster, namespace):
    local_cluster.kubectl("-n", namespace, "create", "configmap", "owner")
    uid = local_cluster.get_json("-n", namespace, "configmap", "owner")["metadata"]["uid"]
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
    }
    local_cluster.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(dependent))
    local_cluster.kubectl("-n", namespace, "delete", "configmap", "owner")
    wait_for(
        lambda: local_cluster.kubectl("-n", namespace, "get", "configmap", "dependent", check=False).returncode != 0,
        60,
        "the garbage collector to delete the dependent",
    )


def test_node_can_be_deleted_and_created_again(local_cluster, namespace, fleet):
    nodes = fleet({"inf2.xlarge": 1})
    (node,) = nodes
    local_cluster.kubectl(
        "-n", namespace, "create", "-f", "-", input=json.dumps(pod_manifest("on-lost-node", node, cores=1))
    )
    local_cluster.kubectl("-n", namespace, "wait", "pod/on-lost-node", "--for=condition=Ready", "--timeout=60s")
    local_cluster.delete_node(node)
    assert local_cluster.node_ready(node) is None
    # kube-controller-manager's pod GC removes pods bound to a node that no longer exists.
    wait_for(
        lambda: local_cluster.kubectl("-n", namespace, "get", "pod", "on-lost-node", check=False).returncode != 0,
        120,
        "pod GC to delete the pod of the deleted node",
    )
    recreated = local_cluster.create_nodes(
        {"inf2.xlarge": 1}, labels={"neuronplace.io/pool": nodes.pool}, prefix=f"{nodes.pool}-"
    )
    assert recreated == [node]
    assert local_cluster.node_ready(node) is True


def test_node_can_be_made_not_ready_and_ready_again(local_cluster, fleet):
    (node,) = fleet({"trn1.32xlarge": 1})

    def taint_keys():
        return {t["key"] for t in local_cluster.get_json("node", node)["spec"].get("taints", [])}

    def ready_since():
        (ready,) = [c for c in local_cluster.get_json("node", node)["status"]["conditions"] if c["type"] == "Ready"]
        return datetime.fromisoformat(ready["lastTransitionTime"].replace("Z", "+00:00"))

    # The node's creation second must be over, so "since now" and "since creation" differ (the API
    # server's times are whole seconds).
    created = datetime.fromisoformat(
        local_cluster.get_json("node", node)["metadata"]["creationTimestamp"].replace("Z", "+00:00")
    )
    wait_for(lambda: datetime.now(UTC) >= created + timedelta(seconds=1), 5, "the node's creation second to pass")
    before = datetime.now(UTC).replace(microsecond=0)
    local_cluster.set_node_ready(node, False)
    assert local_cluster.node_ready(node) is False
    # NotReady since now, not since the node was created: the operator's NotReady grace period
    # counts from this time.
    went_not_ready = ready_since()
    assert went_not_ready >= before
    wait_for(
        lambda: "node.kubernetes.io/not-ready" in taint_keys(), 60, "kube-controller-manager to taint the NotReady node"
    )
    # kwok must not flip it back, nor move the transition time: it re-runs its stages at every node
    # update (the taint just added is one) and heartbeat, and no event says "it did not". Three
    # seconds cover the update's round; kwok's heartbeat is not ours to set (see LocalCluster).
    time.sleep(3)
    assert local_cluster.node_ready(node) is False
    assert ready_since() == went_not_ready
    local_cluster.set_node_ready(node, True)
    assert local_cluster.node_ready(node) is True
    wait_for(
        lambda: "node.kubernetes.io/not-ready" not in taint_keys(),
        60,
        "kube-controller-manager to lift the not-ready taint",
    )


def test_kubectl_apply_file_and_helm_install_uninstall(local_cluster, namespace, tmp_path):
    manifest = tmp_path / "settings.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\ndata:\n  answer: '42'\n")
    local_cluster.kubectl("-n", namespace, "apply", "-f", str(manifest))
    assert local_cluster.get_json("-n", namespace, "configmap", "applied")["data"] == {"answer": "42"}

    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tiny\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\ndata:\n"
        "  greeting: {{ .Values.greeting | quote }}\n"
    )
    local_cluster.helm("install", "demo", str(chart), "-n", namespace, "--set", "greeting=hi", "--wait")
    assert local_cluster.get_json("-n", namespace, "configmap", "demo-cm")["data"] == {"greeting": "hi"}
    assert "demo" in local_cluster.helm("list", "-n", namespace, "-q").stdout.split()
    local_cluster.helm("uninstall", "demo", "-n", namespace, "--wait")
    assert local_cluster.kubectl("-n", namespace, "get", "configmap", "demo-cm", check=False).returncode != 0
    assert local_cluster.helm("list", "-n", namespace, "-q").stdout.split() == []


def test_rbac_refuses_an_unbound_service_account(local_cluster, namespace):
    local_cluster.kubectl("-n", namespace, "create", "serviceaccount", "nobody")
    who = f"system:serviceaccount:{namespace}:nobody"
    refused = local_cluster.kubectl("-n", namespace, "get", "pods", "--as", who, check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()
    assert (
        local_cluster.kubectl("-n", namespace, "auth", "can-i", "list", "pods", "--as", who, check=False).stdout.strip()
        == "no"
    )
    # A binding grants exactly what it says: RBAC decides, nothing else refuses.
    local_cluster.kubectl("-n", namespace, "create", "role", "pod-reader", "--verb=list", "--resource=pods")
    local_cluster.kubectl(
        "-n",
        namespace,
        "create",
        "rolebinding",
        "nobody-reads",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:nobody",
    )
    wait_for(
        lambda: local_cluster.kubectl("-n", namespace, "get", "pods", "--as", who, check=False).returncode == 0,
        30,
        "the role binding to take effect",
    )
    other = local_cluster.kubectl("get", "pods", "-n", "kube-system", "--as", who, check=False)
    assert other.returncode != 0 and "forbidden" in other.stderr.lower()


@pytest.mark.slow
@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_component_restarts_alone_and_the_cluster_works_on(local_cluster, namespace, fleet, component):
    nodes = fleet({"inf2.48xlarge": 1})
    local_cluster.kubectl(
        "-n", namespace, "create", "-f", "-", input=json.dumps(pod_manifest("before", nodes[0], cores=2))
    )
    local_cluster.kubectl("-n", namespace, "wait", "pod/before", "--for=condition=Ready", "--timeout=60s")
    before = local_cluster.running_components()
    new_pid = local_cluster.restart_component(component, downtime=1.0)
    after = local_cluster.running_components()
    assert new_pid != before[component] and after[component] == new_pid
    assert not procs.is_alive(before[component])
    assert {name: pid for name, pid in after.items() if name != component} == {
        name: pid for name, pid in before.items() if name != component
    }, "another component restarted or died"
    # The cluster works on: the pod is kept, kwok runs a new bound pod, the scheduler places one.
    assert local_cluster.get_json("-n", namespace, "pod", "before")["status"]["phase"] == "Running"
    local_cluster.kubectl(
        "-n", namespace, "create", "-f", "-", input=json.dumps(pod_manifest("bound", nodes[0], cores=2))
    )
    scheduled = pod_manifest("scheduled", cores=2, node_selector=nodes.selector)
    local_cluster.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(scheduled))
    local_cluster.kubectl(
        "-n", namespace, "wait", "pod/bound", "pod/scheduled", "--for=condition=Ready", "--timeout=90s"
    )
    assert set(local_cluster.running_components()) == set(CONTROL_PLANE_COMPONENTS)


def test_restart_refuses_other_components(local_cluster):
    with pytest.raises(ValueError, match="'kwok-controller' cannot be restarted alone"):
        local_cluster.restart_component("kwok-controller")


@pytest.mark.slow
def test_cli_runs_a_second_cluster_beside_the_first_and_down_leaves_nothing(local_cluster):
    name = f"np-cli-{uuid.uuid4().hex[:6]}"
    second = LocalCluster(name)
    cli = [sys.executable, "-m", "neuronplace.cli", "local"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        up = subprocess.run(
            [*cli, "up", "--name", name, "--fleet", "inf2.48xlarge=1,trn1.32xlarge=1"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert up.returncode == 0, up.stderr
        assert second.kubeconfig in up.stdout and "kubectl" in up.stdout
        ports = second.listening_ports()
        pids = second.running_components()
        assert set(pids) == set(CONTROL_PLANE_COMPONENTS)
        assert not ports & local_cluster.listening_ports(), "the two clusters share a port"
        nodes = second.get_json("nodes")["items"]
        assert sorted(n["metadata"]["labels"]["node.kubernetes.io/instance-type"] for n in nodes) == [
            "inf2.48xlarge",
            "trn1.32xlarge",
        ]
        assert local_cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"

        status = subprocess.run([*cli, "status"], capture_output=True, text=True, timeout=60, env=env)
        assert status.returncode == 0
        assert f"{name}: 5/5 components running" in status.stdout
        assert f"{local_cluster.name}: 5/5 components running" in status.stdout

        with port_lock():  # no other cluster may take the freed ports before we look
            down = subprocess.run([*cli, "down", "--name", name], capture_output=True, text=True, timeout=120, env=env)
            assert down.returncode == 0, down.stderr
            assert not any(procs.is_alive(pid) for pid in pids.values())
            # A freed port may be taken at once by a cluster of another test session (pytest-xdist
            # runs one per worker): only a port still held by this cluster's processes is a leak.
            assert not procs.ports_held_by(ports, name), f"ports of {name} still listening"
        assert not second.cluster_dir.exists()
        assert local_cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    finally:
        second.down()


def test_cli_rejects_a_bad_fleet_before_starting_anything():
    result = subprocess.run(
        [sys.executable, "-m", "neuronplace.cli", "local", "up", "--name", "np-never", "--fleet", "inf2.48xlarge=two"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "'inf2.48xlarge=two' is not TYPE=COUNT" in result.stderr
    assert not LocalCluster("np-never").cluster_dir.exists()
