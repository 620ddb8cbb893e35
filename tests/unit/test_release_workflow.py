"""The release workflow (.github/workflows/release.yml) cannot run here: it is linted with actionlint
(built from the pinned Go module in controlplane/actionlint, like the control plane) and held to the
names the chart and the image build use. What it builds is built by tests/cluster/test_release_package.py
(the chart) and tests/cluster/test_image.py (the image, with `neuronplace local image`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from neuronplace.local import build, image

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
RELEASE = WORKFLOWS / "release.yml"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def actionlint() -> Path:
    """The pinned actionlint, built into the cache if missing (about 15 s once; `neuronplace local
    build` builds it too). Without Go it is skipped, except in CI."""
    if build.missing_binaries(components=build.LINTERS) and shutil.which("go") is None:
        if _in_ci():
            pytest.fail("CI=true and no Go toolchain to build actionlint")
        pytest.skip("actionlint is not built and there is no Go toolchain to build it")
    return build.ensure_binaries(components=build.LINTERS).bin_dir / "actionlint"


def _lint(actionlint: Path, *files: Path) -> subprocess.CompletedProcess:
    # -shellcheck= / -pyflakes=: the checks of run: scripts need tools the project does not pin.
    return subprocess.run(
        [str(actionlint), "-no-color", "-shellcheck=", "-pyflakes=", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_the_pinned_actionlint_reports_its_pin(actionlint):
    assert build.binary_version(build.ACTIONLINT, actionlint.parent).startswith("v1.7.12")


def test_every_workflow_passes_actionlint(actionlint):
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert RELEASE in files
    result = _lint(actionlint, *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_refuses_a_broken_workflow(actionlint, tmp_path):
    """The lint can fail: an unknown job in `needs` and a misspelt context are reported."""
    workflow = yaml.safe_load(RELEASE.read_text())
    workflow["jobs"]["chart"]["needs"] = ["versions", "imagee"]
    workflow["jobs"]["image"]["steps"][-1]["env"]["DIGEST"] = "${{ steps.biuld.outputs.digest }}"
    broken = tmp_path / ".github" / "workflows" / "release.yml"
    broken.parent.mkdir(parents=True)
    # PyYAML reads the key `on` as True and writes it back as `true`.
    broken.write_text(yaml.safe_dump(workflow, sort_keys=False).replace("\ntrue:", "\non:"))
    result = _lint(actionlint, broken)
    assert result.returncode != 0
    assert "imagee" in result.stdout and "biuld" in result.stdout, result.stdout


def test_the_workflow_pushes_where_the_chart_pulls_from():
    workflow = yaml.safe_load(RELEASE.read_text())
    values = yaml.safe_load((ROOT / "charts" / "neuronplace" / "values.yaml").read_text())
    assert workflow["env"]["IMAGE"] == values["image"]["repository"] == image.IMAGE_NAME
    assert workflow["env"]["CHART_REPOSITORY"].startswith("oci://")
    assert workflow["env"]["HELM_VERSION"] == build.pins()["helm.sh/helm/v3"]  # the helm the tests use


def test_the_workflow_builds_both_architectures_from_the_dockerfile_on_a_version_tag():
    workflow = yaml.safe_load(RELEASE.read_text())
    triggers = workflow[True]  # PyYAML reads the key `on` as True
    assert triggers == {"push": {"tags": ["v*"]}}
    (build_step,) = [s for s in workflow["jobs"]["image"]["steps"] if s.get("uses", "").startswith("docker/build-push")]
    assert build_step["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert build_step["with"]["file"] == "Dockerfile" and build_step["with"]["push"] is True
    chart_run = workflow["jobs"]["chart"]["steps"][-1]["run"]
    assert "helm package charts/neuronplace" in chart_run and "helm push" in chart_run


@pytest.mark.parametrize("tag_matches", [True, False])
def test_the_version_check_runs_here(tmp_path, tag_matches):
    """The workflow's first job, run as the runner runs it (bash, the checkout as working directory)."""
    workflow = yaml.safe_load(RELEASE.read_text())
    (step,) = [s for s in workflow["jobs"]["versions"]["steps"] if s.get("id") == "versions"]
    version = yaml.safe_load((ROOT / "charts" / "neuronplace" / "Chart.yaml").read_text())["appVersion"]
    output = tmp_path / "github_output"
    env = {
        **os.environ,
        "TAG": f"v{version}" if tag_matches else "v999.0.0",
        "GITHUB_OUTPUT": str(output),
    }
    result = subprocess.run(
        ["bash", "-e", "-c", step["run"]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    if tag_matches:
        assert result.returncode == 0, result.stdout + result.stderr
        assert output.read_text() == f"version={version}\n"
    else:
        assert result.returncode == 1 and "must agree" in result.stdout, result.stdout + result.stderr
