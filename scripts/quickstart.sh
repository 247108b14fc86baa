#!/usr/bin/env bash
# The main job on the embedded default (SQLite + files under mlruns/): install, tune the quick study end to end
# (synthetic data generated on first use, Optuna trials tracked in MLflow, best trial promoted to the registry
# as models:/deepfm-quick@champion), then score a few raw rows with the champion pulled from the registry.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLFLOW_DISABLE_TELEMETRY=true
.venv/bin/deepfm tune studies/quick.yaml
echo
echo "Scoring 5 raw test rows with models:/deepfm-quick@champion:"
mkdir -p outputs
head -n 5 data/generated/synth-60000-seed0-card20000/test.tsv > outputs/sample.tsv
.venv/bin/deepfm score --model models:/deepfm-quick@champion --input outputs/sample.tsv --format criteo \
  --output outputs/sample-scores.csv
.venv/bin/python - <<'PY'
import pandas as pd
scores = pd.read_csv("outputs/sample-scores.csv")
print(scores[[c for c in scores.columns if c in ("label", "C1", "I1", "probability")]].to_string(index=False))
PY
echo
echo "Browse every trial: .venv/bin/deepfm ui   (then open http://127.0.0.1:5000)"
