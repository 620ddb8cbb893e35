"""Multi-tenant safety on the real API server: the ledger trusts ownership, not labels, and the
operator's ``restricted`` pod-security level admits nothing the API server's own Pod Security
admission would refuse.

- A hand-made pod (no owner) carrying our inference label and a whole node's range, requesting
  nothing, does not stop a real replica from taking that node.
- Foreign pods whose ``AWS_NEURON_IDS`` disagree with their request are held conservatively: their
  listed ids plus what those fall short of the request. While replicas are placed beside them, a
  watch checks at every pod event that no replica gets one of their cores or more than the node has
  free. The operator's metric and ``neuronplace cores`` both name the node's inconsistent claims.
- With ``NEURONPLACE_POD_SECURITY=restricted`` a compliant template's replicas run in a namespace
  that enforces the restricted Pod Security Standard; a template our level refuses is refused by
  the operator (the field named, no pod attempted), and the API server refuses its pod too. Then a
  table of templates is put to both: whatever our restricted level admits, the API server admits.

One operator at a time may allocate cores on a cluster, so the shared operator is stopped for this
module and one with ``--metrics-port`` and the restricted level runs instead; the ``operator``
fixture starts the shared one again for the tests that follow.
"""

from __future__ import annotations

import copy
import json
import subprocess
import threading

import pytest

from neuronplace.local.fleet import KWOK_TOLERATION
from neuronplace.local.operator_process import free_port
from neuronplace.placement.claims import node_of
from neuronplace.placement.names import (
    AWS_NEURON_IDS,
    CORES_ANNOTATION,
    INFERENCE_LABEL,
    NEURONCORE_RESOURCE,
    TERMINAL_PHASES,
)
from neuronplace.placement.podsecurity import TemplatePolicy, check_template
from neuronplace.runtime.coreset import CoreRange
from support.builders import inference
from support.cluster import apply, condition, core_map, get_inference, live, placed_and_ready, running_ready
from support.metrics import scrape, value

pytestmark = pytest.mark.cluster

RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
ENFORCE_RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"
ENFORCE_BASELINE = "pod-security.kubernetes.io/enforce=baseline"


@pytest.fixture(scope="module")
def restricted_operator(operator_process, binding):
    """One operator for the module (its metrics add up across the tests), in place of the shared one."""
    operator_process.stop()
    port = free_port()
    process = operator_process.factory.make(
        binding=binding,
        log_name="neuronplace-operator-tenancy.log",
        env={"NEURONPLACE_POD_SECURITY": "restricted"},
        metrics_port=port,
    )
    process.start()
    try:
        yield process, f"http://127.0.0.1:{port}/metrics"
    finally:
        process.stop()


def inconsistent(url: str, node: str, reason: str) -> float:
    return value(scrape(url), "neuronplace_node_inconsistent_claims", node=node, reason=reason)


def restricted(resource: dict) -> dict:
    """``resource`` with a template that meets the restricted Pod Security Standard."""
    spec = resource["spec"]["template"]["spec"]
    spec["securityContext"] = copy.deepcopy(RESTRICTED_POD)
    for container in spec["containers"]:
        container["securityContext"] = copy.deepcopy(RESTRICTED_CONTAINER)
    return resource


def hand_made_pod(name: str, node: str, *, cores: int = 0, labels=None, annotations=None) -> dict:
    """A pod bound straight to ``node`` by its author (no owner), requesting ``cores`` NeuronCores."""
    limits = {NEURONCORE_RESOURCE: str(cores)} if cores else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
        "spec": {
            "nodeName": node,
            "tolerations": [KWOK_TOLERATION],
            "containers": [{"name": "c", "image": "tenant:1", "resources": {"limits": limits}}],
        },
    }


def owned_pods(cluster, namespace: str, name: str) -> list[dict]:
    """The live pods the NeuronInference ``name`` controls (by UID: labels prove nothing)."""
    uid = get_inference(cluster, namespace, name)["metadata"]["uid"]
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    return [
        pod
        for pod in live(pods)
        if any(ref.get("controller") and ref.get("uid") == uid for ref in pod["metadata"].get("ownerReferences") or ())
    ]


# ---- the ledger trusts ownership, not labels -----------------------------------------------------


