"""Who may create NeuronInferences, on the real API server: the chart's ValidatingAdmissionPolicy
refuses an author who may not create pods in the namespace (the operator would otherwise create
them on the author's behalf), and the chart's aggregated ClusterRoles give the built-in `view`,
`edit` and `admin` roles NeuronInference access. Users are impersonated (`kubectl --as`), so
the API server's own authorizer and admission decide.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import yaml

from neuronplace.placement.names import CRD_NAME
from support.builders import inference
from support.chart import helm_template, install

# Not the other chart tests' release: its cluster-scoped objects must never meet theirs.
RELEASE = "npadm"
FULLNAME = f"{RELEASE}-neuronplace"
POLICY = f"{FULLNAME}-needs-pod-create"
NEURONINFERENCES = "neuroninferences.neuronplace.io"
# How long the API server may take to start enforcing a new policy (its type check and the
# policy and binding reaching the admission plugin), or the aggregation controller to fold new
# rules into the built-in roles. Waits poll and end as soon as the effect shows.
ACTIVATION_SECONDS = 30


def policy_denial(namespace: str, user: str, action: str = "creating") -> str:
    """The policy's message (its messageExpression) for ``user`` in ``namespace``."""
    return (
        f"{action} a NeuronInference needs permission to create pods in namespace {namespace}, which "
        f"{user} does not have: the operator creates its pods for you, so it grants nothing you do "
        "not already have"
    )


def user_name(role: str) -> str:
    # Distinct per test: RBAC subjects are cluster-wide names.
    return f"np-{role}-{uuid.uuid4().hex[:6]}"


def as_user(cluster, user: str, *args: str, input: str | None = None):
    return cluster.kubectl(*args, f"--as={user}", input=input, check=False)


def create_as(cluster, user: str, namespace: str, resource: dict, *extra: str):
    return as_user(cluster, user, "create", "-n", namespace, "-f", "-", *extra, input=json.dumps(resource))


def can_i(cluster, user: str, verb: str, resource: str, namespace: str, *extra: str) -> bool:
    result = as_user(cluster, user, "auth", "can-i", verb, resource, "-n", namespace, *extra)
    assert result.stdout.strip() in ("yes", "no"), result.stdout + result.stderr
    return result.stdout.strip() == "yes"


def exists(cluster, *args: str) -> bool:
    return cluster.kubectl("get", *args, check=False).returncode == 0


def grant(cluster, namespace: str, name: str, user: str, rules: list[dict]) -> None:
    """A Role with ``rules`` in ``namespace`` and a RoleBinding of it to ``user``."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": rules,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([role, binding]))


NEURONINFERENCE_AUTHOR = [
    {
        "apiGroups": ["neuronplace.io"],
        "resources": ["neuroninferences"],
        "verbs": ["get", "list", "watch", "create", "update", "patch"],
    }
]
POD_CREATOR = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]


def resource(name: str) -> dict:
    # The operator may run in this session (other tests' fixture), so the resource asks for a node
    # pool that does not exist: nothing is placed, only admission is exercised.
    return inference(name, pool=f"no-such-pool-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def release(local_cluster, namespace) -> Iterator[str]:
    """The chart installed with its defaults (policy and aggregated roles on) as ``RELEASE``;
    uninstalled afterwards unless the test did it."""
    try:
        install(local_cluster, namespace, release=RELEASE)
        local_cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
        yield RELEASE
    finally:
        local_cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False, timeout=180)


def wait_for_policy_denial(cluster, wait_for, user: str, namespace: str, body: dict, message: str) -> str:
    """Poll a server-side dry-run create as ``user`` (admission runs, nothing is stored) until the
    policy refuses it with ``message``; return the API server's error text."""

    def denied():
        result = create_as(cluster, user, namespace, body, "--dry-run=server")
        return result.stderr if result.returncode != 0 and message in result.stderr else None

    return wait_for(denied, ACTIVATION_SECONDS, f"the policy to refuse {user}")


# ---- what the chart renders ------------------------------------------------------------------


