"""The tree-model reference (issue 17): LightGBM on a study's own split against its promoted DeepFM champion.

1. The 1M-row synthetic set (Criteo-format, seed 0, as `deepfm data synth --rows 1000000`; Bayes-optimal test AUC
   known): a small TPE + median-pruning study over the default space with `study.reference: lightgbm`, promoted.
2. The shipped real sample (Open Bandit `men.csv`, 10,000 rows, 46 clicks; the time-ordered split of
   `bench/tuning.py pays`): the same, smaller.

For each: the champion's and LightGBM's test AUCs and DeLong's comparison (the version's `reference.*` tags), the
printed line, LightGBM's training time (feature matrix, binning and boosting) and rounds beside a trial's mean
time (Optuna's duration of a complete trial, and its training alone). On the synthetic set also the encoding
choice: LightGBM with the categorical codes as numbers (the default) vs as LightGBM categoricals
(`params: {categorical_feature: C1,...,C26}`), same rows, settings and threads: validation AUC, rounds, seconds;
and, because a shared machine's load moves timings several-fold within minutes, the two costs side by side under
the same load: the best trial's training (its configuration, the study's epochs) and the reference's training,
alternated `--timing-repeats` times.

    python bench/reference.py [--rows 1000000] [--trials 6] [--epochs 2] [--threads 2] [--workdir DIR]
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

from bench.common import ROOT, machine, write_json  # noqa: E402


def document(name: str, data: dict, args, *, trials: int, epochs: int, batch_size: int) -> dict:
    return {
        "study": {"name": name, "n_trials": trials, "registered_model": f"bench-{name}", "reference": "lightgbm",
                  "sampler": {"type": "tpe", "seed": args.seed, "n_startup_trials": 3},
                  "pruner": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": 1}},
        "data": data,
        "training": {"batch_size": batch_size, "max_epochs": epochs, "patience": 1, "seed": 0, "device": "cpu",
                     "threads": args.threads},
        "policy_configs": {"scoring_policy": {}},  # every hyperparameter over its default range
    }


def run_study(doc: dict, root: Path, data) -> dict:
    from deepfm_tuner.tuner.pipeline.tune import tune
    from deepfm_tuner.tuner.spec.study import parse_study

    spec = parse_study(doc, f"bench:{doc['study']['name']}", doc["study"]["name"])
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = tune(spec, storage=f"sqlite:///{root}/optuna.db", tracking_uri=f"sqlite:///{root}/mlflow.db", data=data,
                  log=lambda line: print(line, flush=True))
    wall = time.perf_counter() - started
    trials = result.handle.study.get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    promotion, reference = result.promotion, result.reference
    trial_seconds = statistics.fmean(t.duration.total_seconds() for t in complete)
    training_seconds = statistics.fmean(t.user_attrs["training"]["wall_seconds"] for t in complete)
    return result, {
        "trials": len(trials), "complete": len(complete), "pruned": sum(t.state.name == "PRUNED" for t in trials),
        "study_wall_seconds": wall, "best_trial": result.best_trial.number, "best_val_auc": result.best_trial.value,
        "champion_version": promotion.version, "champion_test_auc": promotion.test_auc,
        "reference_val_auc": reference.val_auc, "reference_test_auc": reference.test_auc,
        "reference_rounds": reference.best_iteration, "reference_train_seconds": reference.train_seconds,
        "trial_mean_seconds": trial_seconds, "trial_mean_training_seconds": training_seconds,
        "reference_seconds_per_trial_seconds": reference.train_seconds / trial_seconds,
        "comparison": promotion.reference, "reference_message": promotion.reference_message,
        "baseline_message": promotion.baseline_message,
    }


def encodings(data, reference, threads: int) -> dict:
    """The default (codes as numbers: the study's own reference) against LightGBM's categorical splits on the same
    encoded rows, settings and threads."""
    from deepfm_tuner.model.metrics import classification_metrics
    from deepfm_tuner.tuner.spec.study import ReferenceSpec
    from deepfm_tuner.tuner.trials.reference import feature_matrix, lightgbm_params, train_lightgbm

    val = data.parts["val"]
    params = {"categorical_feature": ",".join(data.encoder.schema.categorical)}
    booster, seconds = train_lightgbm(data, lightgbm_params(ReferenceSpec("lightgbm", params), 0, threads))
    best = booster.best_iteration or booster.current_iteration()
    auc = classification_metrics(val.labels, booster.predict(feature_matrix(data.encoder, val.features),
                                                             num_iteration=best))[0]
    print(f"encoding lightgbm_categoricals: val AUC {auc:.4f}, {best} rounds, {seconds:.0f} s", flush=True)
    return {"codes_as_numbers": {"val_auc": reference.val_auc, "rounds": reference.best_iteration,
                                 "seconds": reference.train_seconds},
            "lightgbm_categoricals": {"val_auc": auc, "rounds": best, "seconds": seconds}}


def timing(data, result, threads: int, repeats: int) -> dict:
    """A trial's training (the best trial's configuration) and the reference's, alternated under the same load."""
    from deepfm_tuner.model.train import train
    from deepfm_tuner.tuner.trials.record import trained_config
    from deepfm_tuner.tuner.trials.reference import lightgbm_params, train_lightgbm

    spec = result.handle.spec
    policy, control = trained_config(result.best_trial, spec)
    control = (control or spec.training).replace(threads=threads)
    rows: list[dict] = []
    for _ in range(repeats):
        started = time.perf_counter()
        train(data, policy, control, select=spec.metric)
        rows.append({"job": "deepfm_trial", "seconds": time.perf_counter() - started, "load": os.getloadavg()[0]})
        booster, seconds = train_lightgbm(data, lightgbm_params(spec.reference, control.seed, threads))
        rows.append({"job": "lightgbm", "seconds": seconds, "rounds": booster.best_iteration or
                     booster.current_iteration(), "load": os.getloadavg()[0]})
        print(f"timing: {rows[-2]} {rows[-1]}", flush=True)
    median = {job: statistics.median(r["seconds"] for r in rows if r["job"] == job)
              for job in ("deepfm_trial", "lightgbm")}
    return {"threads": threads, "runs": rows, "median_seconds": median,
            "lightgbm_per_trial": median["lightgbm"] / median["deepfm_trial"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--real-trials", type=int, default=6)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timing-repeats", type=int, default=2)
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--workdir", default=None, help="reused: generated data, encoded datasets")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from deepfm_tuner.model.data.source import DataSpec
    from deepfm_tuner.model.data.synth import read_truth

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="deepfm-bench-reference-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)  # stores and data stay out of the checkout
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict = {"benchmark": "reference", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "machine": machine(), "load_average_before": os.getloadavg(), "args": vars(args)}
    if not args.skip_synthetic:
        block = {"synthetic": {"rows": args.rows, "seed": 0}, "synthetic_dir": str(workdir / "generated"),
                 "encoded_dir": str(workdir / "encoded")}
        data = DataSpec.from_dict(block).prepare(print)
        truth = read_truth(next(p for p in (workdir / "generated").iterdir() if p.is_dir()))
        doc = document(f"synthetic-{stamp}", block, args, trials=args.trials, epochs=args.epochs, batch_size=4096)
        result, measured = run_study(doc, workdir / doc["study"]["name"], data)
        results["synthetic"] = {"data": data.summary(), "bayes_test_auc": truth["test_bayes_auc"], **measured}
        print(measured["reference_message"], flush=True)
        results["synthetic"]["encodings"] = encodings(data, result.reference, args.threads)
        if args.timing_repeats:
            results["synthetic"]["timing"] = timing(data, result, args.threads, args.timing_repeats)
    real = {"train": str(ROOT / "data/open-bandit/men.csv"), "order_by": "timestamp", "val_fraction": 0.2,
            "test_fraction": 0.3, "encoded_dir": str(workdir / "encoded"),
            "schema": {"label": "click", "categorical": ["item_id", "position"],
                       "ignore": ["", "timestamp", "propensity_score"]}}
    data = DataSpec.from_dict(real).prepare(print)
    doc = document(f"open_bandit-{stamp}", real, args, trials=args.real_trials, epochs=5, batch_size=256)
    results["open_bandit_time_ordered"] = {"data": data.summary(),
                                           **run_study(doc, workdir / doc["study"]["name"], data)[1]}
    print(results["open_bandit_time_ordered"]["reference_message"], flush=True)
    results["load_average_after"] = os.getloadavg()
    results["workdir"] = str(workdir)
    write_json(results, "reference.json", args.out)


if __name__ == "__main__":
    main()
