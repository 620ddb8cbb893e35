"""Pod metadata only the operator writes, on the real API server of a cluster configured as
production clusters often are (``strict_cluster``: ``OwnerReferencesPermissionEnforcement`` on, the
controllers acting as their own ServiceAccounts, so the garbage collector is
``system:serviceaccount:kube-system:generic-garbage-collector``).

- The chart's ValidatingAdmissionPolicy for pods: a tenant with the built-in ``edit`` role may not
  create pods carrying the operator's labels, annotations or ownerReferences, nor add, change or
  remove them on the operator's pods; the operator's ServiceAccount creates them, a node and the
  device plugin's ServiceAccount write the allocation annotations, and the garbage collector's
  orphaning delete still removes ownerReferences. Users are impersonated (``kubectl --as``).
- The chart's RBAC lets the operator, running as the chart's ServiceAccount, create replicas under
  ``OwnerReferencesPermissionEnforcement`` (it needs ``neuroninferences/finalizers`` update).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from neuronplace.local.fleet import POOL_LABEL
from neuronplace.local.operator_process import OperatorProcess
from neuronplace.local.pytest_plugin import fresh_namespace
from neuronplace.placement.names import (
    API_VERSION,
    AWS_NEURON_IDS,
    CAPACITY_REQUEST_LABEL,
    CORES_ANNOTATION,
    CRD_NAME,
    ENV_NODE_CORES,
    INFERENCE_LABEL,
    KIND,
    NEURON_ALLOC_TIME,
    NEURON_ALLOCATED,
    NEURON_RESOURCE_TYPE,
    NEURONCORE_RESOURCE,
    REPLICA_LABEL,
)
from support.builders import inference
from support.chart import helm_template, install, token_kubeconfig
from support.cluster import placed_and_ready

RELEASE = "nppod"
FULLNAME = f"{RELEASE}-neuronplace"
POLICY = f"{FULLNAME}-pod-metadata"
OPERATOR_NAMESPACE = "neuronplace-system"
OPERATOR = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{FULLNAME}"
COLLECTOR = "system:serviceaccount:kube-system:generic-garbage-collector"
DEVICE_PLUGIN = "system:serviceaccount:kube-system:neuron-device-plugin"
NODE = "system:node:np-somewhere"
# How long the API server may take to start enforcing a new policy, or RBAC to see a new binding.
ACTIVATION_SECONDS = 30
POD_PATCHER = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]


@pytest.fixture(scope="module")
def release(strict_cluster) -> Iterator[str]:
    """The chart with its defaults (both policies on, cluster-wide) in OPERATOR_NAMESPACE."""
    strict_cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    try:
        install(strict_cluster, OPERATOR_NAMESPACE, release=RELEASE)
        strict_cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
        yield RELEASE
    finally:
        strict_cluster.helm("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", check=False, timeout=180)


@pytest.fixture
def tenant_namespace(strict_cluster, release) -> Iterator[str]:
    with fresh_namespace(strict_cluster, "tenant") as name:
        yield name


def as_user(cluster, user: str, *args: str, groups: tuple[str, ...] = (), input: str | None = None):
    flags = [f"--as={user}", *(f"--as-group={group}" for group in groups)]
    return cluster.kubectl(*args, *flags, input=input, check=False)


def grant(cluster, namespace: str, name: str, user: str, rules: list[dict]) -> None:
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name}, "rules": rules}
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": [role, binding]})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=body)


def pod(name: str, labels: dict | None = None, annotations: dict | None = None, owner: dict | None = None) -> dict:
    metadata = {"name": name, "labels": labels or {}, "annotations": annotations or {}}
    if owner:
        metadata["ownerReferences"] = [owner]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]},
    }


def owner_of(resource: dict, block: bool = True) -> dict:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": resource["metadata"]["name"],
        "uid": resource["metadata"]["uid"],
        "controller": True,
        **({"blockOwnerDeletion": True} if block else {}),
    }


def create_as(cluster, user: str, namespace: str, body: dict, *extra: str):
    return as_user(cluster, user, "create", "-n", namespace, "-f", "-", *extra, input=json.dumps(body))


def refused(result, *needles: str) -> bool:
    return (
        result.returncode != 0
        and f"ValidatingAdmissionPolicy '{POLICY}'" in result.stderr
        and all(needle in result.stderr for needle in needles)
    )


@pytest.mark.cluster
def test_only_the_operator_writes_its_pod_metadata_and_the_garbage_collector_still_orphans(
    strict_cluster, tenant_namespace, wait_for
):
    cluster, namespace = strict_cluster, tenant_namespace
    tenant = f"np-tenant-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "rolebinding", "tenant-edit", "--clusterrole=edit", f"--user={tenant}", "-n", namespace)
    # The inference exists (created by an admin); no operator runs, nothing is placed.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(inference("web", pool="no-such-pool")))
    web = cluster.get_json("ninf", "web", "-n", namespace)

    # CREATE: the tenant may create pods, but none carrying the operator's metadata.
    forged = pod("forged", labels={INFERENCE_LABEL: "web"})

    def tenant_refused():
        return refused(create_as(cluster, tenant, namespace, forged, "--dry-run=server"), INFERENCE_LABEL)

    wait_for(tenant_refused, ACTIVATION_SECONDS, "the pod policy to refuse the tenant")

    # The API server type-checked every expression against the Pod schema without a warning.
    def type_checked():
        status = cluster.get_json("validatingadmissionpolicy", POLICY).get("status") or {}
        return status if "typeChecking" in status else None

    status = wait_for(type_checked, ACTIVATION_SECONDS, "the policy's type check")
    assert not status["typeChecking"].get("expressionWarnings"), status
    message = create_as(cluster, tenant, namespace, forged).stderr
    assert f"only the neuronplace operator ({OPERATOR}) may create pods carrying {INFERENCE_LABEL}" in message
    for name, body, needle in (
        ("ids", pod("ids", annotations={AWS_NEURON_IDS: "0,1"}), AWS_NEURON_IDS),
        ("alloc", pod("alloc", annotations={NEURON_ALLOCATED: "true"}), NEURON_ALLOCATED),
        ("owned", pod("owned", labels={"app": "x"}, owner=owner_of(web, block=False)), "an ownerReference to a"),
    ):
        result = create_as(cluster, tenant, namespace, body)
        assert refused(result, needle), (name, result.stderr)
    plain = create_as(cluster, tenant, namespace, pod("plain", labels={"app": "x"}))
    assert plain.returncode == 0, plain.stderr

    # The operator's ServiceAccount creates a replica as the operator does (and, with the chart's
    # RBAC, may name its owner with blockOwnerDeletion under OwnerReferencesPermissionEnforcement).
    annotations = {
        CORES_ANNOTATION: "0-1",
        AWS_NEURON_IDS: "0,1",
        NEURON_RESOURCE_TYPE: NEURONCORE_RESOURCE,
        NEURON_ALLOCATED: "false",
        NEURON_ALLOC_TIME: "1",
    }
    replica = pod("web-0", labels={INFERENCE_LABEL: "web", REPLICA_LABEL: "0"}, annotations=annotations)
    replica["metadata"]["ownerReferences"] = [owner_of(web)]

    def created():
        # OwnerReferencesPermissionEnforcement looks the owner's kind up in a REST mapping it
        # refreshes on its own schedule: just after the CRD is installed it may not know it yet.
        result = create_as(cluster, OPERATOR, namespace, replica)
        assert result.returncode == 0 or "cannot find RESTMapping" in result.stderr, result.stderr
        return result.returncode == 0

    wait_for(created, 60, "the operator's ServiceAccount to create web-0")
    before = cluster.get_json("pod", "web-0", "-n", namespace)["metadata"]

    # UPDATE: the tenant may not add, change or remove any of it, nor the ownerReferences.
    edit = ("-n", namespace)
    for change, needle in (
        (("annotate", "pod", "web-0", f"{CORES_ANNOTATION}=20-23", "--overwrite"), CORES_ANNOTATION),
        (("annotate", "pod", "web-0", f"{AWS_NEURON_IDS}=20,21", "--overwrite"), AWS_NEURON_IDS),
        (("annotate", "pod", "web-0", f"{NEURON_RESOURCE_TYPE}-"), NEURON_RESOURCE_TYPE),
        (("annotate", "pod", "web-0", f"{NEURON_ALLOCATED}=true", "--overwrite"), NEURON_ALLOCATED),
        (("label", "pod", "web-0", f"{CAPACITY_REQUEST_LABEL}=web"), CAPACITY_REQUEST_LABEL),
        (("label", "pod", "web-0", f"{REPLICA_LABEL}-"), REPLICA_LABEL),
        (("annotate", "pod", "plain", "NEURON_ANYTHING=1"), "NEURON_ANYTHING"),
        (
            ("patch", "pod", "web-0", "--type=json", "-p", '[{"op":"remove","path":"/metadata/ownerReferences"}]'),
            "ownerReferences",
        ),
        (
            (
                "patch",
                "pod",
                "plain",
                "--type=merge",
                "-p",
                json.dumps({"metadata": {"ownerReferences": [owner_of(web, False)]}}),
            ),
            "ownerReferences",
        ),
    ):
        result = as_user(cluster, tenant, *change, *edit)
        assert refused(result, needle), (change, result.stderr)
    # Nor through the status subresource: this API server would drop the change there anyway
    # ("patched (no change)"), and the policy refuses it outright rather than rely on that.
    grant(
        cluster,
        namespace,
        "status-writer",
        tenant,
        [{"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]}],
    )
    via_status = ("patch", "pod", "web-0", "--subresource=status", "--type=merge")
    via_status += ("-p", json.dumps({"metadata": {"labels": {REPLICA_LABEL: "9"}}}))

    def status_refused():
        result = as_user(cluster, tenant, *via_status, *edit)
        assert "(no change)" not in result.stdout, "pods/status is not matched by the policy"
        return refused(result, REPLICA_LABEL)

    wait_for(status_refused, ACTIVATION_SECONDS, "the status write to reach the policy (RBAC first)")
    # Its own labels stay the tenant's to change.
    labelled = as_user(cluster, tenant, "label", "pod", "web-0", "team=a", *edit)
    assert labelled.returncode == 0, labelled.stderr
    after = cluster.get_json("pod", "web-0", "-n", namespace)["metadata"]
    assert after["annotations"] == before["annotations"]
    assert after["ownerReferences"] == before["ownerReferences"]
    assert after["labels"] == {**before["labels"], "team": "a"}

    # A node and the device plugin write the allocation annotations, and nothing else of ours.
    for user, groups, key in ((NODE, ("system:nodes",), NEURON_ALLOCATED), (DEVICE_PLUGIN, (), NEURON_ALLOC_TIME)):
        grant(cluster, namespace, f"patcher-{key.lower().replace('_', '-')}", user, POD_PATCHER)
        value = "true" if key == NEURON_ALLOCATED else "2"

        def allocated(user=user, groups=groups, key=key, value=value):
            result = as_user(
                cluster, user, "annotate", "pod", "web-0", f"{key}={value}", "--overwrite", *edit, groups=groups
            )
            assert result.returncode == 0 or "forbidden" in result.stderr, result.stderr
            return result.returncode == 0

        wait_for(allocated, ACTIVATION_SECONDS, f"{user} to write {key}")
        other = as_user(
            cluster, user, "annotate", "pod", "web-0", f"{AWS_NEURON_IDS}=4,5", "--overwrite", *edit, groups=groups
        )
        assert refused(other, AWS_NEURON_IDS), other.stderr
    annotations = cluster.get_json("pod", "web-0", "-n", namespace)["metadata"]["annotations"]
    assert (annotations[NEURON_ALLOCATED], annotations[NEURON_ALLOC_TIME], annotations[AWS_NEURON_IDS]) == (
        "true",
        "2",
        "0,1",
    )

    # The garbage collector (its own ServiceAccount here) removes the ownerReferences when the
    # inference is deleted with --cascade=orphan; the pod stays, its metadata otherwise intact.
    cluster.kubectl("delete", "ninf", "web", "-n", namespace, "--cascade=orphan", "--wait=false")

    def orphaned():
        metadata = cluster.get_json("pod", "web-0", "-n", namespace)["metadata"]
        return metadata if not metadata.get("ownerReferences") else None

    metadata = wait_for(orphaned, 60, "the garbage collector to orphan web-0")
    assert metadata["labels"][INFERENCE_LABEL] == "web" and metadata["annotations"][CORES_ANNOTATION] == "0-1"
    wait_for(
        lambda: cluster.kubectl("get", "ninf", "web", "-n", namespace, check=False).returncode != 0, 60, "web to go"
    )
    # The collector's exemption is removal only, and only for it: it may not add one back.
    readd = as_user(
        cluster,
        COLLECTOR,
        *(
            "patch",
            "pod",
            "web-0",
            "--type=merge",
            "-p",
            json.dumps({"metadata": {"ownerReferences": [owner_of(web, False)]}}),
        ),
        *edit,
    )
    assert refused(readd, "ownerReferences"), readd.stderr


@pytest.mark.cluster
def test_the_charts_operator_creates_replicas_under_owner_references_permission_enforcement(
    strict_cluster, release, tenant_namespace, tmp_path: Path, wait_for
):
    cluster, namespace = strict_cluster, tenant_namespace
    pool = f"p-{uuid.uuid4().hex[:8]}"
    nodes = cluster.create_nodes({"inf2.xlarge": 2}, labels={POOL_LABEL: pool}, prefix=f"{pool}-")
    kubeconfig = token_kubeconfig(cluster, OPERATOR_NAMESPACE, FULLNAME, tmp_path / "sa.kubeconfig")
    # The chart's Lease, which is all its RBAC lets this ServiceAccount hold.
    lease = {"NEURONPLACE_LEADER_ELECTION_NAMESPACE": OPERATOR_NAMESPACE, "NEURONPLACE_LEADER_ELECTION_ID": FULLNAME}
    process = OperatorProcess(cluster, tmp_path / "operator.log", kubeconfig=kubeconfig, env=lease)
    process.start()
    try:
        cluster.kubectl(
            "apply", "-n", namespace, "-f", "-", input=json.dumps(inference("guarded", replicas=2, pool=pool))
        )
        try:
            wait_for(lambda: placed_and_ready(cluster, namespace, "guarded", 2), 120, "both replicas Running and Ready")
        except TimeoutError as timeout:
            conditions = cluster.get_json("ninf", "guarded", "-n", namespace).get("status", {}).get("conditions")
            events = cluster.kubectl(
                "get", "events", "-n", namespace, "-o", "custom-columns=R:.reason,M:.message"
            ).stdout
            raise AssertionError(
                f"{timeout}\nconditions: {conditions}\nevents:\n{events[-3000:]}\noperator log:\n{process.log_tail(60)}"
            ) from None
        pods = cluster.get_json("pods", "-n", namespace, "-l", f"{INFERENCE_LABEL}=guarded")["items"]
        assert {p["spec"]["nodeName"] for p in pods} <= set(nodes)
        assert all(ref.get("blockOwnerDeletion") for p in pods for ref in p["metadata"]["ownerReferences"])
        events = cluster.kubectl("get", "events", "-n", namespace, "-o", "custom-columns=R:.reason,M:.message").stdout
        assert "PodForbidden" not in events and "blockOwnerDeletion" not in events, events
    finally:
        cluster.kubectl("delete", "ninf", "--all", "-n", namespace, "--timeout=60s", check=False)
        process.stop()
        cluster.kubectl("delete", "nodes", "-l", f"{POOL_LABEL}={pool}", "--wait=false", check=False)


@pytest.mark.cluster
def test_the_api_server_refuses_templates_carrying_reserved_keys_naming_them(strict_cluster, tenant_namespace):
    cluster, namespace = strict_cluster, tenant_namespace
    cases = [
        ("labels", CAPACITY_REQUEST_LABEL, f"spec.template.metadata.labels must not carry {CAPACITY_REQUEST_LABEL}"),
        ("annotations", AWS_NEURON_IDS, f"spec.template.metadata.annotations must not carry {AWS_NEURON_IDS}"),
        (
            "sidecar-env",
            ENV_NODE_CORES,
            f"a container must not set NEURON_RT_VISIBLE_CORES or NEURON_RT_NUM_CORES or any NEURONPLACE_* variable (it sets {ENV_NODE_CORES})",
        ),
    ]
    for where, key, message in cases:
        resource = inference(f"reserved-{where}", pool="no-such-pool")
        template = resource["spec"]["template"]
        if where == "sidecar-env":
            sidecar = {"name": "side", "image": "s:1", "env": [{"name": key, "value": "0-127"}]}
            template["spec"]["containers"].append(sidecar)
        else:
            template["metadata"].setdefault(where, {})[key] = "x"
        result = cluster.kubectl(
            "create", "-n", namespace, "--dry-run=server", "-f", "-", input=json.dumps(resource), check=False
        )
        assert result.returncode != 0 and message in result.stderr, (where, result.stderr)
    ordinary = inference("ordinary", pool="no-such-pool")
    ordinary["spec"]["template"]["metadata"]["annotations"] = {"example.com/neuronplace.io": "x"}
    accepted = cluster.kubectl("create", "-n", namespace, "--dry-run=server", "-f", "-", input=json.dumps(ordinary))
    assert accepted.returncode == 0


@pytest.mark.cluster
def test_chart_renders_the_pod_policy_for_the_served_namespaces(strict_cluster):
    def pod_policy(*values: str) -> list[dict]:
        docs = helm_template(strict_cluster, OPERATOR_NAMESPACE, *values, release=RELEASE)
        return [
            d for d in docs if d["kind"].startswith("ValidatingAdmissionPolicy") and d["metadata"]["name"] == POLICY
        ]

    policy, binding = pod_policy()
    assert policy["spec"]["failurePolicy"] == "Fail"
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["pods", "pods/status"] and rule["operations"] == ["CREATE", "UPDATE"]
    assert policy["spec"]["matchConditions"] == [
        {"name": "not-the-operator", "expression": f"request.userInfo.username != '{OPERATOR}'"}
    ]
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert f"request.userInfo.username == '{DEVICE_PLUGIN}'" in variables["allocator"]
    assert COLLECTOR in variables["collector"] and "system:kube-controller-manager" in variables["collector"]
    assert binding["spec"] == {"policyName": POLICY, "validationActions": ["Deny"]}, "cluster-wide: every namespace"

    policy_without_plugin, namespaced = pod_policy(
        "--set", "watch.namespaces={team-a,team-b}", "--set", "admission.devicePluginServiceAccount="
    )
    assert namespaced["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    ]
    allocator = next(v for v in policy_without_plugin["spec"]["variables"] if v["name"] == "allocator")
    assert "serviceaccount" not in allocator["expression"], "no device plugin: only nodes allocate"
    assert pod_policy("--set", "admission.pods=false") == []
    assert pod_policy("--set", "admission.enabled=false") == []
