#!/usr/bin/env bash
# scripts/health-check.sh <service>: check one service of the fleet, the way an operator or a
# container orchestrator would: its health (gRPC health; the gateway's /healthz) and its metrics
# page (it answers and carries the service's key metrics).
#
#   scripts/health-check.sh episodic-vault      # sleep-scheduler, sparse-pruner, koopman-learner,
#                                               # mcp-gateway
# Addresses come from the configuration (config/, TORI_ENV and the port variables), so it checks
# the fleet `make up` started, or another one when its variables are set.
# Exit codes: 0 healthy, 1 unhealthy (each failed check is printed), 2 bad usage.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 1 ]; then
  echo "usage: $0 episodic-vault|sleep-scheduler|sparse-pruner|koopman-learner|mcp-gateway" >&2
  exit 2
fi
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" - "$1" <<'PYEOF'
import sys
import urllib.request

from mcp_services.common.clients import endpoint_address, reachable_host as client
from mcp_services.common.config import ConfigError, load_config
from mcp_services.common.health import check as grpc_check

# service -> (config key, metrics every healthy instance exports)
SERVICES = {
    "episodic-vault": ("episodic_vault", ["grpc_server_started_total", "vault_episode_count", "vault_size_mb"]),
    "sleep-scheduler": ("sleep_scheduler", ["grpc_server_started_total", "sleep_t0", "sleep_eta"]),
    "sparse-pruner": ("sparse_pruner", ["grpc_server_started_total", "pruner_tau"]),
    "koopman-learner": ("koopman_learner", ["grpc_server_started_total", "kcl_rank"]),
    "mcp-gateway": ("gateway", ["gateway_canary_percent"]),
}
name = sys.argv[1]
if name not in SERVICES:
    print(f"unknown service {name!r}; one of: {', '.join(SERVICES)}", file=sys.stderr)
    sys.exit(2)
try:
    settings = load_config()
except ConfigError as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)
key, needed = SERVICES[name]


ok = True
if key == "gateway":
    g = settings.gateway
    from mcp_services.gateway.health import check as http_check

    url = f"http://{client(g.host)}:{g.port}/healthz"
    status = http_check(url)
    metrics = f"http://{client(g.metrics_host)}:{g.metrics_port}/metrics"
    where = url
else:
    ep = getattr(settings.services, key)
    where = endpoint_address(ep)
    status = grpc_check(where)
    metrics = f"http://{client(ep.metrics_host)}:{ep.metrics_port}/metrics"
healthy = status == "SERVING"
ok &= healthy
print(f"{name:<16} health   {status:<30} {where}")
try:
    with urllib.request.urlopen(metrics, timeout=3) as resp:
        page = resp.read().decode()
    missing = [m for m in needed if f"\n{m}" not in f"\n{page}"]
    detail = "ok" if not missing else f"missing {', '.join(missing)}"
    ok &= not missing
except OSError as exc:
    detail = f"UNREACHABLE ({getattr(exc, 'reason', exc)})"
    ok = False
print(f"{name:<16} metrics  {detail:<30} {metrics}")
sys.exit(0 if ok else 1)
PYEOF
