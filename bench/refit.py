"""Tune on a sample, refit the winner on every row (issue 16): the same study run two ways on the same synthetic
rows and seeds, (a) `data.tune_rows: N` + `study.refit` and (b) every row, each promoted to its own registered
model. Records the wall time of the trials and of the refits, each champion's test AUC on the same test rows,
DeLong's comparison of the two champions, each refit against the sample-trained run it repeats (more rows
should help), the study process's peak RSS after (a), and an extrapolation to 45M rows from the measured parts.

TPE + sub-epoch median pruning (eval_every 0.25) over the five V1 hyperparameters (bench/tuning.py's `pays`
study), at most --epochs epochs per trial, finalists off. (b) may run only its first --full-trials trials (same
seeds: the same first configurations); its wall time is then extrapolated to --trials linearly. `--knobs steps`
stops every run (trials and refits) by step patience (patience_steps 2) instead of epoch patience 1.

The two halves can run apart on one --workdir (`--part b`, then `--part a`: a long (b) need not hold up work on
(a)); the prepare time recorded is the first, cold one, and the comparison is written when both are there.

    python bench/refit.py [--rows 20000000] [--tune-rows 2000000] [--trials 30] [--full-trials 10] [--epochs 3]
                          [--knobs epochs|steps] [--part a|b|both] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, max_rss_mib, write_json  # noqa: E402
from bench.step_patience import champion_scores, study_version  # noqa: E402
from bench.tuning import pays_document, run_pays_study  # noqa: E402

ROWS_45M = 45_000_000  # Criteo Kaggle's size, for the extrapolation
KNOBS = {"epochs": {}, "steps": {"patience": 0, "patience_steps": 2}}


def trials_seconds(trials) -> float:
    """Wall time of the trial phase (one worker: the trials back to back), from their start and end times."""
    return sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials if t.datetime_complete)


def refit_gain(root: Path, entry: dict, test_frame, labels) -> dict:
    """DeLong's comparison, on the test rows, of a refit (every row) with the run it repeats (trained on the
    sample): does the refit beat the sample-trained model?"""
    import optuna

    from deepfm_tuner.model.policy import ScoringPolicy
    from deepfm_tuner.tuner.registry.gate import delong_test
    from deepfm_tuner.tuner.trials.runs import download_checkpoint

    from deepfm_tuner.model.metrics import classification_metrics

    study = optuna.load_study(study_name="refit_sample", storage=f"sqlite:///{root}/optuna.db")
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == entry["of_trial"])
    checkpoints = [("refit", entry["checkpoint"]), ("sample", trial.user_attrs.get("checkpoint"))]
    scores = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, checkpoint in checkpoints:
            if checkpoint:  # a trial keeps its checkpoint only if it was the best when it ended (or the baseline)
                folder = download_checkpoint(f"sqlite:///{root}/mlflow.db", checkpoint, Path(tmp) / name)
                scores.append(ScoringPolicy.load(folder).predict(test_frame))
    if len(scores) == 1:
        return {"trial": entry["of_trial"], "refit_test_auc": classification_metrics(labels, scores[0])[0],
                "described": "its sample-trained run kept no checkpoint"}
    c = delong_test(labels, *scores)
    return {"trial": entry["of_trial"], "refit_test_auc": c.auc_a, "sample_trained_test_auc": c.auc_b,
            "auc_diff": c.diff, "ci_low": c.ci_low, "ci_high": c.ci_high, "p_value": c.p_value,
            "described": c.describe()}


def _refit_entries(record: dict) -> list[dict]:
    """Each refit trained once (the baseline's may be the chosen one's, a candidate's the chosen one's)."""
    entries = [record.get("refit"), record.get("refit_baseline"), *(record.get("candidates") or [])]
    return list({e["run_id"]: e for e in entries if e}.values())


def extrapolate(prepare: float, a: dict, b: dict, rows: int, tune_rows: int, tune_rows_45m: int) -> dict:
    """Seconds at 45M rows, linear in the rows each part trains on: prepare, the refits and every trial of (b) grow
    with the rows (45M / rows); (a)'s trials with the sample (tune_rows_45m / tune_rows); the rest of (a) (study,
    summary, promotion) as measured."""
    rows_scale, sample_scale = ROWS_45M / rows, tune_rows_45m / tune_rows
    rest = a["wall_seconds"] - a["trials_seconds"] - a["refit_seconds"]
    parts = {"prepare_seconds": prepare * rows_scale, "trials_seconds": a["trials_seconds"] * sample_scale,
             "refit_seconds": a["refit_seconds"] * rows_scale}
    return {**parts, "a_whole_seconds": sum(parts.values()) + rest,
            "b_whole_seconds": prepare * rows_scale + b["wall_seconds_for_all_trials"] * rows_scale}


def _saved(workdir: Path, name: str) -> dict | None:
    path = workdir / f"refit-{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _save(workdir: Path, name: str, value: dict) -> None:
    (workdir / f"refit-{name}.json").write_text(json.dumps(value, indent=2, default=str) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--tune-rows", type=int, default=2_000_000)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--full-trials", type=int, default=None, help="(b)'s trials (default: --trials)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--startup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--subepoch-warmup", type=int, default=2)
    parser.add_argument("--tune-rows-45m", type=int, default=2_000_000, help="tune_rows of the 45M extrapolation")
    parser.add_argument("--knobs", choices=sorted(KNOBS), default="epochs", help="how runs stop early")
    parser.add_argument("--part", choices=("a", "b", "both", "compare", "one"), default="both",
                        help="compare: only the comparison of saved halves; one: a one-trial study on every row "
                             "(the V1 baseline trial + promotion), the peak RSS (a) is held to")
    parser.add_argument("--one-params", default=None, help="with --part one: the configuration to fix, as JSON "
                        "(e.g. the largest the study refits), instead of the V1 defaults")
    parser.add_argument("--workdir", default=None, help="reused: data, stores")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.finalists, args.suffix = None, ""
    full_trials = args.full_trials or args.trials

    from deepfm_tuner.model.data.frames import check_labels
    from deepfm_tuner.model.data.source import DataSpec
    from deepfm_tuner.tuner.registry.gate import delong_test

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="deepfm-bench-refit-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    data_block = {"synthetic": {"rows": args.rows, "seed": 0}, "synthetic_dir": str(workdir / "generated"),
                  "encoded_dir": str(workdir / "encoded")}
    started = time.perf_counter()
    data = DataSpec.from_dict(data_block).prepare(print)
    prepare = _saved(workdir, "prepare") or {"prepare_seconds": time.perf_counter() - started,
                                              "load_average_before": os.getloadavg()}
    _save(workdir, "prepare", prepare)
    train_rows = len(data.parts["train"])
    knobs = KNOBS[args.knobs]

    if args.part in ("a", "both"):  # (a) trials on the sample, the winner and the V1 baseline refit on every row
        document = pays_document("refit_sample", {**data_block, "tune_rows": args.tune_rows}, args, knobs, 0.25)
        a = run_pays_study(document, workdir / "refit_sample", data)
        record = a.pop("refit")
        a.update(trials_seconds=trials_seconds(a.pop("_trials")), peak_rss_mib=max_rss_mib(),
                 refit=record["refit"], refit_baseline=record.get("refit_baseline"),
                 refit_candidates=record.get("candidates"), load_average_after=os.getloadavg())
        a["refit_seconds"] = sum(e.get("wall_seconds", 0) for e in _refit_entries(record))
        _save(workdir, "a", a)
        print(f"(a) {args.tune_rows:,} rows + refit: trials {a['trials_seconds']:.0f} s, refits "
              f"{a['refit_seconds']:.0f} s, whole {a['wall_seconds']:.0f} s; champion test AUC "
              f"{a['champion_test_auc']:.4f}", flush=True)

    if args.part in ("b", "both"):  # (b) every row, its first full_trials trials
        document = pays_document("all_rows", data_block, args, knobs, 0.25)
        document["study"]["n_trials"] = full_trials
        b = run_pays_study(document, workdir / "all_rows", data)
        b.pop("refit")
        b.update(trials_seconds=trials_seconds(b.pop("_trials")), peak_rss_mib=max_rss_mib(),
                 wall_seconds_for_all_trials=b["wall_seconds"] * args.trials / full_trials,
                 load_average_after=os.getloadavg())
        _save(workdir, "b", b)
        print(f"(b) all {train_rows:,} rows, {full_trials} trials: {b['wall_seconds']:.0f} s (for {args.trials}: "
              f"{b['wall_seconds_for_all_trials']:.0f} s); champion test AUC {b['champion_test_auc']:.4f}",
              flush=True)

    if args.part == "one":  # the reference for (a)'s peak RSS: one trial on every row, promoted
        name = "one_trial" if args.one_params is None else "one_trial_fixed"
        document = pays_document(name, data_block, args, knobs, 0.25)
        document["study"]["n_trials"] = 1
        if args.one_params is not None:
            document["policy_configs"]["scoring_policy"] = json.loads(args.one_params)
        one = run_pays_study(document, workdir / name, data)
        one.pop("refit"), one.pop("_trials")
        one.update(peak_rss_mib=max_rss_mib())
        _save(workdir, name.replace("_trial", ""), one)
        print(f"one-trial study on every row: {one['wall_seconds']:.0f} s, peak RSS {one['peak_rss_mib']:,.0f} MiB")
        return

    a, b = _saved(workdir, "a"), _saved(workdir, "b")
    if a is None or b is None:
        print(f"the other half is not there yet: run --part {'a' if a is None else 'b'} --workdir {workdir}")
        return
    prepare_seconds = prepare["prepare_seconds"]
    results: dict = {"benchmark": "refit", "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
                     "args": vars(args), "data": data.summary(), **prepare,
                     "studies": {"a_sample_refit": a, "b_all_rows": b}, "one_trial_study": _saved(workdir, "one")}

    # the two champions, and the refit against the run it repeats, on the same test rows
    test_frame = data.test_frame()
    labels = check_labels(test_frame, data.encoder.schema.label, "test rows")
    champions = {}
    for key, name in (("a_sample_refit", "refit_sample"), ("b_all_rows", "all_rows")):
        study = results["studies"][key]
        study.update(registered_model=f"bench-{name}", tracking_uri=f"sqlite:///{workdir / name}/mlflow.db",
                     version=study_version(workdir / name, f"bench-{name}"))
        champions[key] = champion_scores(study, test_frame)
    versus = delong_test(labels, champions["a_sample_refit"], champions["b_all_rows"])
    results["a_minus_b"] = {"auc_diff": versus.diff, "ci_low": versus.ci_low, "ci_high": versus.ci_high,
                            "p_value": versus.p_value}
    results["refit_minus_sample_trained"] = {
        role: refit_gain(workdir / "refit_sample", entry, test_frame, labels)
        for role, entry in (("chosen", a["refit"]), ("baseline", a["refit_baseline"]))
        if entry and entry["state"] == "COMPLETE"}
    results["refit_candidates_minus_sample_trained"] = [
        refit_gain(workdir / "refit_sample", entry, test_frame, labels)
        for entry in a.get("refit_candidates") or [] if entry["state"] == "COMPLETE"]
    results["wall_ratio_a_over_b"] = a["wall_seconds"] / b["wall_seconds_for_all_trials"]
    results["whole_a_with_prepare_seconds"] = prepare_seconds + a["wall_seconds"]
    results["extrapolated_45m"] = extrapolate(prepare_seconds, a, b, args.rows, args.tune_rows, args.tune_rows_45m)
    gains = "; ".join(f"{role} refit - its sample-trained run {g['described']}"
                      for role, g in results["refit_minus_sample_trained"].items())
    print(f"(a) / (b) wall x{results['wall_ratio_a_over_b']:.2f}; champion AUC a - b {versus.describe()}; {gains}",
          flush=True)
    results["workdir"] = str(workdir)
    write_json(results, "refit.json", args.out)


if __name__ == "__main__":
    main()
