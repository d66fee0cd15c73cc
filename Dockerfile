# syntax=docker/dockerfile:1
# plugin-operator image: `docker build -t plugin-operator:dev .`
# Runtime needs git (source resolution and fetch); nothing else from the
# build stage but the virtualenv. Runs as uid 65532 with a read-only root
# filesystem (see deploy/base/deployment.yaml for the writable mounts).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
# Dependencies first, so a source-only change reuses this layer.
COPY pyproject.toml ./
RUN mkdir -p operator/plugin_operator \
 && touch operator/plugin_operator/__init__.py \
 && /opt/venv/bin/pip install . \
 && /opt/venv/bin/pip uninstall -y plugin-operator
COPY operator ./operator
RUN /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/plugin-operator --help >/dev/null

FROM ${PYTHON_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin nonroot \
 && mkdir -p /var/cache/plugin-operator /var/lib/plugin-operator/registry \
 && chown 65532:65532 /var/cache/plugin-operator
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    GIT_TERMINAL_PROMPT=0
USER 65532:65532
# 8080: kopf liveness (/healthz); 9090: Prometheus metrics (/metrics).
EXPOSE 8080 9090
ENTRYPOINT ["plugin-operator"]
CMD ["run"]
