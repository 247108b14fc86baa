"""Issue 16: trials train on a sample of the training rows (`data.tune_rows`), the chosen configuration and the V1
baseline are refit on every row (`study.refit`), and the registry holds the refit, compared with the baseline's
refit. A refit killed half-way (kill -9 or Ctrl-C) is redone by the next command, never registered."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from rich.console import Console

from deepfm_tuner.model.errors import UserInputError
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.tuner.cli.show import print_status
from deepfm_tuner.tuner.pipeline.handle import existing_handle
from deepfm_tuner.tuner.pipeline.promotion import promote_study
from deepfm_tuner.tuner.pipeline.refit import chosen_entry, refit_pool
from deepfm_tuner.tuner.pipeline.tune import load_data, tune
from deepfm_tuner.tuner.registry.gate import delong_test
from deepfm_tuner.tuner.spec.study import load_study
from deepfm_tuner.tuner.stores.locations import resolve_stores
from deepfm_tuner.tuner.trials.runs import download_checkpoint

from support import run

SAMPLE = 400
STUDY = {
    "study": {"name": "refit", "n_trials": 3, "sampler": {"type": "random", "seed": 3}, "pruner": "none",
              "promote": True},
    "data": {"synthetic": {"rows": 3000, "seed": 1, "max_cardinality": 200}, "tune_rows": SAMPLE},
    "training": {"batch_size": 256, "max_epochs": 2, "patience": 1, "seed": 0, "device": "cpu", "threads": 1},
    "policy_configs": {"scoring_policy": {
        "embedding_dim": {"choices": [4, 8]}, "deep_hidden_units": [16], "dropout": 0.0,
        "learning_rate": {"low": 1.0e-3, "high": 3.0e-2, "log": True}}},  # the V1 baseline learns slowest
}


def client() -> MlflowClient:
    return MlflowClient(f"sqlite:///{Path('mlruns/mlflow.db').resolve()}")


def runs(role: str, **where) -> list:
    c = client()
    experiment = c.get_experiment_by_name("deepfm-refit").experiment_id
    found = c.search_runs([experiment], filter_string=f"tags.`deepfm.role` = '{role}'")
    return [r for r in found if all(getattr(r.info, k) == v for k, v in where.items())]


def training_data(run) -> tuple[str, int]:
    """(name, rows) of the dataset a run logged as its training data."""
    (found,) = [d.dataset for d in run.inputs.dataset_inputs if {t.value for t in d.tags} == {"training"}]
    return found.name, json.loads(found.profile)["rows"]


def scores(tracking_uri: str, checkpoint: str, frame, folder: Path) -> np.ndarray:
    policy = ScoringPolicy.load(download_checkpoint(tracking_uri, checkpoint, folder))
    return np.asarray(policy.predict(frame), dtype=np.float64).reshape(-1)


@pytest.mark.slow
def test_trials_train_on_the_sample_and_the_registry_holds_the_refit_gated_against_the_baseline_refit(
        in_tmp, study_file):
    path = study_file(STUDY)
    result = run("tune", path)
    assert result.exit_code == 0, result.output
    spec = load_study(path)
    full = load_data(spec)
    rows = len(full.parts["train"])
    assert f"trials train on {SAMPLE:,} of {rows:,} rows (sample seed 42)" in result.output

    # every trial saw the sample: never more than SAMPLE rows an epoch
    trials = runs("trial")
    assert len(trials) == 3
    for trial in trials:
        assert trial.data.metrics["samples_trained"] == SAMPLE * trial.data.metrics["epochs_trained"]

    # the refits: each its own nested run, trained on every row, naming the run it repeats
    handle = existing_handle(spec, resolve_stores(spec=spec), str(path))
    record = handle.study.user_attrs["refit"]
    chosen, base = record["refit"], record["refit_baseline"]
    assert chosen["of_trial"] != base["of_trial"] == 0  # the V1 baseline is not the winner here
    (refit,) = runs("refit")
    (baseline_refit,) = runs("refit_baseline")
    best = handle.study.best_trial
    assert refit.data.tags["deepfm.refit_of_trial"] == str(best.number)
    assert refit.data.tags["deepfm.refit_of_run_id"] == best.user_attrs["mlflow_run_id"]
    assert refit.data.tags["deepfm.refit_rows"] == str(rows)
    assert refit.data.tags["deepfm.refit_samples"] == str(int(refit.data.metrics["samples_trained"]))
    assert refit.data.metrics["samples_trained"] == rows * refit.data.metrics["epochs_trained"]
    assert refit.data.tags["mlflow.parentRunId"] == handle.parent_run_id
    assert baseline_refit.data.tags["deepfm.refit_of_trial"] == "0"
    assert training_data(trials[0]) == ("synth-3000-seed1-card200/train:train-sample-400-seed42", SAMPLE)
    assert training_data(refit) == ("synth-3000-seed1-card200/train:train", rows)  # MLflow's datasets say so too

    # the registry holds the refit, with the sample-trained score beside its own
    version = client().get_model_version("deepfm-refit", "1")
    assert version.run_id == refit.info.run_id == chosen["run_id"]
    tags = version.tags
    assert (tags["refit.of_trial"], tags["refit.rows"], tags["refit.samples"]) == (
        str(best.number), str(rows), refit.data.tags["deepfm.refit_samples"])
    assert tags["score_val_auc"] == f"{refit.data.metrics['score_val_auc']:.6f}"
    assert tags["refit.sample_score_val_auc"] == f"{best.value:.6f}"

    # the baseline comparison is refit against baseline refit, on the same test rows
    frame = full.test_frame()
    labels = frame["label"].to_numpy()
    mine = scores(handle.tracking_uri, chosen["checkpoint"], frame, in_tmp / "a")
    theirs = scores(handle.tracking_uri, base["checkpoint"], frame, in_tmp / "b")
    assert tags["baseline.auc_diff"] == f"{delong_test(labels, mine, theirs).diff:.6f}"

    # status: one line per trial at 80 columns, the refit on its own lines below the table
    console = Console(width=80, record=True)
    print_status(console, handle.study, spec)
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert [line.split()[:2] for line in lines if re.match(r"\d+ complete ", line)] == [
        ["0", "complete"], ["1", "complete"], ["2", "complete"]]
    start = lines.index(f"refit on all {rows:,} training rows (trials: {SAMPLE:,}), score_val_auc:")
    assert lines[start + 1].startswith(f"  chosen   trial {best.number}: {chosen['value']:.4f} (sample-trained "
                                       f"{best.value:.4f}), best epoch")
    assert lines[start + 2].startswith(f"  baseline trial 0: {base['value']:.4f}")
    assert lines[start + 3] == f"  lift of the chosen refit over the baseline's: {chosen['value'] - base['value']:+.4f}"
    assert run("report", path, "--out", "report.html").exit_code == 0
    assert f"<h2>Refit</h2><pre>refit on all {rows:,} training rows" in Path("report.html").read_text()

    # a resume trains nothing again (team mode: the second process finds the refits recorded, under a lock)
    sample = next(Path("data/encoded").glob(f"*/samples/train-{SAMPLE}-seed42/categorical.npy"))
    stamp = sample.stat().st_mtime_ns
    again = run("tune", path, "--no-promote")
    assert again.exit_code == 0, again.output
    assert "refit: training" not in again.output
    assert len(runs("refit")) == 1 and len(runs("refit_baseline")) == 1
    assert sample.stat().st_mtime_ns == stamp  # the same sample, mapped


KILL_AT_FIRST_REFIT_EPOCH = """
import os, signal
from deepfm_tuner.tuner.pipeline.tune import tune
from deepfm_tuner.tuner.spec.study import load_study

