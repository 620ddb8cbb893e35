"""The layering: import-linter's contracts (pyproject.toml) break on a deliberate violation of each,
and the layering holds at run time, not only in import-linter's static view: the placement core and
the dry run work on a machine where kopf, the kubernetes client and prometheus_client are missing."""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cli", "local", "operator", "placement", "runtime")
CONTRACTS = {
    contract["id"]: contract["name"]
    for contract in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
}

# Makes every import of the named top-level packages fail, as on a machine without them.
BLOCK = """
import sys
BLOCKED = {blocked!r}
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, _Block())
"""
OPERATOR_SIDE = ("kopf", "kubernetes", "prometheus_client")


def run_python(code: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def placement_modules() -> list[str]:
    return sorted(f"neuronplace.placement.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "placement")]))


def lint_imports(tmp_path: Path, appended: dict[str, str]) -> tuple[set[str], str]:
    """The ids of the contracts lint-imports finds broken in a copy of the packages with ``appended``
    (path under neuronplace/ → source added to the end of that module, made if new), and its output."""
    tree = tmp_path / "neuronplace"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    for path, source in appended.items():
        with open(tree / path, "a") as module:
            module.write("\n" + source)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    result = subprocess.run(
        [Path(sys.executable).with_name("lint-imports"), "--no-cache", "--config", "pyproject.toml"],
        cwd=tmp_path,
        # COLUMNS: one line per contract, however long its name.
        env={**os.environ, "PYTHONPATH": str(tmp_path), "COLUMNS": "500"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    broken = {id_ for id_, name in CONTRACTS.items() if f"{name} BROKEN" in result.stdout}
    kept = {id_ for id_, name in CONTRACTS.items() if f"{name} KEPT" in result.stdout}
    assert broken | kept == set(CONTRACTS), result.stdout + result.stderr
    assert (result.returncode != 0) == bool(broken)
    return broken, result.stdout


def test_the_contracts_hold_on_an_unchanged_copy(tmp_path):
    # So what breaks below is the violation added, not the copy.
    broken, output = lint_imports(tmp_path, {})
    assert broken == set(), output


@pytest.mark.parametrize(
    ("appended", "contract", "chain"),
    [
        # local sits below cli and above the operator.
        (
            {"local/fleet.py": "import neuronplace.cli.main"},
            "layers",
            "neuronplace.local.fleet -> neuronplace.cli.main",
        ),
        (
            {"operator/cache.py": "import neuronplace.local.fleet"},
            "layers",
            "neuronplace.operator.cache -> neuronplace.local.fleet",
        ),
        (
            {"placement/coremap.py": "import matplotlib.pyplot"},
            "placement-pure",
            "neuronplace.placement.coremap -> matplotlib",
        ),
        # A runtime module nobody has listed yet is forbidden to placement and to the operator...
        (
            {"runtime/later.py": "", "placement/names.py": "import neuronplace.runtime.later"},
            "runtime-grammar-only",
            "neuronplace.placement.names -> neuronplace.runtime.later",
        ),
        (
            {"runtime/later.py": "", "operator/cache.py": "import neuronplace.runtime.later"},
            "runtime-grammar-only",
            "neuronplace.operator.cache -> neuronplace.runtime.later",
        ),
        # ... and to the grammar, through which both may import it.
        (
            {"runtime/later.py": "", "runtime/coreset.py": "import neuronplace.runtime.later"},
            "grammar-alone",
            "neuronplace.runtime.coreset -> neuronplace.runtime.later",
        ),
    ],
)
def test_a_violation_breaks_its_contract_and_no_other(tmp_path, appended, contract, chain):
    broken, output = lint_imports(tmp_path, appended)
    assert broken == {contract}, output
    assert chain in output


def test_the_block_really_blocks():
    # Without this the tests below would pass on a machine where the block silently did nothing.
    result = run_python(BLOCK.format(blocked=OPERATOR_SIDE) + "import kopf")
    assert result.returncode != 0 and "blocked for this test: kopf" in result.stderr


def test_every_placement_module_imports_without_kopf_kubernetes_prometheus_or_torch():
    modules = placement_modules()
    assert "neuronplace.placement.search" in modules and "neuronplace.placement.names" in modules
    code = (
        BLOCK.format(blocked=(*OPERATOR_SIDE, "torch"))
        + "".join(f"import {m}\n" for m in modules)
        + (
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'kopf', 'kubernetes', 'prometheus_client', 'torch'}))"
        )
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_plan_runs_with_the_operator_side_blocked():
    examples = sorted(str(p) for p in (ROOT / "examples").glob("*.yaml"))
    assert examples, "the repository ships example NeuronInferences"
    code = BLOCK.format(blocked=OPERATOR_SIDE) + (
        "from neuronplace.cli.main import main\n"
        f"code = main(['plan', '--fleet', 'inf2.48xlarge=2', *{examples!r}])\n"
        "assert not {'kopf', 'kubernetes', 'prometheus_client'} & {m.split('.')[0] for m in sys.modules}\n"
        "raise SystemExit(code)\n"
    )
    result = run_python(code)
    # 0: everything placed; 1: something cannot be placed on two inf2.48xlarge (the trn1 example
    # cannot). Either way the plan was made and printed; 2 (unusable input) or a traceback is a failure.
    assert result.returncode in (0, 1), result.stderr
    assert "NEURON_RT_VISIBLE_CORES" in result.stdout and "inf2" in result.stdout
    assert "Traceback" not in result.stderr


def test_a_fresh_import_of_the_stdlib_operator_module_from_the_repository_root_gets_the_stdlib():
    # torch.export re-imports `operator` afresh; with the repository root on sys.path the folder
    # operator/ (the package neuronplace.operator) used to be found first and loaded kopf.
    code = (
        "import importlib, sys\n"
        "sys.path.insert(0, '')\n"
        "del sys.modules['operator']\n"
        "fresh = importlib.import_module('operator')\n"
        "print(fresh.__file__, fresh.itemgetter(1)([0, 7]), 'kopf' in sys.modules)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    path, value, kopf_loaded = result.stdout.split()
    assert Path(path).parent != ROOT / "operator" and value == "7" and kopf_loaded == "False"


def test_an_interpreter_starting_in_the_repository_root_gets_the_stdlib_operator():
    # Without site (as in a fresh virtualenv, where nothing imports `operator` early) the first
    # import of `operator` comes from `collections` during start-up, with the root on sys.path.
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import collections, operator; print(operator.or_(1, 2), operator.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    value, path = result.stdout.split()
    assert value == "3" and Path(path).parent != ROOT / "operator"
