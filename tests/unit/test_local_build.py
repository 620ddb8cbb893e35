"""The control-plane pins and build recipe (pure parts of neuronplace.local.build)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from neuronplace.local import build

CONTROLPLANE = Path(build.CONTROLPLANE_DIR)


def test_pins_are_read_from_the_committed_go_modules():
    assert build.pins() == {
        "go.etcd.io/etcd/server/v3": "v3.6.14",
        "k8s.io/kubernetes": "v1.36.3",
        "sigs.k8s.io/kwok": "v0.8.0",
        "helm.sh/helm/v3": "v3.21.4",
    }


def test_every_module_has_a_checksum_file():
    for module in {c.module for c in build.COMPONENTS}:
        assert (CONTROLPLANE / module / "go.sum").stat().st_size > 0, module


def test_kubernetes_staging_modules_are_replaced_with_the_published_release():
    gomod = (CONTROLPLANE / "kubernetes" / "go.mod").read_text()
    replaced = re.findall(r"^\s*(k8s\.io/[\w-]+) => (k8s\.io/[\w-]+) (v\S+)$", gomod, re.MULTILINE)
    assert len(replaced) == 33
    assert all(old == new and version == "v0.36.3" for old, new, version in replaced)
    # Their real pseudo-versions must stay: k8s.io/utils v0.36.3 does not exist.
    assert not any(old in ("k8s.io/utils", "k8s.io/kube-openapi") for old, _, _ in replaced)


def test_cache_key_names_the_versions_and_changes_with_the_recipe(monkeypatch):
    key = build.pins_key()
    assert key.startswith("k8s1.36.3-etcd3.6.14-kwok0.8.0-helm3.21.4-")
    assert build.pins_key() == key
    changed = (*build.COMPONENTS[:-1], build.Component("helm", "helm", "helm.sh/helm/v3/cmd/helm", "helm.sh/helm/v3"))
    monkeypatch.setattr(build, "COMPONENTS", changed)
    assert build.pins_key() != key


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    assert build.bin_dir().parent.parent == tmp_path
    assert build.missing_binaries(tmp_path) == [c.binary for c in build.COMPONENTS]


@pytest.mark.parametrize("binary", ["kube-apiserver", "kubectl"])
def test_kubernetes_binaries_are_version_stamped_and_static(binary):
    component = next(c for c in build.COMPONENTS if c.binary == binary)
    values = {
        "version": "v1.36.3",
        "bare": "1.36.3",
        "major": "1",
        "minor": "36",
        "kube_bare": "1.36.3",
        "date": "2026-07-22T18:07:38Z",
    }
    command = build.build_command(component, Path("/out/x"), values)
    ldflags = command[command.index("-ldflags") + 1]
    assert "-X k8s.io/component-base/version.gitVersion=v1.36.3" in ldflags
    assert "-X k8s.io/client-go/pkg/version.gitVersion=v1.36.3" in ldflags
    assert "-X k8s.io/component-base/version.gitMinor=36" in ldflags
    assert "-trimpath" in command and command[-1] == f"k8s.io/kubernetes/cmd/{binary}"
    assert command[command.index("-tags") + 1] == "selinux,notest,grpcnotrace"


def test_helm_is_version_stamped():
    helm = next(c for c in build.COMPONENTS if c.binary == "helm")
    command = build.build_command(
        helm, Path("/out/helm"), {"version": "v3.21.4", "client_go_major": "1", "client_go_minor": "36"}
    )
    assert "-X helm.sh/helm/v3/internal/version.version=v3.21.4" in command[command.index("-ldflags") + 1]


def test_helm_assumes_the_kubernetes_of_its_client_go_offline():
    helm = next(c for c in build.COMPONENTS if c.binary == "helm")
    values = build._stamp_values(helm, build.pins())
    assert (values["client_go_major"], values["client_go_minor"]) == (
        "1",
        build._module_info("helm", "k8s.io/client-go")["Version"].split(".")[1],
    )
    ldflags = build.build_command(helm, Path("/out/helm"), values)
    ldflags = ldflags[ldflags.index("-ldflags") + 1]
    for package in ("chartutil", "lint/rules"):
        assert f"-X helm.sh/helm/v3/pkg/{package}.k8sVersionMajor=1" in ldflags
        assert f"-X helm.sh/helm/v3/pkg/{package}.k8sVersionMinor={values['client_go_minor']}" in ldflags
    assert int(values["client_go_minor"]) >= 30, "the chart's kubeVersion (>=1.30) must render offline"


@pytest.mark.parametrize("module", ["kubernetes", "karpenter"])
def test_builds_never_rewrite_the_pins(module):
    assert "-mod=readonly" in build.go_env(module)["GOFLAGS"].split()
    assert build.go_env(module)["CGO_ENABLED"] == "0"
