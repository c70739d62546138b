# One image for every Python service of TORI Memory. Multi-stage: wheels are built in the first
# stage, the runtime stage carries only the installed packages and runs as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mcp_services ./mcp_services
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app tori && mkdir -p /app /data && chown tori /data
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config ./config
ENV TORI_CONFIG_DIR=/app/config TORI_ENV=container TORI_VAR_DIR=/data PYTHONUNBUFFERED=1
USER tori
VOLUME ["/data"]
# The service module is the command, e.g. ["mcp_services.episodic_vault.server"].
ENTRYPOINT ["python", "-m"]
CMD ["mcp_services.episodic_vault.server"]