def die(task, metrics):  # kill -9, half-way: the refit's first epoch of two has ended, nothing is recorded yet
    if task.role == "refit":
        os.kill(os.getpid(), signal.SIGKILL)

tune(load_study("refit.yaml"), on_refit_epoch=die)
"""


@pytest.mark.slow
def test_a_refit_killed_half_way_is_redone_by_promote_and_never_registered(in_tmp, study_file):
    path = study_file(STUDY)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    killed = subprocess.run([sys.executable, "-c", KILL_AT_FIRST_REFIT_EPOCH], cwd=in_tmp, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    (orphan,) = runs("refit")
    assert orphan.info.status == "RUNNING"
    spec = load_study(path)
    handle = existing_handle(spec, resolve_stores(spec=spec), str(path))
    assert "refit" not in handle.study.user_attrs.get("refit", {})
    with pytest.raises(UserInputError, match="the refit of trial .* has not run; run 'deepfm promote'"):
        promote_study(handle, test_frame=load_data(spec).test_frame())  # never the half-trained refit
    assert not client().search_registered_models()

    result = run("promote", path)
    assert result.exit_code == 0, result.output
    dead = client().get_run(orphan.info.run_id)
    assert dead.info.status == "FAILED" and "process died" in dead.data.tags["deepfm.failure_reason"]
    (redone,) = runs("refit", status="FINISHED")
    assert redone.info.run_id != orphan.info.run_id
    assert client().get_model_version("deepfm-refit", "1").run_id == redone.info.run_id
    assert not [r for role in ("trial", "refit", "refit_baseline", "finalist") for r in runs(role, status="RUNNING")]


@pytest.mark.slow
def test_ctrl_c_during_a_refit_leaves_nothing_running_and_the_next_tune_refits(in_tmp, study_file):
    """With finalists, the refit repeats what promotion would register: the chosen finalist's best retrain (which,
    like the trials, trained on the sample)."""
    path = study_file(STUDY, study__promote=False, study__finalists={"top_k": 1, "seeds": 1})

    def interrupt(task, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(load_study(path), on_refit_epoch=interrupt)
    (killed,) = runs("refit")
    assert killed.info.status == "KILLED" and killed.data.tags["deepfm.failure_reason"].startswith("interrupted")
    assert not [r for role in ("trial", "refit", "refit_baseline") for r in runs(role, status="RUNNING")]
    spec = load_study(path)  # nothing was recorded: the next command refits
    assert "refit" not in existing_handle(spec, resolve_stores(spec=spec), str(path)).study.user_attrs.get("refit", {})

    tune(load_study(path))
    (refit,) = runs("refit", status="FINISHED")
    (finalist,) = runs("finalist")
    assert refit.data.tags["deepfm.refit_of_run_id"] == finalist.info.run_id
    assert finalist.data.metrics["samples_trained"] == SAMPLE * finalist.data.metrics["epochs_trained"]
    assert refit.data.metrics["sample_score_val_auc"] == finalist.data.metrics["score_val_auc"]


@pytest.mark.slow
def test_tune_rows_past_the_split_trains_on_every_row_and_needs_no_refit(in_tmp, study_file):
    path = study_file(STUDY, data__tune_rows=10_000_000)
    result = run("tune", path)
    assert result.exit_code == 0, result.output
    rows = len(load_data(load_study(path)).parts["train"])
    assert f"trials train on all {rows:,} rows (data.tune_rows is not below the split's rows)" in result.output
    assert f"refit: not needed (the trials trained on all {rows:,} rows with its epochs and patience)" in result.output
    assert not runs("refit") and not runs("refit_baseline")
    best = max(runs("trial"), key=lambda r: r.data.metrics.get("score_val_auc", 0))
    version = client().get_model_version("deepfm-refit", "1")
    assert version.run_id == best.info.run_id and not any(k.startswith("refit.") for k in version.tags)


@pytest.mark.slow
def test_local_workers_train_on_one_sample_and_their_coordinator_refits_once(in_tmp, study_file,
                                                                            workers_killed_at_exit):
    """`--workers 2` with data.tune_rows: each worker maps the one sample; the coordinator refits (as it runs the
    finalists), the workers do not."""
    path = study_file(STUDY, study__n_trials=4, study__promote=False)
    tune(load_study(path), workers=2, threads=1)
    trials = runs("trial", status="FINISHED")
    assert len(trials) == 4
    assert not [r for r in trials if r.data.tags["deepfm.worker"].endswith(f":{os.getpid()}")]  # the workers ran them
    for trial in trials:
        assert training_data(trial) == ("synth-3000-seed1-card200/train:train-sample-400-seed42", SAMPLE)
        assert trial.data.metrics["samples_trained"] == SAMPLE * trial.data.metrics["epochs_trained"]
    assert len(list(Path("data/encoded").glob("*/samples/*/categorical.npy"))) == 1  # written once
    assert len(runs("refit")) == 1 and len(runs("refit_baseline")) == 1
    (refit,) = runs("refit")
    assert refit.data.metrics["samples_trained"] == int(refit.data.tags["deepfm.refit_rows"]) * \
        refit.data.metrics["epochs_trained"]


@pytest.mark.slow
def test_the_best_configurations_are_refit_and_the_best_refit_on_the_validation_split_is_registered(
        in_tmp, study_file):
    """study.refit.candidates: a sample's winner need not be the best on every row."""
    path = study_file(STUDY, study__n_trials=4, study__refit={"candidates": 2})
    result = run("tune", path)
    assert result.exit_code == 0, result.output
    spec = load_study(path)
    assert (spec.refit.candidates, load_study(study_file(STUDY, study__refit=True)).refit.candidates) == (2, 1)
    handle = existing_handle(spec, resolve_stores(spec=spec), str(path))
    ranked = sorted((t for t in handle.study.trials if t.number != 0), key=lambda t: -t.value)[:2]
    assert handle.study.trials[0].value < ranked[1].value  # the V1 baseline is not a candidate here
    record = handle.study.user_attrs["refit"]
    assert [e["of_trial"] for e in record["candidates"]] == [t.number for t in ranked]  # best on the sample first

    refits = {r.info.run_id: r for r in runs("refit", status="FINISHED")}
    assert sorted(refits) == sorted(e["run_id"] for e in record["candidates"])
    assert [refits[e["run_id"]].data.tags["deepfm.refit_rank"] for e in record["candidates"]] == ["1", "2"]
    (baseline_refit,) = runs("refit_baseline", status="FINISHED")
    pool = [*(refits[e["run_id"]] for e in record["candidates"]), baseline_refit]  # the baseline's last
    best = max(pool, key=lambda r: r.data.metrics["score_val_auc"])
    assert record["refit"]["run_id"] == best.info.run_id  # the best refit, whichever its rank on the sample
    assert [r.info.run_id for r in pool if r.data.tags.get("deepfm.refit_chosen") == "true"] == [best.info.run_id]
    assert f"'s configuration, the best of 3 on all rows (score_val_auc {record['refit']['value']:.4f})" in \
        result.output

    version = client().get_model_version("deepfm-refit", "1")
    assert version.run_id == best.info.run_id
    assert version.tags["refit.of_trial"] == best.data.tags["deepfm.refit_of_trial"]
    assert (version.tags["refit.candidates"], version.tags["refit.rank"]) == ("3", str(pool.index(best) + 1))
    assert version.tags["trial_number"] == best.data.tags["deepfm.refit_of_trial"]

    console = Console(width=80, record=True)
    print_status(console, handle.study, spec)
    lines = console.export_text().splitlines()
    others = [e for e in record["candidates"] if e["run_id"] != best.info.run_id]
    start = next(i for i, line in enumerate(lines) if line.startswith("refit on all "))
    assert lines[start + 1].startswith(f"  chosen   trial {record['refit']['of_trial']}: ")
    assert [line.split(":")[0] for line in lines[start + 2:start + 2 + len(others)]] == [
        f"  also     trial {e['of_trial']}" for e in others]
    assert lines[start + 2 + len(others)].startswith("  baseline trial 0: ")
    assert not any("earlier choice" in line for line in lines)

    again = run("tune", path, "--no-promote")  # a resume refits nothing
    assert again.exit_code == 0, again.output
    assert "refit: training" not in again.output and "refit (candidate" not in again.output
    assert len(runs("refit")) == 2 and len(runs("refit_baseline")) == 1