@pytest.mark.cluster
def test_chart_renders_the_policy_and_the_aggregated_roles_and_values_turn_them_off(local_cluster, namespace):
    docs = helm_template(local_cluster, namespace, release=RELEASE)
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    # Beside it, the policy for pods (tests/cluster/test_pod_admission.py).
    (policy,) = [p for p in by_kind["ValidatingAdmissionPolicy"] if p["metadata"]["name"] == POLICY]
    (binding,) = [b for b in by_kind["ValidatingAdmissionPolicyBinding"] if b["metadata"]["name"] == POLICY]
    assert policy["metadata"]["name"] == binding["metadata"]["name"] == POLICY
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["neuronplace.io"] and rule["resources"] == ["neuroninferences"]
    assert sorted(rule["operations"]) == ["CREATE", "UPDATE"]
    (validation,) = spec["validations"]
    assert validation["expression"] == (
        "authorizer.group('').resource('pods').namespace(object.metadata.namespace).check('create').allowed()"
    )
    assert binding["spec"] == {"policyName": POLICY, "validationActions": ["Deny"]}
    # helm uninstall must take them with it: no keep policy (unlike the CRD).
    for doc in (policy, binding):
        assert "helm.sh/resource-policy" not in (doc["metadata"].get("annotations") or {})

    roles = {role["metadata"]["name"]: role for role in by_kind["ClusterRole"]}
    view, edit = roles[f"{FULLNAME}-view"], roles[f"{FULLNAME}-edit"]
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    for label in ("aggregate-to-edit", "aggregate-to-admin"):
        assert edit["metadata"]["labels"][f"rbac.authorization.k8s.io/{label}"] == "true"
    assert {verb for rule in view["rules"] for verb in rule["verbs"]} == {"get", "list", "watch"}
    writes = {
        (resource, verb)
        for rule in edit["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        if verb not in ("get", "list", "watch")
    }
    assert {
        ("neuroninferences", verb) for verb in ("create", "update", "patch", "delete", "deletecollection")
    } <= writes
    assert not {w for w in writes if w[0] == "neuroninferences/status"}, "status is the operator's alone"

    # Each can be turned off on its own; the operator's own objects stay as they were.
    off = helm_template(
        local_cluster,
        namespace,
        "--set",
        "admission.enabled=false",
        "--set",
        "rbac.aggregateToDefaultRoles=false",
        release=RELEASE,
    )
    kinds = {doc["kind"] for doc in off}
    assert not kinds & {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}, kinds
    assert {doc["metadata"]["name"] for doc in off if doc["kind"] == "ClusterRole"} == {FULLNAME}
    operator_role = next(doc for doc in docs if doc["kind"] == "ClusterRole" and doc["metadata"]["name"] == FULLNAME)
    assert operator_role == next(doc for doc in off if doc["kind"] == "ClusterRole"), "the operator needs nothing new"


# ---- the policy on the API server -----------------------------------------------------------


@pytest.mark.cluster
def test_neuroninference_authors_need_pod_create_and_uninstall_removes_the_policy(
    local_cluster, namespace, release, wait_for
):
    cluster = local_cluster
    assert exists(cluster, "validatingadmissionpolicy", POLICY)
    assert exists(cluster, "validatingadmissionpolicybinding", POLICY)
    author = user_name("author")
    grant(cluster, namespace, "neuroninference-author", author, NEURONINFERENCE_AUTHOR)
    wait_for(lambda: can_i(cluster, author, "create", NEURONINFERENCES, namespace), 30, "the author's Role")
    # Control: RBAC alone would let this user create the resource, and not pods. Any refusal
    # below is the policy's.
    assert not can_i(cluster, author, "create", "pods", namespace)

    body = resource("guarded")
    stderr = wait_for_policy_denial(cluster, wait_for, author, namespace, body, policy_denial(namespace, author))
    assert f"ValidatingAdmissionPolicy '{POLICY}'" in stderr and "Forbidden" in stderr, stderr
    refused = create_as(cluster, author, namespace, body)
    assert refused.returncode != 0 and policy_denial(namespace, author) in refused.stderr, refused.stderr
    assert not exists(cluster, "ninf", "guarded", "-n", namespace)

    # The same user, once a Role gives pod create, is admitted.
    grant(cluster, namespace, "pod-creator", author, POD_CREATOR)

    def admitted():
        result = create_as(cluster, author, namespace, body)
        assert result.returncode == 0 or "needs permission to create pods" in result.stderr, result.stderr
        return result.returncode == 0

    wait_for(admitted, 30, "the create to be admitted once the user may create pods")
    assert exists(cluster, "ninf", "guarded", "-n", namespace)

    # Without pod create again, changing the spec is refused too ...
    cluster.kubectl("delete", "rolebinding", "pod-creator", "-n", namespace)
    wait_for(lambda: not can_i(cluster, author, "create", "pods", namespace), 30, "pod create to be withdrawn")
    spec_change = ["patch", "ninf", "guarded", "-n", namespace, "--type=merge", "-p", '{"spec":{"replicas":2}}']
    changed = as_user(cluster, author, *spec_change)
    assert changed.returncode != 0, changed.stdout
    assert policy_denial(namespace, author, "changing the spec of") in changed.stderr, changed.stderr
    assert cluster.get_json("ninf", "guarded", "-n", namespace)["spec"]["replicas"] == 1
    # ... while an UPDATE that leaves the spec alone (labels, finalizers) is not checked: it cannot
    # change the pods, and the garbage collector, which may update but not create pods, must be able
    # to remove finalizers for a foreground or orphaning delete to finish.
    labelled = as_user(cluster, author, "label", "ninf", "guarded", "-n", namespace, "team=a")
    assert labelled.returncode == 0, labelled.stderr
    collector = "system:serviceaccount:kube-system:generic-garbage-collector"
    assert not can_i(cluster, collector, "create", "pods", namespace)
    cluster.kubectl(
        "patch", "ninf", "guarded", "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":["test/hold"]}}'
    )
    cluster.kubectl("delete", "ninf", "guarded", "-n", namespace, "--wait=false")
    released = as_user(
        cluster,
        collector,
        *("patch", "ninf", "guarded", "-n", namespace, "--type=json"),
        *("-p", '[{"op":"remove","path":"/metadata/finalizers"}]'),
    )
    assert released.returncode == 0, released.stderr
    wait_for(lambda: not exists(cluster, "ninf", "guarded", "-n", namespace), 30, "the deleted resource to go")

    # helm uninstall removes the policy, its binding and the aggregated roles ...
    cluster.helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "120s", timeout=180)
    for kind, name in (
        ("validatingadmissionpolicy", POLICY),
        ("validatingadmissionpolicybinding", POLICY),
        ("clusterrole", f"{FULLNAME}-view"),
        ("clusterrole", f"{FULLNAME}-edit"),
    ):
        assert not exists(cluster, kind, name), f"{kind}/{name} left behind by helm uninstall"

    # ... and with it gone the same user, still without pod create, is admitted: the refusals above
    # were the policy's and nothing else's.
    def admitted_without_policy():
        result = create_as(cluster, author, namespace, body, "--dry-run=server")
        assert result.returncode == 0 or "needs permission to create pods" in result.stderr, result.stderr
        return result.returncode == 0

    wait_for(admitted_without_policy, ACTIVATION_SECONDS, "the policy to stop refusing after uninstall")


