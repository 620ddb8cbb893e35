"""The operator's reserved pod metadata and env, defined once in placement/names.py: templates that
carry them are refused (validation names the key; the CRD's CEL says the same at create), the
chart's admission policy for pods lists exactly the same keys, and the template size is bounded.

The API server's own enforcement is in tests/cluster/test_pod_admission.py (the pod policy) and
tests/cluster/test_operator_validation.py (the CRD).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from neuronplace.placement import crd
from neuronplace.placement.names import (
    ALLOCATION_ANNOTATIONS,
    AWS_NEURON_IDS,
    CAPACITY_REQUEST_LABEL,
    CORES_ANNOTATION,
    ENV_NODE_CORES,
    ENV_VISIBLE_CORES,
    GROUP,
    INFERENCE_LABEL,
    NEURON_ALLOCATED,
    RESERVED_ENV,
    RESERVED_ENV_PREFIX,
    RESERVED_KEY_PREFIXES,
    RESERVED_KEYS,
)
from neuronplace.placement.reserved import is_reserved_env, is_reserved_key, reserved_in_template
from neuronplace.placement.validation import template_bytes, validate

ROOT = Path(__file__).resolve().parents[2]
POD_POLICY = ROOT / "charts" / "neuronplace" / "templates" / "pod-admission.yaml"
HELPERS = ROOT / "charts" / "neuronplace" / "templates" / "_helpers.tpl"


def inference(**template_changes) -> dict:
    template = {
        "metadata": {"labels": {"app": "web"}, "annotations": {"team": "a"}},
        "spec": {
            "containers": [{"name": "model", "image": "m:1", "env": [{"name": "NEURON_RT_LOG_LEVEL", "value": "1"}]}]
        },
    }
    for path, value in template_changes.items():
        node = template
        *parents, last = path.split("__")
        for key in parents:
            node = node[key] if not key.isdigit() else node[int(key)]
        node[last] = value
    return {"metadata": {"name": "web", "namespace": "a"}, "spec": {"coresPerReplica": 2, "template": template}}


def test_an_ordinary_template_is_valid():
    assert validate(inference()) is None


@pytest.mark.parametrize(
    "key",
    [
        INFERENCE_LABEL,
        CAPACITY_REQUEST_LABEL,
        CORES_ANNOTATION,
        "neuronplace.io/anything",
        AWS_NEURON_IDS,
        NEURON_ALLOCATED,
        "NEURON_X",
    ],
)
@pytest.mark.parametrize("kind", ["labels", "annotations"])
def test_reserved_label_or_annotation_is_refused_naming_it(kind, key):
    resource = inference()
    resource["spec"]["template"]["metadata"][kind][key] = "x"
    reason = validate(resource)
    assert reason and f"spec.template.metadata.{kind} must not carry {key}" in reason


@pytest.mark.parametrize("key", ["example.com/neuronplace.io", "team.neuronplace.io/x", "my-NEURON_X", "neuron_x"])
def test_keys_that_only_look_alike_are_the_tenants(key):
    assert not is_reserved_key(key)


@pytest.mark.parametrize(
    "name", [ENV_VISIBLE_CORES, "NEURON_RT_NUM_CORES", ENV_NODE_CORES, "NEURONPLACE_DP_DIM", "NEURONPLACE_X"]
)
@pytest.mark.parametrize("where", ["containers", "initContainers", "sidecar"])
def test_reserved_env_is_refused_in_every_container_naming_it(name, where):
    resource = inference()
    spec = resource["spec"]["template"]["spec"]
    container = {"name": "c", "image": "c:1", "env": [{"name": "OK", "value": "1"}, {"name": name, "value": "0-127"}]}
    if where == "containers":
        spec["containers"][0]["env"].append(container["env"][1])
        index, field = 0, "containers"
    elif where == "sidecar":
        spec["containers"].append(container)
        index, field = 1, "containers"
    else:
        spec["initContainers"] = [container]
        index, field = 0, "initContainers"
    reason = validate(resource)
    assert reason and f"spec.template.spec.{field}[{index}].env must not set {name}" in reason


def test_only_our_env_is_reserved():
    assert all(is_reserved_env(name) for name in RESERVED_ENV)
    assert not is_reserved_env("NEURON_RT_LOG_LEVEL") and not is_reserved_env("MY_NEURONPLACE_X")


def test_malformed_templates_do_not_crash_the_check():
    for template in (
        None,
        [],
        {"metadata": []},
        {"metadata": {"labels": ["a"]}},
        {"spec": {"containers": [1, {"env": [1]}]}},
    ):
        assert reserved_in_template(template) is None


# ---- size ------------------------------------------------------------------------------------


def test_template_size_is_bounded_counting_the_first_container_once_per_process():
    big = "x" * (crd.MAX_TEMPLATE_BYTES // 4)
    resource = inference(spec__containers__0__args=[big])
    assert validate(resource) is None
    many = copy.deepcopy(resource)
    many["spec"].update(coresPerReplica=4, processesPerReplica=4)
    reason = validate(many)
    assert reason and f"over the limit of {crd.MAX_TEMPLATE_BYTES}" in reason
    assert (
        template_bytes(many["spec"]["template"], 4)
        > crd.MAX_TEMPLATE_BYTES
        >= template_bytes(resource["spec"]["template"], 1)
    )
    huge = inference(metadata__annotations={"note": "x" * crd.MAX_TEMPLATE_BYTES})
    assert "spec.template is" in (validate(huge) or "")


def test_the_crd_states_and_bounds_the_template_size():
    template = crd.spec_schema()["properties"]["template"]
    assert f"{crd.MAX_TEMPLATE_BYTES // 1024} KiB" in template["description"]
    assert template["properties"]["spec"]["maxProperties"] == crd.MAX_FIELDS
    containers = template["properties"]["spec"]["properties"]
    for field in ("containers", "initContainers"):
        assert containers[field]["maxItems"] == crd.MAX_CONTAINERS
        assert containers[field]["items"]["maxProperties"] == crd.MAX_FIELDS
        assert containers[field]["items"]["properties"]["env"]["maxItems"] == crd.MAX_ENV
    for kind in ("labels", "annotations"):
        assert template["properties"]["metadata"]["properties"][kind]["maxProperties"] == crd.MAX_RESOURCES


# ---- the CRD's CEL ---------------------------------------------------------------------------


def test_the_crd_refuses_reserved_keys_and_env_with_a_message_naming_them():
    template = crd.spec_schema()["properties"]["template"]
    for kind in ("labels", "annotations"):
        (rule,) = template["properties"]["metadata"]["properties"][kind]["x-kubernetes-validations"]
        assert rule["rule"] == f"self.all(k, !({crd.reserved_key_cel('k')}))"
        assert f"spec.template.metadata.{kind} must not carry ' + self.filter(k, " in rule["messageExpression"]
    cel = crd.reserved_key_cel("k")
    for prefix in RESERVED_KEY_PREFIXES:
        assert f"k.startsWith('{prefix}')" in cel
    assert f"k in {[*RESERVED_KEYS]!r}" in cel
    for field in ("containers", "initContainers"):
        rules = template["properties"]["spec"]["properties"][field]["items"]["x-kubernetes-validations"]
        env_rule = next(r for r in rules if "env" in r["rule"])
        assert crd.reserved_env_cel("e.name") in env_rule["rule"]
        assert f"e.name.startsWith('{RESERVED_ENV_PREFIX}')" in env_rule["rule"]
        assert "[0].name" in env_rule["messageExpression"]


# ---- the chart's admission policy for pods ---------------------------------------------------


def _policy_variables() -> dict[str, str]:
    """The policy's CEL variables, read from the template (Helm only fills in identities)."""
    text = POD_POLICY.read_text()
    document = text[text.index("apiVersion:") : text.index("\n---")]
    document = re.sub(r"\{\{[^}]*\}\}", "X", document)
    (policy,) = [yaml.safe_load(document)]
    return {v["name"]: v["expression"] for v in policy["spec"]["variables"]}


