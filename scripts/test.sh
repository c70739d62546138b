#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, format, types, then pytest against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# Two cores: BLAS thread pools fighting the test processes made numeric tests 7x slower.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
exec "$VENV/bin/pytest" "$@"
