# syntax=docker/dockerfile:1
# The neuronplace operator image: kopf + the kubernetes client, no torch, running as a non-root user.
#
#   docker build -t neuronplace:0.1.0 .          # or: neuronplace local image (podman, offline base)
#
# Stage "build" turns the project and every dependency of its `operator` extra into wheels and
# installs only those wheels (offline, --no-index) into the virtual environment /opt/neuronplace;
# the final stage is the base image plus that one folder and a user, so it carries no compiler, no
# pip, no wheels and no source tree.
#
# BASE_IMAGE may be any Debian-based image with Python 3.11 and its venv module: the public default,
# or the Debian bookworm root filesystem `neuronplace local image` makes with mmdebstrap when no
# registry is reachable. Both stages use the same base, so the environment's interpreter link
# (/usr/local/bin/python3 or /usr/bin/python3) resolves in the final stage. Only `python3` is
# used, never `python`: Debian's interpreter has no `python` name, and no pip of its own.
#
# tests/unit/test_dockerfile.py lints this file and runs these same RUN commands in clean virtual
# environments; tests/cluster/test_image.py builds the image with podman and runs the operator in it.

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG WHEELS=/wheels
ARG BUILD_VENV=/opt/build
ENV VIRTUAL_ENV=/opt/neuronplace
# Two virtual environments: one whose pip builds the wheels, and the operator's. Made before the
# sources are copied: `python3 -m` puts the working directory first on sys.path, and the project's
# operator/ folder there would shadow the standard library's `operator` module.
RUN python3 -m venv "$BUILD_VENV" \
    && python3 -m venv "$VIRTUAL_ENV" \
    && "$BUILD_VENV/bin/pip" --version
WORKDIR /src
# The dependencies first, from pyproject.toml alone: wheels of the project's dependencies and its
# `operator` extra, and its build backend installed into the build environment. A change to the
# sources or the README leaves this layer cached, so the project is rebuilt offline in seconds.
# (pip's own download cache does not help here: the proxy in front of PyPI on these machines sends
# no cache headers, so pip stores nothing.)
# The optional build secret "pip-ca" is a CA bundle for pip, for networks whose TLS is re-signed
# by a proxy (`neuronplace local image` passes the host's bundle). A secret is never a layer.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && "$BUILD_VENV/bin/python3" -I -c 'import tomllib; t = tomllib.load(open("pyproject.toml", "rb")); p = t["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["operator"]), file=open("requirements.txt", "w")); print("\n".join(t["build-system"]["requires"]), file=open("build-requirements.txt", "w"))' \
    && "$BUILD_VENV/bin/pip" install --no-cache-dir --disable-pip-version-check --requirement build-requirements.txt \
    && "$BUILD_VENV/bin/pip" wheel --no-cache-dir --disable-pip-version-check --wheel-dir "$WHEELS" --requirement requirements.txt
# Only what the project's wheel is built from: the package folders (pyproject.toml's package-dir)
# and the README (its long description). tests/unit/test_dockerfile.py keeps this list and
# package-dir the same.
COPY README.md ./
COPY placement/ placement/
COPY operator/ operator/
COPY runtime/ runtime/
COPY cli/ cli/
COPY local/ local/
COPY examples/ examples/
# The project's wheel is built without network (no dependencies, the backend installed above),
# then the operator's environment is installed from the wheels only. pip compiles the bytecode
# here (the root filesystem is read-only at run time), then pip and setuptools leave the
# environment: nothing installs anything in the running image.
# kubernetes >= 36 also ships a second, asyncio copy of its whole generated client in
# kubernetes/aio (68 MB with bytecode: the image is 295 MB with it, 228 MB without); nothing
# outside that folder imports it (the operator uses the synchronous client, kopf its own aiohttp),
# so it is removed. tests/cluster/test_image.py imports and runs the operator without it.
RUN "$BUILD_VENV/bin/pip" wheel --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation --wheel-dir "$WHEELS" . \
    && "$VIRTUAL_ENV/bin/pip" install --no-cache-dir --disable-pip-version-check --no-index --find-links "$WHEELS" "neuronplace[operator]" \
    && "$VIRTUAL_ENV/bin/pip" uninstall --yes --disable-pip-version-check pip setuptools \
    && rm -rf "$VIRTUAL_ENV"/lib/python3*/site-packages/kubernetes/aio

FROM ${BASE_IMAGE}
ENV VIRTUAL_ENV=/opt/neuronplace \
    PATH=/opt/neuronplace/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed numeric uid/gid, so that the pod's runAsNonRoot can be verified by the kubelet.
RUN groupadd --system --gid 10001 neuronplace \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin neuronplace
# COPY, not a bind mount of the build stage: podman 4.3 reuses a cached RUN layer even when a
# stage it bind-mounts has changed, and the image would keep stale code. Owned by root, so
# read-only for the operator's user.
COPY --from=build /opt/neuronplace /opt/neuronplace
USER 10001:10001
# kopf's liveness endpoint; the chart's probe and metrics settings point here.
EXPOSE 8080
ENTRYPOINT ["kopf", "run", "--standalone", "--liveness=http://0.0.0.0:8080/healthz", "-m", "neuronplace.operator"]
CMD ["--all-namespaces"]