def test_a_hand_made_pod_claiming_a_whole_node_blocks_nothing(
    local_cluster, restricted_operator, namespace, fleet, wait_for
):
    _process, url = restricted_operator
    nodes = fleet({"inf2.48xlarge": 1})
    node, pool = nodes[0], nodes.pool
    fake = hand_made_pod("fake", node, labels={INFERENCE_LABEL: "whole"}, annotations={CORES_ANNOTATION: "0-23"})
    apply(local_cluster, namespace, fake)
    wait_for(lambda: inconsistent(url, node, "NotOwned") == 1, 60, "the operator to see the hand-made pod")

    # The fake even names the resource it pretends to belong to.
    apply(local_cluster, namespace, restricted(inference("whole", cores=24, pool=pool)))
    [replica] = wait_for(
        lambda: [p for p in owned_pods(local_cluster, namespace, "whole") if running_ready(p)],
        90,
        "the whole-node replica Running beside the fake",
    )
    assert node_of(replica) == node
    assert replica["metadata"]["annotations"][CORES_ANNOTATION] == "0-23"
    assert get_inference(local_cluster, namespace, "whole")["status"]["readyReplicas"] == 1

    lines = core_map(local_cluster, pool).splitlines()
    assert lines[0].startswith(node) and "24 cores, 0 free" in lines[0]
    assert f"  inconsistent: {namespace}/fake NotOwned" in "\n".join(lines)


class CoreWatch(threading.Thread):
    """Watches a namespace's pods and checks, at every event, that the replicas of ``inference`` on
    ``node`` never hold a core in ``forbidden`` nor more than ``room`` cores together."""

    def __init__(self, cluster, namespace: str, node: str, forbidden: set[int], room: int) -> None:
        super().__init__(daemon=True, name=f"core-watch-{namespace}")
        self.cluster, self.namespace, self.node = cluster, namespace, node
        self.forbidden, self.room = forbidden, room
        self.pods: dict[str, dict] = {}
        self.events = 0
        self.violations: list[str] = []
        self.listed = threading.Event()  # set once the first list is in: the test starts then
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from kubernetes import client, config
        from kubernetes.watch.watch import iter_resp_lines

        try:
            api = client.CoreV1Api(config.new_client_from_config(self.cluster.kubeconfig))
            version = None
            while not self.stopping.is_set():
                if version is None:
                    listed = json.loads(api.list_namespaced_pod(self.namespace, _preload_content=False).data)
                    self.pods = {pod["metadata"]["name"]: pod for pod in listed.get("items", [])}
                    version = listed["metadata"]["resourceVersion"]
                    self.check()
                    self.listed.set()
                response = api.list_namespaced_pod(
                    self.namespace, watch=True, resource_version=version, timeout_seconds=2, _preload_content=False
                )
                for line in iter_resp_lines(response):
                    if not line:
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":  # 410 Gone: list again
                        version = None
                        break
                    pod = event["object"]
                    version = pod["metadata"]["resourceVersion"]
                    if event["type"] == "DELETED":
                        self.pods.pop(pod["metadata"]["name"], None)
                    else:
                        self.pods[pod["metadata"]["name"]] = pod
                    self.events += 1
                    self.check()
                response.release_conn()
        except BaseException as error:  # reported by the test
            self.error = error

    def check(self) -> None:
        held: dict[int, str] = {}
        for name, pod in self.pods.items():
            meta = pod["metadata"]
            owned = any(ref.get("kind") == "NeuronInference" for ref in meta.get("ownerReferences") or ())
            if not owned or node_of(pod) != self.node or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
                continue
            for core in CoreRange.parse(meta["annotations"][CORES_ANNOTATION]).ids:
                if core in self.forbidden:
                    self.violations.append(f"{name} got core {core}, which a foreign pod holds")
                if core in held:
                    self.violations.append(f"core {core} held by both {held[core]} and {name}")
                held[core] = name
        if len(held) > self.room:
            self.violations.append(f"replicas hold {len(held)} cores; only {self.room} are free")


