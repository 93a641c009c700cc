# The daemon image. HAProxy is not needed inside: the daemon talks to HAProxy's runtime API over TCP.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/failover failover \
    && mkdir -p /var/lib/failover /etc/failover/playbooks && chown failover /var/lib/failover
COPY --from=build /install /usr/local
COPY playbooks /etc/failover/playbooks
USER failover
WORKDIR /var/lib/failover
EXPOSE 8080
ENTRYPOINT ["failover", "--log-format", "json"]
CMD ["run", "--config", "/etc/failover/failover.yaml"]
