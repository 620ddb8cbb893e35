"""Build the local control plane's binaries from the pinned Go modules in ``controlplane/``.

Each folder under ``controlplane/`` is one Go module whose ``go.mod`` + ``go.sum`` pin one upstream
(kubernetes, etcd, kwok, helm); ``go build`` runs inside it with ``-mod=readonly``, so every
download is checked against the committed ``go.sum`` and nothing is resolved afresh. The versions
shown and stamped into the binaries are read from those ``go.mod`` files, so they are the single
source of truth.

Binaries land in ``<cache root>/<pins>/bin`` (default root ``~/.cache/neuronplace``, override with
``NEURONPLACE_CACHE``); the folder name carries the versions and a hash of the module files and
build recipe, so changing a pin builds into a new folder and an unchanged one is reused. The
autoscaler (Karpenter with its kwok cloud provider, :data:`AUTOSCALER`) and the workflow linter
(actionlint, :data:`LINTERS`) are separate sets, each with a folder of its own keyed by its own pin: adding or bumping it never rebuilds the control plane, which
takes minutes cold. A module whose ``go.mod`` names a ``toolchain`` newer than the machine's Go is
built with that toolchain (``GOTOOLCHAIN``; the go command fetches it from the module proxy). Each
binary is written under a temporary name and renamed into place, so an interrupted build never
leaves a half-written binary that a later run would trust. A file lock serialises concurrent builds
of the same pins (two test sessions, ``.ci/run`` and ``neuronplace local up``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTROLPLANE_DIR = REPO_ROOT / "controlplane"
CACHE_ENV = "NEURONPLACE_CACHE"

# The build flags Kubernetes' own release uses for these binaries (hack/lib/golang.sh): static,
# no test-only code, no gRPC tracing; -s -w drops debug info (about a third of the size).
_KUBE_TAGS = ("selinux", "notest", "grpcnotrace")


@dataclass(frozen=True)
class Component:
    """One binary: which pinned module builds it and how it is stamped with its version."""

    binary: str
    module: str  # folder under controlplane/
    package: str  # Go import path of the main package
    upstream: str  # module path whose pinned version this binary reports
    tags: tuple[str, ...] = ()
    # ldflags -X assignments as (symbol, template); ``{version}``, ``{major}``, ``{minor}``,
    # ``{bare}`` (version without the leading v) and ``{date}`` (the module's release time) expand.
    stamps: tuple[tuple[str, str], ...] = ()
    # How to ask the built binary its version, and what its answer must contain (templated too).
    version_args: tuple[str, ...] = ("--version",)
    version_expect: str = "{bare}"


# Short names of the upstreams in cache folder names, in the order they appear there.
_CACHE_LABELS = {
    "k8s.io/kubernetes": "k8s",
    "go.etcd.io/etcd/server/v3": "etcd",
    "sigs.k8s.io/kwok": "kwok",
    "helm.sh/helm/v3": "helm",
    "sigs.k8s.io/karpenter": "karpenter",
    "github.com/rhysd/actionlint": "actionlint",
}


def _kube_stamps() -> tuple[tuple[str, str], ...]:
    stamps = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        stamps += [
            (f"{package}.gitVersion", "{version}"),
            (f"{package}.gitMajor", "{major}"),
            (f"{package}.gitMinor", "{minor}"),
            (f"{package}.buildDate", "{date}"),
        ]
    return tuple(stamps)


def _kube(binary: str) -> Component:
    return Component(
        binary=binary,
        module="kubernetes",
        package=f"k8s.io/kubernetes/cmd/{binary}",
        upstream="k8s.io/kubernetes",
        tags=_KUBE_TAGS,
        stamps=_kube_stamps(),
        version_args=("version", "--client") if binary == "kubectl" else ("--version",),
        version_expect="{version}",
    )


COMPONENTS: tuple[Component, ...] = (
    Component("etcd", "etcd", "neuronplace.local/controlplane/etcd", "go.etcd.io/etcd/server/v3"),
    _kube("kube-apiserver"),
    _kube("kube-controller-manager"),
    _kube("kube-scheduler"),
    _kube("kubectl"),
    # kwokctl's default Kubernetes version decides which flags it passes; point it at ours.
    Component(
        "kwok",
        "kwok",
        "sigs.k8s.io/kwok/cmd/kwok",
        "sigs.k8s.io/kwok",
        stamps=(("sigs.k8s.io/kwok/pkg/consts.Version", "{version}"),),
        version_expect="{version}",
    ),
    Component(
        "kwokctl",
        "kwok",
        "sigs.k8s.io/kwok/cmd/kwokctl",
        "sigs.k8s.io/kwok",
        stamps=(
            ("sigs.k8s.io/kwok/pkg/consts.Version", "{version}"),
            ("sigs.k8s.io/kwok/pkg/consts.KubeVersion", "{kube_bare}"),
        ),
        version_expect="{version}",
    ),
    Component(
        "helm",
        "helm",
        "helm.sh/helm/v3/cmd/helm",
        "helm.sh/helm/v3",
        stamps=(
            ("helm.sh/helm/v3/internal/version.version", "{version}"),
            ("helm.sh/helm/v3/internal/version.gitTreeState", "clean"),
            # As helm's Makefile does: the Kubernetes version `helm template` and `helm lint`
            # assume offline, from the client-go helm is built with (else v1.20, and charts
            # with a newer kubeVersion fail).
            ("helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor", "{client_go_major}"),
            ("helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor", "{client_go_minor}"),
            ("helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor", "{client_go_major}"),
            ("helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor", "{client_go_minor}"),
        ),
        version_args=("version", "--short"),
        version_expect="{version}",
    ),
)


# Karpenter's own entry point for its kwok cloud provider (it creates kwok Nodes for its NodeClaims).
# It has no version flag; the version it reports in its metrics is stamped the same way.
KARPENTER = Component(
    "karpenter",
    "karpenter",
    "sigs.k8s.io/karpenter/kwok",
    "sigs.k8s.io/karpenter",
    stamps=(("sigs.k8s.io/karpenter/pkg/operator.Version", "{version}"),),
)
AUTOSCALER: tuple[Component, ...] = (KARPENTER,)

# actionlint checks the release workflow (.github/workflows/, tests/unit/test_release_workflow.py),
# which cannot run here. A set of its own, like the autoscaler: its pin never rebuilds the rest.
ACTIONLINT = Component(
    "actionlint",
    "actionlint",
    "github.com/rhysd/actionlint/cmd/actionlint",
    "github.com/rhysd/actionlint",
    # Built as a dependency of the pin module, it cannot read its own version from the build info.
    stamps=(("github.com/rhysd/actionlint.version", "{version}"),),
    version_args=("-version",),
    version_expect="{version}",
)
LINTERS: tuple[Component, ...] = (ACTIONLINT,)


class BuildError(RuntimeError):
    """A binary could not be built; the message carries the command and the tail of its output."""


@dataclass
class BuildReport:
    """What :func:`ensure_binaries` did: the bin folder and seconds spent per built component."""

    bin_dir: Path
    built: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)


def pinned_version(module: str, upstream: str) -> str:
    """The version ``controlplane/<module>/go.mod`` requires of ``upstream`` (e.g. ``v1.36.3``)."""
    gomod = CONTROLPLANE_DIR / module / "go.mod"
    text = gomod.read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(upstream)}\s+(v\S+)", text, re.MULTILINE)
    if not match:
        raise BuildError(f"{gomod} does not require {upstream}")
    return match.group(1)


def pins(components: tuple[Component, ...] | None = None) -> dict[str, str]:
    """Upstream module → pinned version, for every component (e.g. ``{"k8s.io/kubernetes": "v1.36.3", ...}``).

    ``components`` is one set that shares a cache folder: the control plane (default), :data:`AUTOSCALER`
    or :data:`LINTERS`.
    """
    return {c.upstream: pinned_version(c.module, c.upstream) for c in components or COMPONENTS}


def pins_key(components: tuple[Component, ...] | None = None) -> str:
    """The cache folder name: readable versions plus a hash of every input of the build."""
    components = components or COMPONENTS
    digest = hashlib.sha256()
    for module in sorted({c.module for c in components}):
        for path in sorted((CONTROLPLANE_DIR / module).iterdir()):
            if path.is_file() and path.suffix in (".mod", ".sum", ".go"):
                digest.update(f"{module}/{path.name}\0".encode())
                digest.update(path.read_bytes())
    digest.update(repr(components).encode())
    versions = pins(components)
    label = "-".join(
        f"{short}{versions[upstream].lstrip('v')}" for upstream, short in _CACHE_LABELS.items() if upstream in versions
    )
    return f"{label}-{digest.hexdigest()[:10]}"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "neuronplace").expanduser()


def bin_dir(components: tuple[Component, ...] | None = None) -> Path:
    """Where the binaries for the current pins live (whether or not they are built yet)."""
    return cache_root() / pins_key(components) / "bin"


def missing_binaries(directory: Path | None = None, components: tuple[Component, ...] | None = None) -> list[str]:
    directory = directory or bin_dir(components)
    return [c.binary for c in components or COMPONENTS if not os.access(directory / c.binary, os.X_OK)]


def go_toolchain(module: str) -> str | None:
    """The ``toolchain`` directive of ``controlplane/<module>/go.mod`` (e.g. ``go1.27.3``), if any."""
    match = re.search(r"^toolchain\s+(go\S+)", (CONTROLPLANE_DIR / module / "go.mod").read_text(), re.MULTILINE)
    return match.group(1) if match else None


def go_env(module: str) -> dict[str, str]:
    """The environment every go command in ``controlplane/<module>`` runs with."""
    env = dict(os.environ)
    # A module that needs a newer Go than the machine's names it in go.mod; the go command then
    # fetches exactly that toolchain (checked against the checksum database) and runs it.
    toolchain = go_toolchain(module)
    if toolchain:
        env["GOTOOLCHAIN"] = toolchain
    env["CGO_ENABLED"] = "0"
    # -mod=readonly: go.mod/go.sum are the pins; a build must never rewrite or re-resolve them.
    # -buildvcs=false: the module folders sit inside this repository's git tree.
    env["GOFLAGS"] = "-mod=readonly -buildvcs=false"
    return env


def _module_info(module: str, path: str) -> dict:
    """``go list -m -json path`` inside ``controlplane/<module>``: the pinned version and its release time."""
    out = subprocess.run(
        ["go", "list", "-m", "-json", path],
        check=False,
        cwd=CONTROLPLANE_DIR / module,
        env=go_env(module),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise BuildError(f"go list -m {path} in controlplane/{module} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def _module_time(module: str, upstream: str) -> str:
    """The upstream release's timestamp from the module proxy metadata (reproducible build date)."""
    return _module_info(module, upstream).get("Time", "1970-01-01T00:00:00Z")


