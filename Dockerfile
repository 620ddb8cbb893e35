# syntax=docker/dockerfile:1
# The neuronplace operator image: kopf + the kubernetes client, no torch, running as a non-root user.
#
#   docker build -t neuronplace:dev .
#
# Stage "build" turns the project and every dependency of its `operator` extra into wheels; the final
# stage installs only those wheels (offline, --no-index) into a virtual environment, so it carries no
# compiler, no setuptools build and no source tree. tests/unit/test_dockerfile.py lints this file and
# runs these same RUN commands in clean virtual environments.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG WHEELS=/wheels
WORKDIR /src
# Only what the wheel is built from: the package folders and the metadata.
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY runtime/ runtime/
COPY cli/ cli/
COPY local/ local/
RUN pip wheel --no-cache-dir --wheel-dir "$WHEELS" ".[operator]"

FROM ${PYTHON_IMAGE}
ARG WHEELS=/wheels
ENV VIRTUAL_ENV=/opt/neuronplace \
    PATH=/opt/neuronplace/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed numeric uid/gid, so that the pod's runAsNonRoot can be verified by the kubelet.
RUN groupadd --system --gid 10001 neuronplace \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin neuronplace
# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv "$VIRTUAL_ENV" \
    && "$VIRTUAL_ENV/bin/pip" install --no-cache-dir --no-index --find-links "$WHEELS" "neuronplace[operator]"
USER 10001:10001
# kopf's liveness endpoint; the chart's probe and metrics settings point here.
EXPOSE 8080
ENTRYPOINT ["kopf", "run", "--standalone", "--liveness=http://0.0.0.0:8080/healthz", "-m", "neuronplace.operator"]
CMD ["--all-namespaces"]
