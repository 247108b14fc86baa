#!/usr/bin/env bash
# The test suite, slow end-to-end and service tests included (PostgreSQL + an MLflow server started on 127.0.0.1
# by the tests themselves). Installs what it needs on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-postgres.sh
export MLFLOW_DISABLE_TELEMETRY=true
export PATH="$PWD/.venv/bin:$PATH"  # tools the tests start (mlflow, uvicorn, deepfm) come from the venv
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "no tests were collected" >&2
fi
exit "$status"