def _client_go_version(module: str) -> tuple[str, str]:
    """(major, minor) of the Kubernetes release matching the module's k8s.io/client-go (v0.36.2 → 1, 36)."""
    zero, minor = _module_info(module, "k8s.io/client-go")["Version"].lstrip("v").split(".")[:2]
    return str(int(zero) + 1), minor


def _stamp_values(component: Component, versions: dict[str, str]) -> dict[str, str]:
    version = versions[component.upstream]
    major, minor = version.lstrip("v").split(".")[:2]
    values = {
        "version": version,
        "bare": version.lstrip("v"),
        "major": major,
        "minor": minor,
        "kube_bare": versions.get("k8s.io/kubernetes", "").lstrip("v"),
        "date": _module_time(component.module, component.upstream) if "{date}" in repr(component.stamps) else "",
    }
    if "{client_go_" in repr(component.stamps):
        values["client_go_major"], values["client_go_minor"] = _client_go_version(component.module)
    return values


def build_command(component: Component, output: Path, values: dict[str, str]) -> list[str]:
    """The ``go build`` command line for one component (run inside its module folder)."""
    ldflags = ["-s", "-w"] + [f"-X {symbol}={template.format(**values)}" for symbol, template in component.stamps]
    command = ["go", "build", "-trimpath", "-ldflags", " ".join(ldflags), "-o", str(output)]
    if component.tags:
        command += ["-tags", ",".join(component.tags)]
    return [*command, component.package]


