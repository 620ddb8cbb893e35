"""A wheel installed outside the checkout finds its examples: ``neuronplace demo``'s example discovery
and ``neuronplace plan`` on the files it finds, run from the wheel in a fresh virtualenv.

The wheel is built from a copy of the working tree (tracked and not-ignored files), so that the
build neither writes into the checkout nor picks up a stale ``build/`` folder there.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

DISCOVER = """
import json, neuronplace
from neuronplace.cli import demo
files = demo.example_files()
print(json.dumps({"package": list(neuronplace.__path__), "demo": demo.__file__, "files": [str(f) for f in files]}))
"""


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def copy_working_tree(destination: Path) -> None:
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def setuptools_meets_build_requirement() -> bool:
    if importlib.util.find_spec("setuptools") is None:
        return False
    (requirement,) = [
        r
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
        if r.startswith("setuptools")
    ]
    minimum = int(requirement.partition(">=")[2].split(".")[0] or 0)
    return int(importlib.metadata.version("setuptools").split(".")[0]) >= minimum


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtualenv (outside the checkout) with the wheel of neuronplace installed. Its
    dependencies (PyYAML) come from this interpreter's site-packages, added as a plain path: the
    ``.pth`` files there (this checkout's editable install among them) are not run, so the only
    neuronplace the venv can import is the wheel's."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to copy the working tree from")
    base = tmp_path_factory.mktemp("wheel")
    source, dist, venv = base / "src", base / "dist", base / "venv"
    copy_working_tree(source)
    # With a setuptools here that meets pyproject.toml's build requirement, build with it (no
    # download); otherwise pip fetches the build backend (a fresh virtualenv's setuptools is older).
    isolation = ["--no-build-isolation"] if setuptools_meets_build_requirement() else []
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(dist), str(source)], cwd=base)
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = list(dist.glob("neuronplace-*.whl"))
    assert len(wheels) == 1, wheels
    created = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base)
    assert created.returncode == 0, created.stderr
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site_packages = Path(run([str(venv / "bin" / "python"), "-c", purelib], cwd=base).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site_packages / "_test_dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    installed = run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            str(wheels[0]),
        ],
        cwd=base,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def test_the_wheel_finds_its_examples_and_plans_them(venv, tmp_path):
    site = venv.resolve()
    discovered = run([str(venv / "bin" / "python"), "-c", DISCOVER], cwd=tmp_path, env=clean_env())
    assert discovered.returncode == 0, discovered.stderr
    found = json.loads(discovered.stdout.strip().splitlines()[-1])
    # The wheel's copy, not the checkout's: neuronplace, the demo and every example live in the venv.
    assert all(Path(p).resolve().is_relative_to(site) for p in found["package"]), found["package"]
    assert Path(found["demo"]).resolve().is_relative_to(site), found["demo"]
    files = [Path(f) for f in found["files"]]
    assert sorted(f.name for f in files) == sorted(p.name for p in (ROOT / "examples").glob("*.yaml"))
    assert all(f.resolve().is_relative_to(site) and f.is_file() for f in files), files

    planned = run(
        [str(venv / "bin" / "neuronplace"), "plan", "--fleet", "inf2.48xlarge=2", *map(str, files)],
        cwd=tmp_path,
        env=clean_env(),
    )
    # Exit 1: the inf1, trn1 and trn2 examples have no node in an inf2-only fleet; 2 would be unusable input.
    assert planned.returncode == 1, planned.stdout + planned.stderr
    assert "default/qwen-inf2" in planned.stdout and "placed" in planned.stdout
    assert "cannot be placed" in planned.stdout
