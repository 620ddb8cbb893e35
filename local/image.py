"""Build the operator image from the repository's ``Dockerfile`` with podman (or docker).

``neuronplace local image`` calls :func:`build_image`. The Dockerfile's public base,
``python:3.11-slim``, is used when it is present or can be pulled. When no registry is reachable,
the base is a Debian bookworm root filesystem (Debian's python3 3.11 and its venv module) made
with ``mmdebstrap`` from Debian's package mirrors and turned into an image with ``podman import``;
the root filesystem tarball is cached under ``<cache root>/images`` (``~/.cache/neuronplace``, see
``neuronplace.local.build.cache_root``) and the imported image under a name that carries a hash of
the recipe, so a second build neither debootstraps nor imports again.

pip inside the build fetches from PyPI. It is given the host's CA bundle as the build secret
``pip-ca`` (never a layer of the image), so a network whose TLS is re-signed by a proxy works the
same inside the build as on the host, and the wheels are chosen by the image's own pip for the
image's own Python and platform (a host-side ``pip wheel`` would choose them for the host's
Python, which need not be 3.11), with the Dockerfile alone as the recipe for every build.

podman runs with ``--runtime runc``: crun fails here on cgroups and rlimits. Its defaults work
for ``podman build`` on these machines (rootful, overlay storage, OCI isolation, cgroupfs, the
default build network); containers started from the image need ``Engine.run_flags``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from neuronplace.local.build import cache_root

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "Dockerfile"
# Where the release workflow pushes the image (.github/workflows/release.yml) and the chart's default
# image.repository: a local build carries the name a cluster pulls (tests/unit/test_release_workflow.py).
IMAGE_NAME = "ghcr.io/neuronplace/neuronplace"
# The Dockerfile's `ARG BASE_IMAGE` default, fully qualified: podman's short-name resolution
# depends on the host's registries.conf, docker's does not need it (tests/unit/test_image_build.py
# keeps the two equal).
DEFAULT_BASE = "docker.io/library/python:3.11-slim"
BASE_REPOSITORY = "localhost/neuronplace-base"
DEBIAN_SUITE = "bookworm"  # Python 3.11, as the default base

# mmdebstrap's recipe for the fallback base: minbase (essential packages and apt) plus python3, its
# venv module and the CA certificates; no Recommends; merged /usr by a hook instead of the usrmerge
# package (which pulls in perl, 50 MB); no manuals, translations or docs except copyright files
# (the same dpkg filters Debian's own slim images use). About 130 MB instead of 235 MB.
MMDEBSTRAP_ARGS = (
    "--variant=minbase",
    "--include=python3,python3-venv,ca-certificates",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    '--aptopt=APT::Install-Recommends "false"',
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-include=/usr/share/locale/locale.alias",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
)

# Where pip's trusted CA bundle may be, in the order pip and requests themselves consult them.
CA_BUNDLE_VARIABLES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

PULL_TIMEOUT = 300
BUILD_TIMEOUT = 1800
MMDEBSTRAP_TIMEOUT = 900


class ImageError(RuntimeError):
    """The image cannot be built here; the message says what is missing or what failed."""


@dataclass(frozen=True)
class Engine:
    """A container engine's command line: ``argv`` is the program with its global flags."""

    name: str  # "podman" or "docker"
    argv: tuple[str, ...]

    def command(self, *args: str) -> list[str]:
        return [*self.argv, *args]

    @property
    def run_flags(self) -> tuple[str, ...]:
        """Flags every ``run`` of the image needs on this kind of machine: the host network (the
        local control plane listens on 127.0.0.1) and, for podman with runc, explicit ulimits:
        podman's default open-files limit is above this machine's hard limit, and runc then fails
        with "error setting rlimit type 7: operation not permitted"."""
        if self.name == "podman":
            return ("--network", "host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
        return ("--network", "host")

    def reference(self, tag: str) -> str:
        """The name the engine stores ``tag`` under: podman qualifies bare names with localhost/."""
        if self.name == "podman" and "/" not in tag:
            return f"localhost/{tag}"
        return tag

    def env(self) -> dict[str, str]:
        # `RUN --mount` and `--secret` need BuildKit; docker >= 23 uses it by default, older ones
        # only when asked. podman's builder (buildah) understands them natively.
        return {**os.environ, "DOCKER_BUILDKIT": "1"} if self.name == "docker" else dict(os.environ)

    def run(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=timeout, check=check, env=self.env()
        )

    def image_exists(self, reference: str) -> bool:
        return self.run("image", "inspect", "--format", "{{.Id}}", reference).returncode == 0

    def image_size(self, reference: str) -> int:
        """Bytes of the image, all layers uncompressed (what ``images`` shows as SIZE)."""
        result = self.run("image", "inspect", "--format", "{{.Size}}", reference, check=True)
        return int(result.stdout.strip())


def find_engine(path: str | None = None) -> Engine:
    """podman when installed; else docker when its daemon answers; else an error saying what to
    install. ``path`` is the PATH to search (default: this process's)."""
    podman = shutil.which("podman", path=path)
    if podman:
        return Engine("podman", (podman, "--runtime", "runc"))
    docker = shutil.which("docker", path=path)
    if docker:
        info = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=60, check=False
        )
        if info.returncode == 0:
            return Engine("docker", (docker,))
        detail = (info.stderr.strip().splitlines() or ["no answer"])[-1]
        raise ImageError(
            f"docker is installed but its daemon does not answer ({detail}); start it, or install "
            "podman: apt-get install podman runc mmdebstrap"
        )
    raise ImageError("no container engine: install podman (apt-get install podman runc mmdebstrap) or docker")


