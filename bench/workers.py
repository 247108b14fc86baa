"""Team-mode benchmark: trials/hour with 1 vs N local workers, and per-trial platform overhead by store.

Runs the real command, `deepfm tune STUDY --workers N --no-promote`, on a fixed small study whose trials all
cost the same (fixed architecture; only learning rate and dropout are searched; no pruning), over
  - the embedded default stores (SQLite for Optuna and MLflow), and
  - PostgreSQL + an MLflow tracking server over HTTP (started here on 127.0.0.1, as the team-mode tests do).

Throughput is finished trials per hour of study time (first trial start to last trial end: the steady state
that a long study sees) and of command time (process start-up, data preparation and the summary included).
Platform overhead per trial is Optuna's trial duration minus the training loop's wall time (model build,
epochs, evaluation); the objective also logs it on each trial run as `platform_overhead_seconds`.

    python bench/workers.py [--trials 12] [--rows 20000] [--configs 1x1 1x2 3x1] [--repeat 1] [--stores sqlite pg]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/services.py starts PostgreSQL and the MLflow server

from bench.common import machine, write_json  # noqa: E402

STUDY = """\
study:
  name: {name}
  n_trials: {trials}
  metric: val_auc
  sampler: {{type: random, seed: 0}}
  pruner: none
data:
  synthetic: {{rows: {rows}, seed: 0, max_cardinality: 5000}}
training:
  batch_size: 512
  max_epochs: {epochs}
  patience: {epochs}
  seed: 0
policy_configs:
  scoring_policy:
    policy_type: deepfm
    embedding_dim: 8
    deep_hidden_units: [64, 32]
    activation_fn: relu
    dropout: {{low: 0.0, high: 0.3}}
    learning_rate: {{low: 1.0e-3, high: 1.0e-2, log: true}}
"""


def run(workdir: Path, name: str, workers: int, threads: int, args, storage: str | None,
        tracking: str | None) -> dict:
    """One `deepfm tune --workers N` over a fresh study; its throughput and per-trial overhead."""
    import optuna

    study_path = workdir / f"{name}.yaml"
    study_path.write_text(STUDY.format(name=name, trials=args.trials, rows=args.rows, epochs=args.epochs))
    cmd = [sys.executable, "-m", "deepfm_tuner.tuner.cli", "tune", str(study_path), "--workers", str(workers), "--no-promote",
           "--threads", str(threads)]
    if storage:
        cmd += ["--storage", storage, "--tracking-uri", tracking]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    command_wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    storage = storage or f"sqlite:///{workdir}/mlruns/optuna.db"
    trials = [t for t in optuna.load_study(study_name=name, storage=storage).get_trials()
              if t.state.name == "COMPLETE"]
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials)
    study_wall = (last - first).total_seconds()
    durations = [t.duration.total_seconds() for t in trials]
    training = [t.user_attrs["training"]["wall_seconds"] for t in trials]
    overheads = [d - w for d, w in zip(durations, training)]
    return {
        "workers": workers, "threads_per_worker": threads,
        "trials": len(trials), "command_seconds": round(command_wall, 1), "study_seconds": round(study_wall, 1),
        "trials_per_hour_study": round(len(trials) / study_wall * 3600),
        "trials_per_hour_command": round(len(trials) / command_wall * 3600),
        "trial_seconds_median": round(statistics.median(durations), 2),
        "training_seconds_median": round(statistics.median(training), 2),
        "overhead_seconds_median": round(statistics.median(overheads), 3),
        "overhead_seconds_max": round(max(overheads), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=["1x1", "1x2", "3x1"],
                        help="WORKERSxTHREADS: local workers and torch threads per worker")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per configuration, alternating; the fastest is kept (shared machines are noisy)")
    parser.add_argument("--stores", nargs="+", choices=["sqlite", "pg"], default=["sqlite", "pg"],
                        help="sqlite: the embedded default; pg: PostgreSQL + an MLflow server, started here")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

    workdir = Path(tempfile.mkdtemp(prefix="deepfm-bench-workers-"))
    results = {"benchmark": "workers", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "args": vars(args),
               "command": "python bench/workers.py " + " ".join(sys.argv[1:]), "runs": []}
    def measure(store: str, label: str, storage: str | None, tracking: str | None) -> None:
        best: dict[str, dict] = {}
        for attempt in range(args.repeat):
            for config in args.configs:
                workers, threads = (int(x) for x in config.split("x"))
                result = run(workdir, f"{label}-{config}-{attempt}", workers, threads, args, storage, tracking)
                print({"store": store, "attempt": attempt, **result}, flush=True)
                if config not in best or result["study_seconds"] < best[config]["study_seconds"]:
                    best[config] = result
        results["runs"].extend({"store": store, **best[c]} for c in args.configs)

    if "sqlite" in args.stores:
        measure("sqlite", "sqlite", None, None)
    if "pg" in args.stores:
        from services import missing_reason, mlflow_server, postgres_server

        reason = missing_reason()
        if reason:
            raise SystemExit(f"{reason} (or pass --stores sqlite)")
        with postgres_server() as pg, mlflow_server(pg.url("mlflow"), workdir / "artifacts") as uri:
            measure("postgresql+mlflow-server", "pg", pg.url("optuna"), uri)
    write_json(results, "workers.json", args.out)


if __name__ == "__main__":
    main()
