"""The NeuronInference CRD: the committed YAML is the generated one, and its contract names hold.

The API server's own enforcement of these rules (kubectl apply rejected with the rule's message)
is exercised in tests/cluster/test_operator_validation.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from neuronplace.placement import crd

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "crds" / "neuronplace.io_neuroninferences.yaml"


def _version() -> dict:
    return crd.build_crd()["spec"]["versions"][0]


def _spec() -> dict:
    return _version()["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _all_rules(node, path="") -> list[tuple[str, str, str]]:
    found = []
    if isinstance(node, dict):
        for rule in node.get("x-kubernetes-validations", []):
            found.append((path, rule["rule"], rule["message"]))
        for key, value in node.items():
            found += _all_rules(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _all_rules(value, f"{path}[{index}]")
    return found


def test_committed_yaml_is_the_generated_one():
    assert COMMITTED.read_text() == crd.render_crd_yaml(), (
        "crds/neuronplace.io_neuroninferences.yaml is stale: run "
        "`python -m neuronplace.placement.crd > crds/neuronplace.io_neuroninferences.yaml`"
    )


def test_module_regenerates_the_committed_yaml():
    result = subprocess.run(
        [sys.executable, "-m", "neuronplace.placement.crd"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == COMMITTED.read_text()


def test_names_group_version_scope():
    manifest = yaml.safe_load(COMMITTED.read_text())
    assert manifest["metadata"]["name"] == "neuroninferences.neuronplace.io"
    spec = manifest["spec"]
    assert spec["group"] == "neuronplace.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "NeuronInference"
    assert spec["names"]["plural"] == "neuroninferences"
    assert spec["names"]["shortNames"] == ["ninf"]
    assert [v["name"] for v in spec["versions"]] == ["v1alpha1"]
    assert spec["versions"][0]["served"] and spec["versions"][0]["storage"]


def test_spec_fields_and_defaults():
    props = _spec()["properties"]
    assert props["replicas"]["default"] == 1 and props["replicas"]["minimum"] == 0
    assert props["coresPerReplica"]["minimum"] == 1
    assert props["processesPerReplica"]["default"] == 1
    placement = props["placement"]["properties"]
    assert placement["strategy"]["enum"] == ["BinPack", "Spread"] and placement["strategy"]["default"] == "BinPack"
    assert placement["shapePolicy"]["enum"] == ["Strict", "Permissive"]
    assert set(placement) >= {"nodeSelector", "tolerations", "alignedStart"}
    assert set(props["dataParallel"]["properties"]) == {"dim", "dynamicBatching", "numWorkers"}
    assert set(props["template"]["properties"]) == {"metadata", "spec"}
    assert set(_spec()["required"]) == {"coresPerReplica", "template"}


def test_status_fields():
    status = _version()["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert set(status) >= {"observedGeneration", "replicas", "readyReplicas", "selector", "placements", "conditions"}
    entry = status["placements"]["items"]["properties"]
    assert set(entry) == {"replica", "pod", "node", "cores", "processCores", "deviceManagement", "resourceClaim"}
    condition = status["conditions"]["items"]["properties"]
    assert set(condition) >= {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}


def test_subresources_support_kubectl_scale_and_hpa():
    sub = _version()["subresources"]
    assert sub["status"] == {}
    assert sub["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def test_printer_columns():
    columns = _version()["additionalPrinterColumns"]
    default_columns = [c["name"].upper() for c in columns if not c.get("priority")]
    assert default_columns == ["REPLICAS", "READYREPLICAS", "CORES", "PLACED", "READY", "WAITINGFORCAPACITY", "AGE"]
    assert [c["name"] for c in columns if c.get("priority") == 1] == ["Strategy", "Binding"]
    by_name = {c["name"].upper(): c for c in columns}
    assert by_name["CORES"]["jsonPath"] == ".spec.coresPerReplica"
    assert by_name["STRATEGY"]["jsonPath"] == ".spec.placement.strategy"
    for condition in ("Placed", "Ready", "WaitingForCapacity"):
        assert by_name[condition.upper()]["jsonPath"] == f'.status.conditions[?(@.type=="{condition}")].reason'
    assert by_name["AGE"]["type"] == "date"


def test_cel_rules_cover_every_cluster_free_rule():
    rules = _all_rules(crd.build_crd())
    text = " ".join(rule for _, rule, _ in rules)
    assert "self.coresPerReplica % self.processesPerReplica == 0" in text
    assert "!has(self.nodeName)" in text and "!has(self.schedulerName)" in text
    assert "aws.amazon.com/neuron" in text
    assert "NEURON_RT_VISIBLE_CORES" in text
    for path, rule, message in rules:
        assert len(message) > 20, f"rule at {path} needs a message a user understands: {rule}"


def test_schema_is_structural():
    """Every node says its type (or is int-or-string / preserves unknown fields); lists have items."""

    def walk(node, path):
        if node.get("x-kubernetes-int-or-string"):
            return
        assert "type" in node, f"{path} has no type"
        if node["type"] == "array":
            assert "items" in node, f"{path} is an array without items"
            walk(node["items"], path + "[]")
        for key, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{key}")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], path + "{}")

    walk(_version()["schema"]["openAPIV3Schema"], "")


def test_cel_lists_and_maps_are_bounded():
    """The API server estimates CEL cost from maxItems/maxProperties; unbounded ones get a CRD refused."""
    containers = _spec()["properties"]["template"]["properties"]["spec"]["properties"]["containers"]
    assert containers["maxItems"] and containers["items"]["properties"]["env"]["maxItems"]
    assert containers["items"]["properties"]["resources"]["properties"]["limits"]["maxProperties"]


def test_binding_mode_is_optional_and_its_effective_value_is_a_wide_column():
    binding = _spec()["properties"]["placement"]["properties"]["binding"]
    assert binding["enum"] == ["Scheduler", "Direct"]
    assert "default" not in binding, "absent means the operator's setting decides"
    column = next(c for c in _version()["additionalPrinterColumns"] if c["name"] == "Binding")
    assert column["jsonPath"] == ".status.binding" and column["priority"] == 1
    assert "binding" in _version()["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
