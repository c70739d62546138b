#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, format, types, import contracts, then pytest against
# real servers.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# Two cores: BLAS thread pools fighting the test processes made numeric tests 7x slower.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
# System tools the deployment tests run: promtool (Debian's prometheus package: rule checks and
# unit tests, and the real Prometheus of the observability test) and docker-compose (validates
# the compose files without an engine). Installed only when missing, so a fresh machine works.
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v docker-compose >/dev/null || need+=(docker-compose)
if ((${#need[@]})); then
  echo "installing ${need[*]} (Debian packages) for tests/deploy and tests/test_compose.py"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
"$VENV/bin/lint-imports"
exec "$VENV/bin/pytest" "$@"
