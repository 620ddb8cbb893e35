"""Packaging contracts: import names, the stdlib `operator` left alone, extras kept apart."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A meta-path finder that makes `import <name>` fail, as on a machine without that package.
BLOCK_IMPORT = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == {name!r} or name.startswith({name!r} + "."):
            raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, _Block())
"""


def run_python(code: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_stdlib_operator_is_not_shadowed_from_the_repository_root():
    result = run_python("import operator; print(operator.__file__, operator.add(2, 3))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "5"
    assert "site-packages" not in result.stdout.split()[0] and str(ROOT / "operator") not in result.stdout


def test_operator_package_imports_without_torch():
    result = run_python(
        BLOCK_IMPORT.format(name="torch") + "import neuronplace.operator, neuronplace.runtime.coreset\nprint('ok')"
    )
    assert result.returncode == 0, result.stderr
    assert (
        "torch"
        not in run_python(
            "import sys, neuronplace.operator; print(' '.join(m for m in sys.modules if m.split('.')[0] == 'torch'))"
        ).stdout
    )


def test_runtime_package_imports_without_kopf():
    result = run_python(
        BLOCK_IMPORT.format(name="kopf") + "import neuronplace.runtime\nneuronplace.runtime.DataParallel\nprint('ok')"
    )
    assert result.returncode == 0, result.stderr


def test_operator_extra_never_pulls_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    operator_requirements = project["optional-dependencies"]["operator"] + project["dependencies"]
    assert operator_requirements, "the operator extra lists its dependencies"
    assert not [r for r in operator_requirements if r.lower().startswith("torch")]
    assert any(r.startswith("torch") for r in project["optional-dependencies"]["runtime"])


def test_console_script_lists_every_subcommand():
    result = subprocess.run(
        [sys.executable, "-m", "neuronplace.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for command in ("local", "run", "demo", "plan", "cores"):
        assert command in result.stdout
