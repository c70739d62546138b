# One image for every Python service of TORI Memory (and the vault-cli and tori-loadgen tools).
# Multi-stage: the build stage turns the project and all its dependencies into wheels; the runtime
# stage installs only those wheels (no compiler, no pip cache) and runs as a non-root user.
#
#   docker build -t tori-memory:dev .            # or `make containers-dev`
#   docker run tori-memory:dev mcp_services.sleep_scheduler.server
FROM python:3.11-slim AS build
WORKDIR /src
# The dependency wheels change less often than the code: build them in their own layer.
COPY pyproject.toml README.md ./
RUN mkdir -p mcp_services && touch mcp_services/__init__.py \
    && pip wheel --no-cache-dir --wheel-dir /wheels .
COPY mcp_services ./mcp_services
RUN rm -f /wheels/tori_memory-*.whl && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
ARG UID=10001
RUN useradd --system --uid "${UID}" --home-dir /app --shell /usr/sbin/nologin tori \
    && mkdir -p /app /data && chown tori /data
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config ./config
# The operator's health check (scripts/health-check.sh <service>), for `docker compose exec`.
COPY scripts/health-check.sh ./scripts/health-check.sh
ENV TORI_CONFIG_DIR=/app/config \
    TORI_ENV=container \
    TORI_VAR_DIR=/data \
    LOG_FORMAT=json \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER tori
VOLUME ["/data"]
# Exec form: the service is PID 1 and gets SIGTERM itself, so it drains and stops cleanly.
# The command is the service module, e.g. ["mcp_services.episodic_vault.server"].
ENTRYPOINT ["python", "-m"]
CMD ["mcp_services.episodic_vault.server"]