def project_version(root: Path = REPO_ROOT) -> str:
    """The package version: the chart's appVersion, hence its default image tag."""
    return tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]


def default_tag(root: Path = REPO_ROOT) -> str:
    """``ghcr.io/neuronplace/neuronplace:<version>``: what the chart deploys with its default image values."""
    return f"{IMAGE_NAME}:{project_version(root)}"


def ca_bundle(environ: Mapping[str, str] | None = None) -> Path | None:
    """The CA bundle the host's pip trusts, to be trusted by pip inside the build too."""
    environ = os.environ if environ is None else environ
    for variable in CA_BUNDLE_VARIABLES:
        value = environ.get(variable)
        if value and Path(value).is_file():
            return Path(value)
    return SYSTEM_CA_BUNDLE if SYSTEM_CA_BUNDLE.is_file() else None


def base_recipe_key() -> str:
    """A short hash of the fallback base's recipe: a changed recipe gets a new cached base."""
    recipe = "\n".join((DEBIAN_SUITE, *MMDEBSTRAP_ARGS))
    return hashlib.sha256(recipe.encode()).hexdigest()[:10]


def debian_base_reference() -> str:
    return f"{BASE_REPOSITORY}:{DEBIAN_SUITE}-{base_recipe_key()}"


def images_cache_dir() -> Path:
    return cache_root() / "images"


def debian_base_tarball() -> Path:
    return images_cache_dir() / f"debian-{DEBIAN_SUITE}-python3-{base_recipe_key()}.tar"


def mmdebstrap_command(output: Path) -> list[str]:
    return ["mmdebstrap", *MMDEBSTRAP_ARGS, DEBIAN_SUITE, str(output)]


@contextmanager
def _images_lock():
    """Serialises base creation between concurrent builds (a test session and a shell)."""
    directory = images_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_debian_base(engine: Engine, progress: Callable[[str], None], refresh: bool = False) -> str:
    """The Debian base image, imported from the cached tarball, which mmdebstrap makes if missing.
    ``refresh`` makes both again (Debian's security updates reach the base only that way)."""
    reference = debian_base_reference()
    tarball = debian_base_tarball()
    with _images_lock():
        if refresh:
            tarball.unlink(missing_ok=True)
            engine.run("rmi", "--force", reference)
        elif engine.image_exists(reference):
            progress(f"base image {reference} (cached)")
            return reference
        if not tarball.is_file():
            if shutil.which("mmdebstrap") is None:
                raise ImageError(
                    "cannot make the Debian base: mmdebstrap is missing (apt-get install mmdebstrap); "
                    "or pass a base image that is present: --base IMAGE"
                )
            partial = tarball.with_suffix(".partial.tar")
            partial.unlink(missing_ok=True)
            progress(f"making a Debian {DEBIAN_SUITE} base with mmdebstrap (about a minute) into {tarball}")
            started = time.monotonic()
            result = subprocess.run(
                mmdebstrap_command(partial), capture_output=True, text=True, timeout=MMDEBSTRAP_TIMEOUT, check=False
            )
            if result.returncode != 0:
                partial.unlink(missing_ok=True)
                raise ImageError(f"mmdebstrap failed ({result.returncode}):\n{result.stderr[-3000:]}")
            partial.rename(tarball)  # complete or absent: a later run never trusts a half-written one
            progress(f"base root filesystem made in {time.monotonic() - started:.0f} s")
        result = engine.run("import", "--change", 'CMD ["/bin/bash"]', str(tarball), reference, timeout=600)
        if result.returncode != 0:
            raise ImageError(f"{engine.name} import failed ({result.returncode}):\n{result.stderr[-3000:]}")
        progress(f"base image {reference} imported from {tarball}")
        return reference