def test_foreign_pods_whose_ids_disagree_are_held_conservatively(
    local_cluster, restricted_operator, namespace, fleet, wait_for
):
    _process, url = restricted_operator
    nodes = fleet({"inf2.48xlarge": 1})
    node, pool = nodes[0], nodes.pool
    # 8 requested, 2 listed: held are 0,1 and the 6 highest free cores (18-23). 1 requested, 3
    # listed: all three may be in use (4,5,6). 11 of the 24 cores are held; 13 are free.
    short = hand_made_pod("short", node, cores=8, annotations={AWS_NEURON_IDS: "0,1"})
    long = hand_made_pod("long", node, cores=1, annotations={AWS_NEURON_IDS: "4,5,6"})
    apply(local_cluster, namespace, short, long)
    wait_for(lambda: inconsistent(url, node, "NeuronIdsMismatch") == 2, 60, "the operator to see both foreign pods")

    watcher = CoreWatch(local_cluster, namespace, node, forbidden={0, 1, 4, 5, 6, *range(18, 24)}, room=13)
    watcher.start()
    assert watcher.listed.wait(60), f"the watch did not start: {watcher.error}"
    try:
        # inf2 chips have 2 cores: the free pairs are 2-3 and 8-9 ... 16-17 (7 is alone), so 6 of
        # 7 replicas fit and the seventh is reported Unschedulable.
        apply(local_cluster, namespace, restricted(inference("fill", cores=2, replicas=7, pool=pool)))
        wait_for(
            lambda: (
                watcher.violations  # stop waiting at the first one: it is the failure
                or (
                    len([p for p in owned_pods(local_cluster, namespace, "fill") if running_ready(p)]) == 6
                    and condition(get_inference(local_cluster, namespace, "fill"), "Placed").get("reason")
                    == "Unschedulable"
                )
            ),
            120,
            "6 replicas Running and the seventh Unschedulable",
        )
    finally:
        watcher.stopping.set()
        watcher.join(timeout=30)
    assert watcher.violations == []
    assert not watcher.is_alive() and watcher.error is None, watcher.error
    assert watcher.events >= 6  # the replicas' creation and binding were seen event by event
    cores = sorted(
        CoreRange.parse(p["metadata"]["annotations"][CORES_ANNOTATION]).start
        for p in owned_pods(local_cluster, namespace, "fill")
    )
    assert cores == [2, 8, 10, 12, 14, 16]

    lines = core_map(local_cluster, pool)
    assert f"  inconsistent: {namespace}/long NeuronIdsMismatch" in lines
    assert f"  inconsistent: {namespace}/short NeuronIdsMismatch" in lines
    assert "24 cores, 1 free" in lines  # core 7: nothing of 1 core was asked for


# ---- the restricted level against the API server's Pod Security admission -----------------------


