"""Tuning benchmarks (issue: tuning studies).

1. Platform overhead per trial: Optuna's trial duration minus the training loop's own time (model build, epochs,
   evaluation), i.e. what the platform adds: trial bookkeeping in the RDB, MLflow run creation, params, per-epoch
   metrics, the summary, the checkpoint of a new best trial.
2. Search efficiency: a seeded TPE + median-pruning study vs a 30-trial random search (no pruning), same space,
   data, seeds and epoch budget per trial. We count training epochs until each reaches the random search's best
   validation AUC.

    python bench/tuning.py [--rows 50000] [--trials 30] [--epochs 6]

3. Tuning that pays (`python bench/tuning.py pays`, issue 10): on the 1M-row synthetic set (Bayes-optimal test
   AUC known), three 30-trial TPE + median-pruning studies, each promoted (DeLong against the V1 baseline trial):
     five         the five V1 hyperparameters, sub-epoch pruning (training.eval_every 0.25)
     knobs        the five + embedding_l2, weight_decay, batch_size at their default ranges, sub-epoch pruning
     knobs_epoch  as knobs, with epoch-granular pruning (no eval_every)
   Records each champion's test AUC, its gap to the Bayes AUC, its DeLong comparison with the baseline, and the
   training samples each study processed until it first reached knobs_epoch's best validation AUC. Then a
   time-ordered split of the shipped real sample (Open Bandit, 10,000 rows): a small study with the new knobs,
   promoted; the gate's comparison with the baseline and the printed message are recorded.

    python bench/tuning.py pays [--rows 1000000] [--trials 30] [--epochs 3] [--workdir DIR]
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

from bench.common import ROOT, machine, write_json  # noqa: E402


def make_spec(name, sampler, pruner, args):
    from deepfm_tuner.model.config import TrainConfig
    from deepfm_tuner.model.data.source import DataSpec
    from deepfm_tuner.tuner.spec.space import parse_space
    from deepfm_tuner.tuner.spec.study import PrunerSpec, SamplerSpec, StudySpec

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
    from deepfm_tuner.tuner.pipeline.tune import tune

    started = time.perf_counter()
    result = tune(spec, storage=f"sqlite:///{root}/optuna.db", tracking_uri=f"sqlite:///{root}/mlflow.db",
                  data=data)
    wall = time.perf_counter() - started
    trials = [t for t in result.handle.study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]
    return result, trials, wall


PAYS_VARIANTS = {  # name -> (tuned training knobs, eval_every)
    "five": ({}, 0.25),
    "knobs": ({"embedding_l2": "tune", "weight_decay": "tune", "batch_size": "tune"}, 0.25),
    "knobs_epoch": ({"embedding_l2": "tune", "weight_decay": "tune", "batch_size": "tune"}, None),
}


def pays_document(name: str, data: dict, args, knobs: dict, eval_every: float | None) -> dict:
    training = {"batch_size": 4096, "max_epochs": args.epochs, "patience": 1, "seed": 0, "device": "cpu",
                "threads": args.threads, **knobs}
    if eval_every:
        training["eval_every"] = eval_every
    finalists = {}
    if args.finalists:  # "3x3": re-train the 3 best configurations with 3 more seeds each (resumes a finished study)
        top_k, seeds = (int(v) for v in args.finalists.split("x"))
        finalists = {"finalists": {"top_k": top_k, "seeds": seeds}}
    return {
        "study": {"name": name, "n_trials": args.trials, "metric": "val_auc", "registered_model": f"bench-{name}",
                  "sampler": {"type": "tpe", "seed": args.seed, "n_startup_trials": args.startup},
                  # the median rule may stop a trial from report subepoch_warmup (sub-epoch; 2: at 0.75 epoch)
                  # or from its report after epoch 1 + epoch_warmup (epoch-granular)
                  "pruner": {"type": "median", "n_startup_trials": 5,
                             "n_warmup_steps": args.subepoch_warmup if eval_every else args.epoch_warmup},
                  **finalists},
        "data": data, "training": training, "policy_configs": {"scoring_policy": {}},
    }


def samples_until(trials, target: float) -> int | None:
    """Training samples the study processed, in trial order, until a complete trial first scored >= target."""
    spent = 0
    for trial in sorted(trials, key=lambda t: t.number):
        spent += trial.user_attrs.get("training", {}).get("samples", 0)
        if trial.state.name == "COMPLETE" and trial.value is not None and trial.value >= target - 1e-12:
            return spent
    return None


def run_pays_study(document: dict, root: Path, data) -> dict:
    from deepfm_tuner.tuner.pipeline.tune import tune
    from deepfm_tuner.tuner.spec.study import parse_study

    spec = parse_study(document, f"bench:{document['study']['name']}", document["study"]["name"])
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = tune(spec, storage=f"sqlite:///{root}/optuna.db", tracking_uri=f"sqlite:///{root}/mlflow.db", data=data)
    wall = time.perf_counter() - started
    trials = [t for t in result.handle.study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]
    promotion = result.promotion
    best = result.best_trial
    return {
        "trials": len(trials), "pruned": sum(t.state.name == "PRUNED" for t in trials), "wall_seconds": wall,
        "samples": sum(t.user_attrs.get("training", {}).get("samples", 0) for t in trials),
        "best_trial": best.number, "best_val_auc": best.value, "best_params": best.params,
        "champion_test_auc": promotion.test_auc, "baseline_comparison": promotion.baseline,
        "finalists": {k: v for k, v in result.handle.study.user_attrs.get("finalists", {}).items()
                      if k in ("results", "chosen")},
        "baseline_message": promotion.baseline_message, "promotion_reason": promotion.reason,
        "refit": result.handle.study.user_attrs.get("refit", {}),  # study.refit: the refits' record
        "_trials": trials,
    }


def pays(args) -> None:
    from deepfm_tuner.model.data.source import DataSpec
    from deepfm_tuner.model.data.synth import read_truth

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="deepfm-bench-pays-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    data_block = {"synthetic": {"rows": args.rows, "seed": 0}, "synthetic_dir": str(workdir / "generated"),
                  "encoded_dir": str(workdir / "encoded")}
    data = DataSpec.from_dict(data_block).prepare(print)
    truth = read_truth(next(p for p in (workdir / "generated").iterdir() if p.is_dir()))
    bayes = truth["test_bayes_auc"]
    results: dict = {"benchmark": "tuning_pays", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
                     "args": vars(args), "data": data.summary(), "bayes_test_auc": bayes, "studies": {}}
    studies = {}
    for name, (knobs, eval_every) in PAYS_VARIANTS.items():
        if args.only and name not in args.only.split(","):
            continue
        document = pays_document(name + args.suffix, data_block, args, knobs, eval_every)
        studies[name] = run_pays_study(document, workdir / (name + args.suffix), data)
        studies[name]["gap_to_bayes"] = bayes - studies[name]["champion_test_auc"]
        print(f"{name}: champion test AUC {studies[name]['champion_test_auc']:.4f} (Bayes {bayes:.4f}, gap "
              f"{studies[name]['gap_to_bayes']:.4f}); {studies[name]['baseline_message']}", flush=True)
    if "knobs_epoch" in studies:
        target = studies["knobs_epoch"]["best_val_auc"]
        for name, study in studies.items():
            study["samples_to_epoch_study_best"] = samples_until(study["_trials"], target)
        reference = studies["knobs_epoch"]["samples_to_epoch_study_best"]
        if "knobs" in studies and studies["knobs"]["samples_to_epoch_study_best"] is not None and reference:
            results["subepoch_samples_ratio"] = studies["knobs"]["samples_to_epoch_study_best"] / reference
    for study in studies.values():
        study.pop("_trials")
    results["studies"] = studies

    results["workdir"] = str(workdir)
    if args.skip_real:
        return write_json(results, "tuning_pays.json", args.out)
    # the shipped real sample, split by time: the gate must hold whatever tuning finds
    real_block = {"train": str(ROOT / "data/open-bandit/men.csv"), "order_by": "timestamp", "val_fraction": 0.2,
                  "test_fraction": 0.3, "encoded_dir": str(workdir / "encoded"),
                  "schema": {"label": "click", "categorical": ["item_id", "position"],
                             "ignore": ["", "timestamp", "propensity_score"]}}
    real_args = argparse.Namespace(**{**vars(args), "trials": args.real_trials, "epochs": 5})
    document = pays_document("open_bandit", real_block, real_args, PAYS_VARIANTS["knobs"][0], 0.25)
    document["training"].update(batch_size=256, patience=2)
    real = run_pays_study(document, workdir / "open_bandit", DataSpec.from_dict(real_block).prepare(print))
    real.pop("_trials")
    results["open_bandit_time_ordered"] = real
    print(f"open_bandit: {real['promotion_reason']}; {real['baseline_message']}", flush=True)
    results["workdir"] = str(workdir)
    write_json(results, "tuning_pays.json", args.out)


def _parser(rows: int, epochs: int, startup: int) -> argparse.ArgumentParser:
    """The options both modes share; each sets its own defaults for rows, epochs and start-up trials."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--startup", type=int, default=startup)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    return parser


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "pays":
        parser = _parser(rows=1_000_000, epochs=3, startup=8)
        parser.add_argument("mode")
        parser.add_argument("--real-trials", type=int, default=15)
        parser.add_argument("--epoch-warmup", type=int, default=1,
                            help="n_warmup_steps of the epoch-granular study (1, the project default: pruning from "
                                 "the 2nd epoch's report; 0: from the 1st)")
        parser.add_argument("--subepoch-warmup", type=int, default=2,
                            help="n_warmup_steps of the sub-epoch studies, in reports (2: pruning from 0.75 epoch)")
        parser.add_argument("--finalists", default=None, help="TOPxSEEDS, e.g. 3x3: study.finalists for every study")
        parser.add_argument("--suffix", default="", help="appended to the study names (a second run in one workdir)")
        parser.add_argument("--skip-real", action="store_true", help="skip the real-sample study")
        parser.add_argument("--only", default=None, help="comma-separated variants (five,knobs,knobs_epoch)")
        parser.add_argument("--workdir", default=None, help="reused: data, stores")
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
        return pays(parser.parse_args())
    parser = _parser(rows=50_000, epochs=6, startup=5)
    parser.add_argument("--cardinality", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()

    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from deepfm_tuner.tuner.pipeline.tune import load_data

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
