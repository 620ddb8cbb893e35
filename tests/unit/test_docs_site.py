"""The documentation site says what the code does: the API reference is generated from the CRD, and
the RBAC table and the metric list are kept equal to the chart's rules and the operator's registry.

The site itself (links and anchors) is checked by `mkdocs build --strict` in `make lint`.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from neuronplace.local import api_reference
from neuronplace.operator.metrics import LedgerSnapshot, OperatorMetrics
from neuronplace.placement import crd

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
API_PAGE = DOCS / "reference" / "neuroninference.md"
TEMPLATES = ROOT / "charts" / "neuronplace" / "templates"


def test_api_reference_is_the_generated_one():
    assert API_PAGE.read_text() == api_reference.render(), f"{API_PAGE} is stale: run `{api_reference.COMMAND}`"


def test_module_writes_the_api_reference():
    result = subprocess.run(
        [sys.executable, "-m", "neuronplace.local.api_reference"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == API_PAGE.read_text()


def test_a_changed_schema_makes_the_committed_reference_stale(monkeypatch):
    """The drift check can fail: a field's description edited in crd.py shows on the page."""
    original = crd.spec_schema

    def edited() -> dict:
        schema = original()
        schema["properties"]["replicas"]["description"] = "How many copies to run (edited)."
        return schema

    monkeypatch.setattr(crd, "spec_schema", edited)
    rendered = api_reference.render()
    assert rendered != API_PAGE.read_text()
    assert "| `spec.replicas` | integer | `1` | ≥ 0; ≤ 1000 | How many copies to run (edited). |" in rendered


def test_every_cel_rule_is_on_the_page():
    rules = []

    def collect(node):
        if isinstance(node, dict):
            rules.extend(rule["message"] for rule in node.get("x-kubernetes-validations", []))
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(crd.build_crd())
    page = API_PAGE.read_text()
    assert rules and all(" ".join(message.split()) in page for message in rules)


# ---- RBAC: docs/operations/rbac.md's table is the chart's operator rules --------------------------


def _chart_rules() -> set[tuple[str, frozenset[str]]]:
    """(resource, verbs) of every rule of the operator's roles (rbac.yaml and the namespaced rules)."""
    text = (TEMPLATES / "rbac.yaml").read_text() + (TEMPLATES / "_helpers.tpl").read_text()
    found = re.findall(r"resources:\s*(\[[^\]]*\])\s*\n\s*verbs:\s*(\[[^\]]*\])", text)
    return {
        (resource, frozenset(json.loads(verbs))) for resources, verbs in found for resource in json.loads(resources)
    }


def _documented_rules() -> set[tuple[str, frozenset[str]]]:
    text = (DOCS / "operations" / "rbac.md").read_text()
    table = text.split("<!-- rbac-table")[1].split("<!-- /rbac-table -->")[0]
    rules = set()
    for row in table.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        resource = cells[0].split("`")[1].split(".")[0]
        rules.add((resource, frozenset(verb.strip() for verb in cells[1].split(","))))
    return rules


def test_the_rbac_table_is_the_charts_rules():
    chart, documented = _chart_rules(), _documented_rules()
    assert len(chart) >= 10
    assert documented == chart, (
        f"docs/operations/rbac.md's table differs from the chart: only in the chart {sorted(chart - documented)}, "
        f"only in the docs {sorted(documented - chart)}"
    )


# ---- metrics: every neuronplace_* name in the docs is exposed, and every exposed one documented -----

_SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def _exposed() -> set[str]:
    metrics = OperatorMetrics()
    metrics.watch_ledger(lambda: LedgerSnapshot({"node-a": 4}, 1, 1, {("node-a", "Overlap"): 1}))
    names = set()
    for family in metrics.registry.collect():
        if family.name.startswith("neuronplace_"):
            names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def _documented_metrics() -> set[str]:
    names = set()
    for page in DOCS.rglob("*.md"):
        for sample in re.findall(r"\bneuronplace_[a-z_]+[a-z]", page.read_text()):
            # A histogram's samples (_bucket, _sum, _count) and counters' _created name their family.
            names.add(next((sample.removesuffix(s) for s in _SUFFIXES if sample.endswith(s)), sample))
    return names


def test_the_documented_metrics_are_the_exposed_ones():
    exposed, documented = _exposed(), _documented_metrics()
    assert "neuronplace_node_free_cores" in exposed and "neuronplace_placements_total" in exposed
    assert documented == exposed, (
        f"only exposed (document them in docs/): {sorted(exposed - documented)}; "
        f"only in docs/ (no such metric): {sorted(documented - exposed)}"
    )


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_pages_name_the_two_commands(page):
    text = (ROOT / page).read_text()
    if page == "README.md":
        assert "make demo" in text and "make test" in text
    assert "real Neuron hardware" in text or "not on real Neuron hardware" in text


def test_generator_module_imports_nothing_outside_placement():
    """The generator is pure: it reads the CRD model, never the cluster or the operator."""
    tree = ast.parse(Path(api_reference.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module} | {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    assert imported <= {"__future__", "sys", "neuronplace.placement.crd"}, imported


# A repository path in the text (not a link, so mkdocs does not check it): `tests/unit/test_crd.py`.
_REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:tests|benchmarks|examples|charts|operator|placement|local|cli|runtime|controlplane|crds"
    r"|\.github|docs)/[\w./-]*\.(?:py|yaml|yml|tpl|json|md|txt|gotmpl))"
)


def test_every_file_the_pages_name_exists():
    pages = [*DOCS.rglob("*.md"), ROOT / "README.md", ROOT / "CHANGELOG.md"]
    missing = sorted(
        (page.name, path)
        for page in pages
        for path in _REPO_PATH.findall(page.read_text())
        if not (ROOT / path).exists()
    )
    assert not missing, missing


def test_every_operator_setting_is_documented():
    """Each setting's NEURONPLACE_* variable is named in docs/ (the settings page, or the page of the
    feature that added it)."""
    from dataclasses import fields

    from neuronplace.operator.settings import OperatorSettings, env_name

    text = "".join(page.read_text() for page in DOCS.rglob("*.md"))
    missing = [env_name(f.name) for f in fields(OperatorSettings) if env_name(f.name) not in text]
    assert not missing, f"document these settings in docs/reference/settings.md: {missing}"