def test_the_choice_is_among_the_candidates_refits_and_the_baselines():
    def entry(run: str, state: str = "COMPLETE") -> dict:
        return {"run_id": run, "state": state}

    first, second, base = entry("r1"), entry("r2"), entry("b")
    assert refit_pool([first, second], base) == [first, second, base]  # the baseline's refit last
    assert refit_pool([first, second], None) == [first, second]
    assert refit_pool([first, entry("b")], base) == [first, entry("b")]  # the baseline is a candidate: once
    assert refit_pool([first], entry("b", "FAIL")) == [first]  # a failed baseline refit: not compared, as before
    skipped = entry("t1", "SKIPPED")
    assert refit_pool([skipped], entry("b", "SKIPPED")) == [skipped]  # trials on every row: nothing to choose


def test_the_chosen_refit_is_the_best_validation_score_in_the_metric_direction():
    def entry(rank: int, value: float, state: str = "COMPLETE") -> dict:
        return {"of_trial": rank, "run_id": f"r{rank}", "state": state, "value": value, "sample_value": 0.9}

    first, second = entry(1, 0.70), entry(2, 0.72)
    assert chosen_entry([first, second], "val_auc") is second  # the sample's runner-up refits better
    assert chosen_entry([first, entry(2, 0.70)], "val_auc") is first  # a tie: the better rank on the sample
    assert chosen_entry([first, second], "val_logloss") is first  # logloss: lower is better
    failed = entry(2, 0.0, "FAIL")
    assert chosen_entry([first, failed], "val_auc") is failed  # promotion names it: no choice around a failure
    skipped = {"of_trial": 1, "run_id": "t1", "state": "SKIPPED", "sample_value": 0.75}
    assert chosen_entry([skipped], "val_auc") is skipped  # the trials trained on every row