def _build_one(component: Component, target: Path, versions: dict[str, str]) -> None:
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    command = build_command(component, partial, _stamp_values(component, versions))
    try:
        result = subprocess.run(
            command,
            check=False,
            cwd=CONTROLPLANE_DIR / component.module,
            env=go_env(component.module),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if result.returncode != 0:
            raise BuildError(
                f"building {component.binary} failed (exit {result.returncode}) in controlplane/{component.module}:\n"
                f"  {' '.join(command)}\n{result.stdout[-4000:]}"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def ensure_binaries(
    progress: Callable[[str], None] | None = None, components: tuple[Component, ...] | None = None
) -> BuildReport:
    """Build whatever binary the cache lacks for the current pins; return where they are.

    With everything cached this only hashes a few small files and checks the folder. ``progress``
    receives one line per component (default: stderr). ``components``: the control plane (default),
    :data:`AUTOSCALER` or :data:`LINTERS`.
    """
    components = components or COMPONENTS
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    if not CONTROLPLANE_DIR.is_dir():
        raise BuildError(
            f"{CONTROLPLANE_DIR} not found: the control plane builds from a source checkout of neuronplace"
        )
    target_dir = bin_dir(components)
    report = BuildReport(target_dir)
    if not missing_binaries(target_dir, components):
        report.cached = [c.binary for c in components]
        return report
    if shutil.which("go") is None:
        raise BuildError("the Go toolchain (`go`) is not on PATH; it is needed once to build the control plane")
    target_dir.mkdir(parents=True, exist_ok=True)
    versions = pins(components)
    with open(target_dir.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same pins
        total = len(components)
        for index, component in enumerate(components, start=1):
            target = target_dir / component.binary
            label = f"[{index}/{total}] {component.binary} {versions[component.upstream]}"
            if os.access(target, os.X_OK):
                report.cached.append(component.binary)
                say(f"{label}: cached")
                continue
            say(f"{label}: building ...")
            started = time.monotonic()
            _build_one(component, target, versions)
            report.built[component.binary] = time.monotonic() - started
            say(f"{label}: built in {report.built[component.binary]:.0f} s")
    return report


def binary_version(component: Component, directory: Path | None = None) -> str:
    """What the built binary says its version is (its first output line)."""
    path = (directory or bin_dir()) / component.binary
    out = subprocess.run([str(path), *component.version_args], capture_output=True, text=True, timeout=60, check=False)
    return (out.stdout or out.stderr).strip()


def expected_version(component: Component) -> str:
    version = pinned_version(component.module, component.upstream)
    return component.version_expect.format(version=version, bare=version.lstrip("v"))
