"""Tuning benchmarks (issue: tuning studies).

1. Platform overhead per trial: Optuna's trial duration minus the training loop's own time (model build, epochs,
   evaluation), i.e. what the platform adds: trial bookkeeping in the RDB, MLflow run creation, params, per-epoch
   metrics, the summary, the checkpoint of a new best trial.
2. Search efficiency: a seeded TPE + median-pruning study vs a 30-trial random search (no pruning), same space,
   data, seeds and epoch budget per trial. We count training epochs until each reaches the random search's best
   validation AUC.

    python bench/tuning.py [--rows 50000] [--trials 30] [--epochs 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_json  # noqa: E402


def make_spec(name, sampler, pruner, args):
    from model.config import TrainConfig
    from model.datasource import DataSpec
    from tuner.space import parse_space
    from tuner.study import PrunerSpec, SamplerSpec, StudySpec

    return StudySpec(
        name=name, space=parse_space({}),  # every hyperparameter over its default range
        data=DataSpec(synthetic={"rows": args.rows, "seed": 0, "max_cardinality": args.cardinality}),
        training=TrainConfig(batch_size=args.batch_size, max_epochs=args.epochs, patience=args.epochs, seed=0,
                             device="cpu", threads=args.threads),
        n_trials=args.trials, sampler=SamplerSpec(type=sampler, seed=args.seed, n_startup_trials=args.startup),
        pruner=PrunerSpec(type=pruner, n_startup_trials=args.startup, n_warmup_steps=1), promote=False)


def epochs_of(trial) -> int:
    return len(trial.intermediate_values)


def run_study(spec, data, root: Path):
    from tuner.tune import tune

    started = time.perf_counter()
    result = tune(spec, storage=f"sqlite:///{root}/optuna.db", tracking_uri=f"sqlite:///{root}/mlflow.db",
                  data=data)
    wall = time.perf_counter() - started
    trials = [t for t in result.handle.study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]
    return result, trials, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--cardinality", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--startup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from tuner.tune import load_data

    workdir = Path(tempfile.mkdtemp(prefix="deepfm-bench-tuning-"))
    os.chdir(workdir)  # synthetic data and stores stay out of the checkout
    random_spec = make_spec("random", "random", "none", args)
    data = load_data(random_spec)  # same encoded data for both studies

    random_result, random_trials, random_wall = run_study(random_spec, data, workdir / "random")
    tpe_result, tpe_trials, tpe_wall = run_study(
        dataclasses.replace(make_spec("tpe", "tpe", "median", args)), data, workdir / "tpe")

    # 1. platform overhead per trial
    overheads = []
    for trial in random_trials + tpe_trials:
        if "training" in trial.user_attrs and trial.duration:
            overheads.append(trial.duration.total_seconds() - trial.user_attrs["training"]["wall_seconds"])
    pruned_overheads = [t.duration.total_seconds() for t in tpe_trials if t.state.name == "PRUNED"]

    # 2. epochs until each study reaches the random search's best validation AUC
    target = max(t.value for t in random_trials if t.value is not None)
    random_total_epochs = sum(epochs_of(t) for t in random_trials)

    def epochs_to_reach(trials):
        spent = 0
        for trial in sorted(trials, key=lambda t: t.number):
            spent += epochs_of(trial)
            if trial.state.name == "COMPLETE" and trial.value >= target:
                return spent
        return None

    tpe_epochs = epochs_to_reach(tpe_trials)
    results = {
        "benchmark": "tuning", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "args": vars(args),
        "data": data.prepared.summary(),
        "overhead_seconds_per_study_trial": {
            name: (wall - sum(t.user_attrs.get("training", {}).get("wall_seconds", 0) for t in trials)) / len(trials)
            for name, wall, trials in (("random", random_wall, random_trials), ("tpe", tpe_wall, tpe_trials))},
        "overhead_seconds": {"median": statistics.median(overheads), "p90": sorted(overheads)[int(0.9 * len(overheads))],
                             "max": max(overheads), "n": len(overheads)},
        "random": {"trials": len(random_trials), "best_val_auc": target, "total_epochs": random_total_epochs,
                   "epochs_to_best": epochs_to_reach(random_trials), "wall_seconds": random_wall},
        "tpe_median": {"trials": len(tpe_trials), "pruned": sum(t.state.name == "PRUNED" for t in tpe_trials),
                       "best_val_auc": max(t.value for t in tpe_trials if t.state.name == "COMPLETE"),
                       "total_epochs": sum(epochs_of(t) for t in tpe_trials), "epochs_to_reach_random_best": tpe_epochs,
                       "wall_seconds": tpe_wall},
        "epochs_ratio": None if tpe_epochs is None else tpe_epochs / random_total_epochs,
        "workdir": str(workdir),
    }
    del pruned_overheads
    write_json(results, "tuning.json", args.out)


if __name__ == "__main__":
    main()
