"""The pod-template policy: baseline and restricted levels, the node-side volume types, lifted only by
allow_privileged; the namespace rule always enforced."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuronplace.placement.podsecurity import (
    BASELINE_CAPABILITIES,
    NODE_VOLUME_TYPES,
    RESTRICTED_VOLUME_TYPES,
    SAFE_SYSCTLS,
    TemplatePolicy,
    check_template,
)


def safe_template() -> dict:
    """A realistic inference template: the kind of thing users write, with nothing privileged."""
    return {
        "metadata": {"labels": {"app": "bert"}, "annotations": {"team": "search"}},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "server",
                    "image": "example.com/bert:1",
                    "ports": [{"containerPort": 8080}],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                    },
                    "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                }
            ],
            "volumes": [{"name": "cache", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "bert"}}],
        },
    }


def with_change(path: list, value) -> dict:
    """safe_template() with one field set (path of keys/indexes), creating objects on the way."""
    template = safe_template()
    node = template
    for key in path[:-1]:
        if isinstance(key, str) and key not in node:
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return template


# Each entry: (description, path, value, a word the violation message must contain)
UNSAFE_CHANGES = [
    ("privileged container", ["spec", "containers", 0, "securityContext", "privileged"], True, "privileged"),
    ("host network", ["spec", "hostNetwork"], True, "hostNetwork"),
    ("host pid", ["spec", "hostPID"], True, "hostPID"),
    ("host ipc", ["spec", "hostIPC"], True, "hostIPC"),
    ("hostPath volume", ["spec", "volumes", 0], {"name": "root", "hostPath": {"path": "/"}}, "hostPath"),
    ("SYS_ADMIN", ["spec", "containers", 0, "securityContext", "capabilities", "add"], ["SYS_ADMIN"], "SYS_ADMIN"),
    (
        "CAP_ prefixed",
        ["spec", "containers", 0, "securityContext", "capabilities", "add"],
        ["CAP_SYS_PTRACE"],
        "SYS_PTRACE",
    ),
    (
        # Pod Security admission compares names exactly: it refuses CAP_CHOWN though CHOWN is allowed.
        "CAP_ prefixed baseline capability",
        ["spec", "containers", 0, "securityContext", "capabilities", "add"],
        ["CAP_CHOWN"],
        "CAP_CHOWN",
    ),
    (
        "privilege escalation",
        ["spec", "containers", 0, "securityContext", "allowPrivilegeEscalation"],
        True,
        "allowPrivilegeEscalation",
    ),
    ("root container", ["spec", "containers", 0, "securityContext", "runAsUser"], 0, "runAsUser"),
    ("root pod", ["spec", "securityContext", "runAsUser"], 0, "runAsUser"),
    ("host port", ["spec", "containers", 0, "ports", 0, "hostPort"], 80, "hostPort"),
    ("unmasked proc", ["spec", "containers", 0, "securityContext", "procMount"], "Unmasked", "procMount"),
    ("seccomp unconfined", ["spec", "securityContext", "seccompProfile", "type"], "Unconfined", "seccomp"),
    (
        "apparmor unconfined",
        ["spec", "containers", 0, "securityContext", "appArmorProfile"],
        {"type": "Unconfined"},
        "appArmor",
    ),
    (
        "apparmor annotation",
        ["metadata", "annotations", "container.apparmor.security.beta.kubernetes.io/server"],
        "unconfined",
        "AppArmor",
    ),
    ("selinux type", ["spec", "securityContext", "seLinuxOptions"], {"type": "spc_t"}, "spc_t"),
    ("selinux user", ["spec", "containers", 0, "securityContext", "seLinuxOptions"], {"user": "system_u"}, "user"),
    (
        "unsafe sysctl",
        ["spec", "securityContext", "sysctls"],
        [{"name": "kernel.msgmax", "value": "1"}],
        "kernel.msgmax",
    ),
    ("windows host process", ["spec", "securityContext", "windowsOptions"], {"hostProcess": True}, "hostProcess"),
    (
        "privileged init container",
        ["spec", "initContainers"],
        [{"name": "setup", "image": "busybox", "securityContext": {"privileged": True}}],
        "initContainers[0]",
    ),
]


def test_a_realistic_template_is_allowed():
    assert check_template(safe_template(), TemplatePolicy(allow_privileged=False), namespace="team-a") == []


def test_an_empty_template_is_allowed():
    assert check_template({}, TemplatePolicy(allow_privileged=False)) == []


@pytest.mark.parametrize("description, path, value, word", UNSAFE_CHANGES, ids=[c[0] for c in UNSAFE_CHANGES])
def test_each_unsafe_field_is_refused_with_its_path(description, path, value, word):
    violations = check_template(with_change(path, value), TemplatePolicy(allow_privileged=False))
    assert len(violations) == 1, violations
    assert word in violations[0]
    assert violations[0].startswith("template.")


@pytest.mark.parametrize("description, path, value, word", UNSAFE_CHANGES, ids=[c[0] for c in UNSAFE_CHANGES])
def test_allow_privileged_lifts_every_rule(description, path, value, word):
    assert check_template(with_change(path, value), TemplatePolicy(allow_privileged=True)) == []


def test_every_baseline_capability_and_safe_sysctl_is_allowed():
    template = with_change(
        ["spec", "containers", 0, "securityContext", "capabilities", "add"], sorted(BASELINE_CAPABILITIES)
    )
    template["spec"]["securityContext"]["sysctls"] = [{"name": n, "value": "1"} for n in sorted(SAFE_SYSCTLS)]
    assert check_template(template, TemplatePolicy(allow_privileged=False)) == []


def test_explicit_false_and_default_values_are_allowed():
    template = safe_template()
    template["spec"].update(hostNetwork=False, hostPID=False, hostIPC=False)
    template["spec"]["containers"][0]["securityContext"].update(privileged=False, procMount="Default")
    template["spec"]["containers"][0]["ports"][0]["hostPort"] = 0
    template["spec"]["securityContext"]["seLinuxOptions"] = {"type": "container_t", "level": "s0:c1,c2"}
    assert check_template(template, TemplatePolicy(allow_privileged=False)) == []


def test_several_violations_are_all_reported():
    template = with_change(["spec", "hostPID"], True)
    template["spec"]["containers"][0]["securityContext"]["privileged"] = True
    template["spec"]["volumes"].append({"name": "docker", "hostPath": {"path": "/var/run/docker.sock"}})
    violations = check_template(template, TemplatePolicy(allow_privileged=False))
    assert len(violations) == 3
    assert any("volumes[2] (docker)" in v for v in violations)


@pytest.mark.parametrize("allow_privileged", [False, True])
def test_another_namespace_is_refused_even_when_privileged_is_allowed(allow_privileged):
    template = with_change(["metadata", "namespace"], "kube-system")
    violations = check_template(template, TemplatePolicy(allow_privileged=allow_privileged), namespace="team-a")
    assert len(violations) == 1
    assert "'kube-system'" in violations[0] and "'team-a'" in violations[0]


def test_the_resources_own_namespace_in_the_template_is_fine():
    assert check_template(with_change(["metadata", "namespace"], "team-a"), namespace="team-a") == []


@pytest.mark.parametrize(
    "template, word",
    [
        (None, "NoneType"),
        ([], "list"),
        ({"spec": "oops"}, "template.spec"),
        ({"metadata": 3, "spec": {}}, "template.metadata"),
        ({"spec": {"containers": [{"name": "c", "securityContext": "root"}]}}, "containers[0].securityContext"),
    ],
)
def test_malformed_templates_are_reported_not_raised(template, word):
    violations = check_template(template, TemplatePolicy(allow_privileged=False))
    assert violations and word in violations[0]


def test_the_input_is_not_modified():
    template = with_change(["spec", "hostNetwork"], True)
    before = copy.deepcopy(template)
    check_template(template, TemplatePolicy(allow_privileged=False), namespace="a")
    assert template == before


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 70000) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "spec",
        "metadata",
        "containers",
        "initContainers",
        "securityContext",
        "capabilities",
        "add",
        "volumes",
        "hostPath",
        "ports",
        "hostPort",
        "privileged",
        "sysctls",
        "name",
        "seLinuxOptions",
        "type",
        "annotations",
    ]
)
pod_like = st.recursive(
    st.none() | st.booleans() | st.integers(-1, 3) | st.sampled_from(["SYS_ADMIN", "Unconfined", "x"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(field_names, children, max_size=4),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, pod_like), st.booleans())
def test_never_raises_and_always_returns_strings(template, allow_privileged):
    violations = check_template(template, TemplatePolicy(allow_privileged=allow_privileged), namespace="a")
    assert isinstance(violations, list) and all(isinstance(v, str) and v for v in violations)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(UNSAFE_CHANGES), min_size=1, max_size=4, unique_by=lambda c: tuple(map(str, c[1]))),
)
def test_any_combination_of_unsafe_fields_is_refused_and_allowed_only_when_privileged(changes):
    template = safe_template()
    for _, path, value, _ in changes:
        node = template
        for key in path[:-1]:
            if isinstance(key, str) and key not in node:
                node[key] = {}
            node = node[key]
        node[path[-1]] = copy.deepcopy(value)
    violations = check_template(template, TemplatePolicy(allow_privileged=False))
    # the changes touch distinct fields, each worth exactly one violation on its own
    assert len(violations) == len(changes), violations
    assert check_template(template, TemplatePolicy(allow_privileged=True)) == []


# ---- the node-side volume types (refused at every level unless a setting names them) --------------

NODE_VOLUMES = {
    "gitRepo": {"repository": "https://example.com/model.git"},
    "nfs": {"server": "10.0.0.1", "path": "/models"},
    "iscsi": {"targetPortal": "10.0.0.2:3260", "iqn": "iqn.2001-04.com.example:storage", "lun": 0},
    "rbd": {"monitors": ["10.0.0.3:6789"], "image": "models"},
    "cephfs": {"monitors": ["10.0.0.3:6789"]},
    "glusterfs": {"endpoints": "gluster", "path": "models"},
    "flexVolume": {"driver": "example.com/driver"},
    "ephemeral": {"volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"]}}},
}


def test_every_refused_volume_type_has_a_case_and_a_reason():
    assert set(NODE_VOLUMES) == set(NODE_VOLUME_TYPES)
    assert all(len(reason) > 20 for reason in NODE_VOLUME_TYPES.values())


@pytest.mark.parametrize("kind", sorted(NODE_VOLUMES))
@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_node_side_volume_types_are_refused_with_field_and_reason(kind, level):
    template = with_change(["spec", "volumes", 1], {"name": "data", kind: NODE_VOLUMES[kind]})
    violations = check_template(template, TemplatePolicy(level=level))
    assert violations == [
        f"template.spec.volumes[1] (data): {kind} volumes are refused: {NODE_VOLUME_TYPES[kind]} "
        f"(allow them with NEURONPLACE_ALLOW_VOLUME_TYPES={kind})"
    ]
    allowed = check_template(template, TemplatePolicy(level=level, allowed_volume_types=frozenset({kind})))
    if level == "baseline" or kind in RESTRICTED_VOLUME_TYPES:
        assert allowed == []
    else:  # the setting lifts our refusal, not the restricted profile's own list
        assert len(allowed) == 1 and "the restricted level admits only" in allowed[0]
    assert check_template(template, TemplatePolicy(level=level, allow_privileged=True)) == []


def test_only_refusable_volume_types_can_be_allowed_and_levels_are_checked():
    with pytest.raises(ValueError, match="hostPath cannot be allowed"):
        TemplatePolicy(allowed_volume_types=frozenset({"hostPath"}))
    with pytest.raises(ValueError, match="'strict' is not one of baseline, restricted"):
        TemplatePolicy(level="strict")


# ---- the restricted level ------------------------------------------------------------------------

RESTRICTED = TemplatePolicy(level="restricted")
SERVER = ["spec", "containers", 0, "securityContext"]

# (description, path, value, the field the message must name, a word of the rule)
RESTRICTED_CHANGES = [
    ("escalation unset", [*SERVER, "allowPrivilegeEscalation"], None, "allowPrivilegeEscalation", "false"),
    ("root allowed at pod level", ["spec", "securityContext", "runAsNonRoot"], False, "runAsNonRoot", "false"),
    (
        "root allowed in the container",
        [*SERVER, "runAsNonRoot"],
        False,
        "containers[0].securityContext.runAsNonRoot",
        "true",
    ),
    ("no seccomp anywhere", ["spec", "securityContext", "seccompProfile"], {}, "seccompProfile.type", "RuntimeDefault"),
    ("capabilities not dropped", [*SERVER, "capabilities", "drop"], [], "capabilities.drop", "ALL"),
    (
        "a baseline capability added",
        [*SERVER, "capabilities", "add"],
        ["CHOWN"],
        "capabilities.add",
        "NET_BIND_SERVICE",
    ),
    (
        "a hostPath-free but odd volume",
        ["spec", "volumes", 1],
        {"name": "v", "azureFile": {}},
        "volumes[1] (v)",
        "admits only",
    ),
]


def test_the_safe_template_passes_restricted():
    assert check_template(safe_template(), RESTRICTED) == []


@pytest.mark.parametrize(("description", "path", "value", "field", "rule"), RESTRICTED_CHANGES)
def test_restricted_refuses_each_rule_naming_the_field(description, path, value, field, rule):
    template = with_change(path, value)
    assert check_template(template, TemplatePolicy(level="baseline")) == [], "baseline admits it"
    violations = check_template(template, RESTRICTED)
    assert len(violations) == 1, violations
    assert field in violations[0] and rule in violations[0] and "restricted" in violations[0], violations


def test_restricted_accepts_container_level_settings_instead_of_pod_level():
    template = safe_template()
    del template["spec"]["securityContext"]
    template["spec"]["containers"][0]["securityContext"].update(
        {"runAsNonRoot": True, "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}
    )
    assert check_template(template, RESTRICTED) == []
    template["spec"]["initContainers"] = [{"name": "fetch", "image": "busybox"}]  # no securityContext at all
    words = " ".join(check_template(template, RESTRICTED))
    for rule in (
        "initContainers[0].securityContext.allowPrivilegeEscalation",
        "initContainers[0].securityContext.runAsNonRoot",
        "initContainers[0].securityContext.seccompProfile",
        "initContainers[0].securityContext.capabilities.drop",
    ):
        assert rule in words