def _cel_list(expression: str) -> list[str]:
    assert re.fullmatch(r"\[('[^']*'(, )?)*\]", expression), expression
    return re.findall(r"'([^']*)'", expression)


def test_the_pod_policy_reserves_exactly_the_keys_names_py_defines():
    variables = _policy_variables()
    assert _cel_list(variables["reservedPrefixes"]) == list(RESERVED_KEY_PREFIXES)
    assert _cel_list(variables["reservedKeys"]) == list(RESERVED_KEYS)
    assert _cel_list(variables["allocationKeys"]) == list(ALLOCATION_ANNOTATIONS)
    # The owner it protects is our API group's ...
    assert f"r.apiVersion.startsWith('{GROUP}/')" in variables["ownedByUs"]
    # ... and every key comparison goes through those lists: no key is spelled out elsewhere in its CEL.
    for name, expression in variables.items():
        if name not in ("reservedPrefixes", "reservedKeys", "allocationKeys", "ownedByUs"):
            assert not re.search(r"'(neuronplace\.io/|NEURON_|AWS_NEURON_IDS)", expression), (name, expression)


def test_the_operator_may_set_finalizers_of_its_inferences():
    helpers = HELPERS.read_text()
    rule = '- apiGroups: ["neuronplace.io"]\n  resources: ["neuroninferences/finalizers"]\n  verbs: ["update"]'
    assert rule in helpers