def choose_base(engine: Engine, progress: Callable[[str], None], refresh_base: bool = False) -> str:
    """The Dockerfile's default base when present or pullable, else the Debian base."""
    if not refresh_base:
        if engine.image_exists(DEFAULT_BASE):
            progress(f"base image {DEFAULT_BASE} (present)")
            return DEFAULT_BASE
        try:
            pulled = engine.run("pull", DEFAULT_BASE, timeout=PULL_TIMEOUT)
        except subprocess.TimeoutExpired:
            reason = f"no answer in {PULL_TIMEOUT} s"
        else:
            if pulled.returncode == 0:
                progress(f"base image {DEFAULT_BASE} (pulled)")
                return DEFAULT_BASE
            reason = (pulled.stderr.strip().splitlines() or [f"exit status {pulled.returncode}"])[-1]
        progress(f"cannot pull {DEFAULT_BASE} ({reason}); using a Debian {DEBIAN_SUITE} base instead")
    return ensure_debian_base(engine, progress, refresh=refresh_base)


def build_command(engine: Engine, base: str, reference: str, ca: Path | None, context: Path = REPO_ROOT) -> list[str]:
    """The engine's build command line for the repository's Dockerfile."""
    args = ["build", "--file", str(context / "Dockerfile"), "--tag", reference, "--build-arg", f"BASE_IMAGE={base}"]
    if engine.name == "podman":
        # A local-only base (the imported Debian one) must never be looked up in a registry.
        args += ["--pull=never" if base.startswith("localhost/") else "--pull=missing"]
    if ca is not None:
        args += ["--secret", f"id=pip-ca,src={ca}"]
    return engine.command(*args, str(context))


@dataclass(frozen=True)
class BuiltImage:
    reference: str
    base: str
    engine: str
    seconds: float
    size_bytes: int


def build_image(
    *,
    tag: str | None = None,
    base: str | None = None,
    engine: Engine | None = None,
    progress: Callable[[str], None] | None = None,
    refresh_base: bool = False,
    output: TextIO | None = None,
) -> BuiltImage:
    """Build the operator image; the engine's own build log goes to ``output`` (default stderr).

    ``base`` forces a base image (no fallback); otherwise :func:`choose_base` picks one.
    """
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    if not DOCKERFILE.is_file():
        raise ImageError(f"no Dockerfile at {DOCKERFILE}: `neuronplace local image` builds from a source checkout")
    engine = engine or find_engine()
    started = time.monotonic()
    chosen = base or choose_base(engine, say, refresh_base=refresh_base)
    reference = engine.reference(tag or default_tag())
    command = build_command(engine, chosen, reference, ca_bundle())
    say(f"building {reference} on {chosen} with {engine.name}")
    result = subprocess.run(
        command,
        stdout=output or sys.stderr,
        stderr=subprocess.STDOUT,
        timeout=BUILD_TIMEOUT,
        env=engine.env(),
        cwd=REPO_ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise ImageError(f"{engine.name} build failed with exit status {result.returncode}: {' '.join(command)}")
    return BuiltImage(
        reference=reference,
        base=chosen,
        engine=engine.name,
        seconds=time.monotonic() - started,
        size_bytes=engine.image_size(reference),
    )