# ---- the aggregated roles -------------------------------------------------------------------


@pytest.mark.cluster
def test_view_reads_neuroninferences_and_edit_writes_them(local_cluster, namespace, release, wait_for):
    cluster = local_cluster
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(resource("existing")))
    user = user_name("teammate")
    cluster.kubectl("create", "rolebinding", "team-view", "--clusterrole=view", f"--user={user}", "-n", namespace)
    wait_for(
        lambda: can_i(cluster, user, "list", NEURONINFERENCES, namespace),
        ACTIVATION_SECONDS,
        "the chart's view rules to be aggregated into `view`",
    )
    listed = as_user(cluster, user, "get", "ninf", "-n", namespace, "-o", "name")
    assert listed.returncode == 0 and "existing" in listed.stdout, listed.stderr
    got = as_user(cluster, user, "get", "ninf", "existing", "-n", namespace, "-o", "json")
    assert got.returncode == 0 and json.loads(got.stdout)["metadata"]["name"] == "existing", got.stderr
    # Refused by RBAC, before admission: `view` holds neither NeuronInference create nor pod create.
    refused = create_as(cluster, user, namespace, resource("mine"))
    assert refused.returncode != 0, refused.stdout
    assert 'cannot create resource "neuroninferences" in API group "neuronplace.io"' in refused.stderr, refused.stderr
    assert not can_i(cluster, user, "patch", NEURONINFERENCES, namespace, "--subresource=status")

    cluster.kubectl("create", "rolebinding", "team-edit", "--clusterrole=edit", f"--user={user}", "-n", namespace)
    wait_for(
        lambda: can_i(cluster, user, "create", NEURONINFERENCES, namespace),
        ACTIVATION_SECONDS,
        "the chart's edit rules to be aggregated into `edit`",
    )
    # `edit` also holds pod create, so the policy admits this user.
    assert can_i(cluster, user, "create", "pods", namespace)
    created = create_as(cluster, user, namespace, resource("mine"))
    assert created.returncode == 0, created.stderr
    patched = as_user(
        cluster, user, "patch", "ninf", "mine", "-n", namespace, "--type=merge", "-p", '{"spec":{"replicas":2}}'
    )
    assert patched.returncode == 0, patched.stderr
    scaled = as_user(cluster, user, "scale", "ninf", "mine", "-n", namespace, "--replicas=3")
    assert scaled.returncode == 0, scaled.stderr
    # Status stays the operator's: not even `edit` may write it.
    status = as_user(
        cluster,
        user,
        "patch",
        "ninf",
        "mine",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"replicas":9}}',
    )
    assert status.returncode != 0 and "neuroninferences/status" in status.stderr, status.stderr
    deleted = as_user(cluster, user, "delete", "ninf", "mine", "existing", "-n", namespace, "--wait=false")
    assert deleted.returncode == 0, deleted.stderr

    # `admin` gets the same through `edit`.
    admin = user_name("admin")
    cluster.kubectl("create", "rolebinding", "team-admin", "--clusterrole=admin", f"--user={admin}", "-n", namespace)
    wait_for(
        lambda: can_i(cluster, admin, "deletecollection", NEURONINFERENCES, namespace),
        ACTIVATION_SECONDS,
        "the chart's rules to be aggregated into `admin`",
    )
