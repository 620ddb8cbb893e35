"""``neuronplace local image`` without building: the command lines it runs, the engine it picks,
the base it falls back to, and how it fails when no engine is installed.

The build itself, on this machine's podman, is tests/cluster/test_image.py.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from neuronplace.local import image
from neuronplace.local.image import Engine, ImageError

ROOT = Path(__file__).resolve().parents[2]
PODMAN = Engine("podman", ("/usr/bin/podman", "--runtime", "runc"))
DOCKER = Engine("docker", ("/usr/bin/docker",))


def test_the_default_base_is_the_dockerfiles_default_fully_qualified():
    declared = next(
        line.split("=", 1)[1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("ARG BASE_IMAGE=")
    )
    assert image.DEFAULT_BASE == f"docker.io/library/{declared}"


def test_the_default_tag_is_what_the_chart_deploys_by_default():
    chart = yaml.safe_load((ROOT / "charts" / "neuronplace" / "Chart.yaml").read_text())
    values = yaml.safe_load((ROOT / "charts" / "neuronplace" / "values.yaml").read_text())
    assert values["image"]["tag"] == ""  # empty: the chart's appVersion
    assert image.default_tag() == f"{values['image']['repository']}:{chart['appVersion']}"


def test_podman_qualifies_bare_names_and_keeps_registry_names():
    assert PODMAN.reference("neuronplace:0.1.0") == "localhost/neuronplace:0.1.0"
    assert PODMAN.reference("ghcr.io/acme/neuronplace:1") == "ghcr.io/acme/neuronplace:1"
    assert PODMAN.reference("registry.local:5000/neuronplace:1") == "registry.local:5000/neuronplace:1"
    assert DOCKER.reference("neuronplace:0.1.0") == "neuronplace:0.1.0"


def test_podman_build_uses_runc_the_base_argument_and_the_ca_secret(tmp_path):
    ca = tmp_path / "ca.pem"
    command = image.build_command(
        PODMAN, "localhost/neuronplace-base:bookworm-x", "localhost/neuronplace:1", ca, context=ROOT
    )
    assert command[:4] == ["/usr/bin/podman", "--runtime", "runc", "build"]
    assert "--build-arg" in command and "BASE_IMAGE=localhost/neuronplace-base:bookworm-x" in command
    assert f"id=pip-ca,src={ca}" in command
    assert "--pull=never" in command  # an imported base exists only here
    assert command[-1] == str(ROOT) and command[command.index("--file") + 1] == str(ROOT / "Dockerfile")
    pulled = image.build_command(PODMAN, image.DEFAULT_BASE, "localhost/neuronplace:1", None, context=ROOT)
    assert "--pull=missing" in pulled and not any(arg.startswith("id=pip-ca") for arg in pulled)


def test_docker_build_asks_for_buildkit_and_gets_no_podman_flags():
    command = image.build_command(DOCKER, image.DEFAULT_BASE, "neuronplace:1", None, context=ROOT)
    assert command[:2] == ["/usr/bin/docker", "build"]
    assert not [arg for arg in command if arg.startswith("--pull") or arg == "--runtime"]
    assert DOCKER.env()["DOCKER_BUILDKIT"] == "1"
    assert DOCKER.run_flags == ("--network", "host")
    assert "nofile=1024:1024" in PODMAN.run_flags and PODMAN.run_flags[:2] == ("--network", "host")


def test_the_ca_bundle_is_the_one_pip_trusts_here(tmp_path):
    bundle = tmp_path / "proxy-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert image.ca_bundle({"PIP_CERT": str(bundle)}) == bundle
    # A variable naming a missing file is skipped, not passed on to the build.
    assert image.ca_bundle({"PIP_CERT": str(tmp_path / "gone.pem"), "SSL_CERT_FILE": str(bundle)}) == bundle
    fallback = image.ca_bundle({})
    assert fallback == (image.SYSTEM_CA_BUNDLE if image.SYSTEM_CA_BUNDLE.is_file() else None)


def test_the_debian_base_recipe_and_its_cache_names():
    command = image.mmdebstrap_command(Path("/x/base.tar"))
    assert command[0] == "mmdebstrap" and command[-2:] == ["bookworm", "/x/base.tar"]
    included = next(arg for arg in command if arg.startswith("--include="))
    assert {"python3", "python3-venv"} <= set(included.removeprefix("--include=").split(","))
    assert "--variant=minbase" in command
    key = image.base_recipe_key()
    assert image.debian_base_reference() == f"localhost/neuronplace-base:bookworm-{key}"
    assert image.debian_base_tarball().parent == image.images_cache_dir()
    assert key in image.debian_base_tarball().name


def _executable(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_engine_choice_podman_first_then_an_answering_docker(tmp_path):
    # Stand-in executables: the choice depends only on which programs exist and whether docker's
    # daemon answers `docker info`, and a docker daemon is not available on these machines.
    both, docker_up, docker_down, none = (tmp_path / name for name in ("both", "up", "down", "none"))
    for directory in (both, docker_up, docker_down, none):
        directory.mkdir()
    _executable(both, "podman", "exit 0")
    _executable(both, "docker", "exit 0")
    _executable(docker_up, "docker", "echo 28.2.2; exit 0")
    _executable(docker_down, "docker", 'echo "Cannot connect to the Docker daemon" >&2; exit 1')

    chosen = image.find_engine(path=str(both))
    assert chosen.name == "podman" and chosen.argv == (str(both / "podman"), "--runtime", "runc")
    assert image.find_engine(path=str(docker_up)) == Engine("docker", (str(docker_up / "docker"),))
    with pytest.raises(ImageError, match=r"daemon does not answer.*Cannot connect"):
        image.find_engine(path=str(docker_down))
    with pytest.raises(ImageError, match="no container engine: install podman"):
        image.find_engine(path=str(none))


def test_the_cli_without_any_engine_fails_and_says_what_to_install(tmp_path):
    # PATH holds only this interpreter's folder: no podman, no docker.
    env = {**os.environ, "PATH": str(Path(sys.executable).parent), "NEURONPLACE_CACHE": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "neuronplace.cli", "local", "image"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no container engine" in result.stderr and "apt-get install podman" in result.stderr
    assert result.stdout == ""  # nothing that a script could take for an image reference


def test_the_cli_documents_the_image_action():
    result = subprocess.run(
        [sys.executable, "-m", "neuronplace.cli", "local", "image", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--tag", "--base", "--refresh-base"):
        assert flag in result.stdout
