"""What the release workflow builds, built here: the chart as `helm package` makes it (the workflow
then pushes that file), and the image reference the packaged chart deploys, by tag or by digest.
The image itself is built by tests/cluster/test_image.py with `neuronplace local image`."""

from __future__ import annotations

import tarfile

import pytest
import yaml

from support.chart import CHART, RELEASE, server_version

pytestmark = pytest.mark.cluster

DIGEST = "sha256:" + "0123456789abcdef" * 4


def _deployment_image(local_cluster, chart: str, *values: str) -> str:
    rendered = local_cluster.helm(
        "template", RELEASE, chart, "--kube-version", server_version(local_cluster), *values
    ).stdout
    (deployment,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]["containers"][0]["image"]


def test_helm_package_builds_the_chart_the_workflow_pushes(local_cluster, tmp_path):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    local_cluster.helm("package", str(CHART), "--destination", str(tmp_path))
    package = tmp_path / f"neuronplace-{chart['version']}.tgz"
    assert package.is_file(), sorted(p.name for p in tmp_path.iterdir())
    with tarfile.open(package) as archive:
        names = set(archive.getnames())
    assert {"neuronplace/Chart.yaml", "neuronplace/values.yaml", "neuronplace/values.schema.json"} <= names
    assert "neuronplace/README.md" in names and "neuronplace/README.md.gotmpl" not in names
    assert "neuronplace/files/neuronplace.io_neuroninferences.yaml" in names

    # The packaged chart deploys the released image: <repository>:<appVersion>, or pinned by digest.
    repository = values["image"]["repository"]
    assert _deployment_image(local_cluster, str(package)) == f"{repository}:{chart['appVersion']}"
    pinned = _deployment_image(local_cluster, str(package), "--set", f"image.digest={DIGEST}", "--set", "image.tag=x")
    assert pinned == f"{repository}@{DIGEST}"


def test_a_malformed_digest_is_refused(local_cluster):
    result = local_cluster.helm(
        "template",
        RELEASE,
        str(CHART),
        "--kube-version",
        server_version(local_cluster),
        "--set",
        "image.digest=latest",
        check=False,
    )
    assert result.returncode != 0 and "/image/digest" in result.stderr, result.stderr
