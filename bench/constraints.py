"""Serving budgets (issue 17 section 3): what timing each trial's scoring latency costs.

A TPE + median-pruning study on the synthetic set with `study.constraints: {max_parameters, max_latency_ms}`:
every complete trial times the served (pyfunc) path on 1,000 raw test rows after training (one warm-up call and
five timed calls, tuner.serving.latency). The bench wraps that measurement to record its wall time, and divides it
by the trial's own duration (Optuna's start to complete: build, epochs, evaluation, MLflow, checkpoint). Pruned
trials stop before the end and are not timed; they pay nothing.

    python bench/constraints.py [--rows 100000] [--trials 8] [--epochs 2] [--threads 1] [--max-parameters N]
                                [--max-latency-ms 50] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_json  # noqa: E402


def document(args) -> dict:
    return {
        "study": {"name": f"budget-{args.rows}", "n_trials": args.trials, "promote": False,
                  "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 3},
                  "pruner": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": 1},
                  "constraints": {"max_parameters": args.max_parameters, "max_latency_ms": args.max_latency_ms}},
        "data": {"synthetic": {"rows": args.rows, "seed": 0, "max_cardinality": args.cardinality}},
        "training": {"batch_size": 4096, "max_epochs": args.epochs, "patience": args.epochs, "seed": 0,
                     "device": "cpu", "threads": args.threads},
        "policy_configs": {"scoring_policy": {}},  # every hyperparameter over its default range
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--cardinality", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-parameters", type=int, default=2_000_000)
    parser.add_argument("--max-latency-ms", type=float, default=50.0)
    parser.add_argument("--workdir")
    parser.add_argument("--out")
    args = parser.parse_args()

    from deepfm_tuner.tuner.pipeline import loop
    from deepfm_tuner.tuner.pipeline.tune import tune
    from deepfm_tuner.tuner.spec.study import parse_study
    from deepfm_tuner.tuner.trials.constraints import within_budget

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="deepfm-bench-constraints-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)  # the encoded dataset and the stores land here
    measured: list[tuple[float, float]] = []  # (seconds the measurement took, the latency it measured)
    timed = loop.scoring_latency_ms

    def timing(policy, batch):
        started = time.perf_counter()
        milliseconds = timed(policy, batch)
        measured.append((time.perf_counter() - started, milliseconds))
        return milliseconds

    loop.scoring_latency_ms = timing  # what latency_probe binds for the study
    spec = parse_study(document(args), "bench:constraints", "budget")
    started = time.perf_counter()
    result = tune(spec, storage=f"sqlite:///{workdir}/optuna.db", tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    wall = time.perf_counter() - started
    study = result.handle.study
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]  # timed in this order: one process
    assert len(complete) == len(measured), (len(complete), len(measured))
    rows = []
    for trial, (seconds, milliseconds) in zip(complete, measured):
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
        rows.append({"trial": trial.number, "trial_seconds": duration, "measure_seconds": seconds,
                     "share": seconds / duration, "score_latency_ms": milliseconds,
                     "parameter_count": trial.user_attrs["parameter_count"], "within_budget": within_budget(trial)})
    every = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    study_seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in every)
    best = result.best_trial
    write_json({
        "machine": machine(), "args": vars(args), "workdir": str(workdir), "study_wall_seconds": wall,
        "trials": len(every), "complete": len(complete), "pruned": len(every) - len(complete),
        "measure_seconds_median": statistics.median(r["measure_seconds"] for r in rows),
        "measure_seconds_max": max(r["measure_seconds"] for r in rows),
        "share_of_complete_trial_median": statistics.median(r["share"] for r in rows),
        "share_of_study_trial_time": sum(r["measure_seconds"] for r in rows) / study_seconds,
        "over_budget": sum(not r["within_budget"] for r in rows),
        "best_trial": None if best is None else {"number": best.number, "value": best.value},
        "per_trial": rows,
    }, f"constraints-{args.rows}.json", args.out)


if __name__ == "__main__":
    main()
