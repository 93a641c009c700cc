# The daemon image (also `failover probe`, `failover ctl`). Non-root (uid/gid 10001, numeric so
# Kubernetes can verify runAsNonRoot), nothing written at run time outside the volumes the manifests
# mount (state_dir, /tmp): it runs with a read-only root filesystem. No HEALTHCHECK: Kubernetes
# probes /healthz and /readyz (deploy/base/deployment.yaml). HAProxy is not needed inside: the daemon
# talks to HAProxy's runtime API over TCP. tests/test_deploy_image.py checks this file against the
# manifests; `make image` builds it and checks the built image (scripts/check-image.sh).
#
#   docker build --build-arg VERSION=$(git describe --tags) --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) -t ghcr.io/example/failover:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
# bytecode is compiled here, so the read-only image never needs to write a .pyc
RUN pip install --no-cache-dir --prefix=/install . \
    && python -m compileall -q /install

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="failover" \
      org.opencontainers.image.description="Event-driven failover orchestrator for multi-cluster Kubernetes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/example/failover"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 failover \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/failover --no-create-home \
       --shell /usr/sbin/nologin failover \
    && mkdir -p /var/lib/failover /etc/failover/config /etc/failover/playbooks \
    && chown 10001:10001 /var/lib/failover
COPY --from=build /install /usr/local
# the shipped playbooks; deploy/ mounts its ConfigMap over them
COPY playbooks/*.yaml /etc/failover/playbooks/
USER 10001:10001
WORKDIR /var/lib/failover
EXPOSE 8080
ENTRYPOINT ["failover", "--log-format", "json"]
CMD ["run", "--config", "/etc/failover/config/failover.yaml"]