def dry_run(cluster, namespace: str, spec: dict) -> subprocess.CompletedProcess:
    """Ask the API server to create a pod with ``spec`` (server-side dry run: admission runs, nothing is stored)."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"}, "spec": spec}
    return cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)


def test_restricted_templates_run_where_the_api_server_enforces_restricted(
    local_cluster, restricted_operator, namespace, fleet, wait_for
):
    local_cluster.kubectl("label", "namespace", namespace, ENFORCE_RESTRICTED, "--overwrite")
    nodes = fleet({"inf2.48xlarge": 1})
    apply(local_cluster, namespace, restricted(inference("safe", cores=2, replicas=2, pool=nodes.pool)))
    wait_for(lambda: placed_and_ready(local_cluster, namespace, "safe", 2), 90, "2 replicas Running")

    escalating = restricted(inference("escalates", cores=2, pool=nodes.pool))
    del escalating["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"]
    apply(local_cluster, namespace, escalating)
    placed = wait_for(
        lambda: (
            found
            if (found := condition(get_inference(local_cluster, namespace, "escalates"), "Placed")).get("reason")
            == "InvalidSpec"
            else None
        ),
        60,
        "the escalating template refused",
    )
    assert "containers[0].securityContext.allowPrivilegeEscalation" in placed["message"]
    assert owned_pods(local_cluster, namespace, "escalates") == []  # refused before any pod was tried
    refused = dry_run(local_cluster, namespace, escalating["spec"]["template"]["spec"])
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr
    assert "allowPrivilegeEscalation" in refused.stderr


def _compliant() -> dict:
    return {
        "securityContext": copy.deepcopy(RESTRICTED_POD),
        "containers": [{"name": "model", "image": "model:1", "securityContext": copy.deepcopy(RESTRICTED_CONTAINER)}],
    }


def _container(spec: dict) -> dict:
    return spec["containers"][0]["securityContext"]


def _volume(**source) -> dict:
    return {"volumes": [{"name": "v", **source}]}


# Each restricted rule broken once (both must refuse), and variations both should admit.
REFUSED = {
    "escalation-unset": lambda s: _container(s).pop("allowPrivilegeEscalation"),
    "escalation-true": lambda s: _container(s).update(allowPrivilegeEscalation=True),
    "run-as-root-allowed": lambda s: s["securityContext"].pop("runAsNonRoot"),
    "run-as-non-root-false-in-container": lambda s: _container(s).update(runAsNonRoot=False),
    "run-as-user-0": lambda s: s["securityContext"].update(runAsUser=0),
    "seccomp-unset": lambda s: s["securityContext"].pop("seccompProfile"),
    "seccomp-unconfined-in-container": lambda s: _container(s).update(seccompProfile={"type": "Unconfined"}),
    "seccomp-unconfined-pod-runtime-container": lambda s: (
        s["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        _container(s).update(seccompProfile={"type": "RuntimeDefault"}),
    ),
    "capabilities-not-dropped": lambda s: _container(s).pop("capabilities"),
    "capabilities-drop-lowercase-all": lambda s: _container(s).update(capabilities={"drop": ["all"]}),
    "capability-chown-added": lambda s: _container(s)["capabilities"].update(add=["CHOWN"]),
    "capability-sys-admin-added": lambda s: _container(s)["capabilities"].update(add=["SYS_ADMIN"]),
    "capability-cap-net-bind-added": lambda s: _container(s)["capabilities"].update(add=["CAP_NET_BIND_SERVICE"]),
    "privileged": lambda s: (_container(s).pop("allowPrivilegeEscalation"), _container(s).update(privileged=True)),
    "host-network": lambda s: s.update(hostNetwork=True),
    "host-port": lambda s: s["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]),
    "host-path-volume": lambda s: s.update(_volume(hostPath={"path": "/etc"})),
    "init-container-unsafe": lambda s: s.update(initContainers=[{"name": "init", "image": "init:1"}]),
    "unsafe-sysctl": lambda s: s["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
    "selinux-user": lambda s: s["securityContext"].update(seLinuxOptions={"user": "root"}),
    "apparmor-unconfined": lambda s: _container(s).update(appArmorProfile={"type": "Unconfined"}),
}
ADMITTED = {
    "compliant": lambda s: None,
    "only-container-level": lambda s: (
        s.pop("securityContext"),
        _container(s).update(runAsNonRoot=True, seccompProfile={"type": "RuntimeDefault"}),
    ),
    "seccomp-localhost": lambda s: _container(s).update(
        seccompProfile={"type": "Localhost", "localhostProfile": "profiles/model.json"}
    ),
    "net-bind-service-added": lambda s: _container(s)["capabilities"].update(add=["NET_BIND_SERVICE"]),
    "run-as-user-1000": lambda s: s["securityContext"].update(runAsUser=1000),
    "empty-dir": lambda s: s.update(_volume(emptyDir={})),
    "config-map": lambda s: s.update(_volume(configMap={"name": "settings"})),
    "pvc": lambda s: s.update(_volume(persistentVolumeClaim={"claimName": "data"})),
    "downward-api": lambda s: s.update(
        _volume(downwardAPI={"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]})
    ),
}


def test_what_our_restricted_level_admits_the_api_server_admits(local_cluster, namespace):
    """The same pod specs put to ``check_template`` at the restricted level and to the API server's
    restricted Pod Security admission: every rule is refused by both, and nothing we admit is
    refused there. (We may refuse more, e.g. generic ephemeral volumes, on purpose.)"""
    local_cluster.kubectl("label", "namespace", namespace, ENFORCE_RESTRICTED, "--overwrite")
    policy = TemplatePolicy(level="restricted")
    wrong = []
    for name, change in {**REFUSED, **ADMITTED}.items():
        spec = _compliant()
        change(spec)
        ours = check_template({"metadata": {}, "spec": spec}, policy, namespace=namespace)
        answer = dry_run(local_cluster, namespace, spec)
        theirs = answer.returncode == 0
        if not theirs:
            assert "violates PodSecurity" in answer.stderr, f"{name}: not a Pod Security refusal: {answer.stderr}"
        expected = name in ADMITTED
        if (not ours) != expected or theirs != expected:
            wrong.append(
                f"{name}: ours {'admits' if not ours else ours}, API server {'admits' if theirs else answer.stderr}"
            )
    assert wrong == []

    # Capability names are compared exactly at baseline too: CAP_CHOWN is not CHOWN.
    local_cluster.kubectl("label", "namespace", namespace, ENFORCE_BASELINE, "--overwrite")
    spec = {
        "containers": [
            {"name": "model", "image": "model:1", "securityContext": {"capabilities": {"add": ["CAP_CHOWN"]}}}
        ]
    }
    assert "violates PodSecurity" in dry_run(local_cluster, namespace, spec).stderr
    assert check_template({"metadata": {}, "spec": spec}, TemplatePolicy(), namespace=namespace)
    spec["containers"][0]["securityContext"]["capabilities"]["add"] = ["CHOWN"]
    assert dry_run(local_cluster, namespace, spec).returncode == 0
    assert check_template({"metadata": {}, "spec": spec}, TemplatePolicy(), namespace=namespace) == []
