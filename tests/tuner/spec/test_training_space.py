"""Tunable training knobs (embedding_l2, weight_decay, batch_size) and Shaped's spelling of a tunable spec."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
import torch
import yaml
from mlflow.artifacts import download_artifacts

from deepfm_tuner.model.config import TrainConfig, read_policy_yaml
from deepfm_tuner.model.errors import ConfigError
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.tuner.pipeline.tune import tune
from deepfm_tuner.tuner.spec.space import (
    TRAINING_DEFAULTS,
    Choices,
    Range,
    check_params,
    parse_space,
    parse_training,
    suggest_training,
)
from deepfm_tuner.tuner.spec.study import load_study
from deepfm_tuner.tuner.trials.baseline import baseline_params
from deepfm_tuner.tuner.trials.record import trained_config
from deepfm_tuner.tuner.trials.runs import download_checkpoint

from support import ROOT

STUDY = {  # each test names its study
    "study": {"n_trials": 2, "promote": False, "sampler": {"type": "random", "seed": 0}},
    "data": {"synthetic": {"rows": 2000, "seed": 1, "max_cardinality": 200}},
    "training": {"batch_size": 256, "max_epochs": 2, "patience": 2, "seed": 0, "device": "cpu", "threads": 1},
    "policy_configs": {"scoring_policy": {"embedding_dim": 8, "deep_hidden_units": [32], "activation_fn": "relu",
                                          "dropout": 0.0, "learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}}},
}


def test_training_block_splits_fixed_values_from_tuned_knobs():
    fixed, tuned = parse_training({
        "max_epochs": 3, "embedding_l2": {"low": 1e-4, "high": 1.0, "log": True, "zero": True},
        "batch_size": {"choices": [512, 1024]}, "weight_decay": "tune"})
    assert fixed.max_epochs == 3 and fixed.embedding_l2 == 0.0 and fixed.batch_size == TrainConfig().batch_size
    assert tuned == {"training.embedding_l2": Range(1e-4, 1.0, log=True, zero=True),
                     "training.batch_size": Choices((512, 1024)),
                     "training.weight_decay": TRAINING_DEFAULTS["weight_decay"]}


@pytest.mark.parametrize("block, message", [
    ({"max_epochs": {"choices": [1, 2]}}, "training.max_epochs is not tunable"),
    ({"embedding_l2": {"low": -1.0, "high": 1.0}}, "training.embedding_l2: must be >= 0"),
    ({"batch_size": {"choices": [0, 256]}}, "training.batch_size: must be an integer >= 1"),
    ({"embedding_l2": {"low": 1e-4, "high": 1.0, "zero": "yes"}}, "training.embedding_l2.zero must be true or false"),
    ({"embedding_l2": {"type": "tunable_flaot", "min": 0.0, "max": 1.0}}, "did you mean 'tunable_float'"),
    ({"batch_size": {"type": "tunable_int", "min": 256.5, "max": 1024}}, "tunable_int takes integers"),
])
def test_bad_training_specs_are_one_line_errors(block, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        parse_training(block)
    assert "\n" not in str(info.value)


def test_shaped_spelling_means_the_same_range():
    space = parse_space({"learning_rate": {"type": "tunable_float", "min": 1e-4, "max": 1e-2, "log": True},
                         "embedding_dim": {"type": "tunable_int", "min": 8, "max": 32}})
    assert space["learning_rate"] == Range(1e-4, 1e-2, log=True)
    assert space["embedding_dim"] == Range(8, 32, integer=True)
    _, tuned = parse_training({"embedding_l2": {"type": "tunable_float", "min": 0.0, "max": 0.1}})
    assert tuned["training.embedding_l2"] == Range(0.0, 0.1)


def test_zero_is_an_exact_candidate_of_a_log_range():
    _, tuned = parse_training({"embedding_l2": {"low": 1e-4, "high": 1.0, "log": True, "zero": True}})
    base = TrainConfig()
    off = optuna.trial.FixedTrial({"training.embedding_l2": 0.01, "training.embedding_l2.zero": True})
    on = optuna.trial.FixedTrial({"training.embedding_l2": 0.01, "training.embedding_l2.zero": False})
    assert suggest_training(off, tuned, base).embedding_l2 == 0.0
    assert suggest_training(on, tuned, base).embedding_l2 == 0.01


def test_baseline_takes_the_training_defaults_where_the_space_holds_them():
    _, tuned = parse_training({"embedding_l2": {"low": 1e-4, "high": 1.0, "log": True, "zero": True},
                               "batch_size": {"choices": [1024, 4096]}, "weight_decay": {"low": 1e-6, "high": 1e-3}})
    params, notes = baseline_params(parse_space({}), tuned)
    control = suggest_training(optuna.trial.FixedTrial(params), tuned, TrainConfig())
    assert (control.embedding_l2, control.batch_size, control.weight_decay) == (0.0, 4096, 1e-6)
    assert notes == ["training.weight_decay: default 0.0 is outside the search space, baseline uses 1e-06"]


def test_warm_start_keeps_training_params_inside_the_new_space():
    _, tuned = parse_training({"batch_size": {"choices": [1024, 4096]}})
    valid, skipped = check_params({"training.batch_size": 4096, "training.weight_decay": 0.1}, parse_space({}), tuned)
    assert valid == {"training.batch_size": 4096} and skipped == {"training.weight_decay": 0.1}


def _embedding_norm(tracking_uri: str, trial, folder) -> float:
    policy = ScoringPolicy.load(download_checkpoint(tracking_uri, trial.user_attrs["checkpoint"], folder))
    with torch.no_grad():
        return float(policy.model.embedding.weight.pow(2).sum(1).mean())


@pytest.mark.slow
def test_a_tuned_embedding_l2_reaches_the_optimizer_and_the_best_policy_file(in_tmp, study_file):
    tracking = "sqlite:///mlruns/mlflow.db"
    strong = load_study(study_file(STUDY, study__name="strong",
                                   training__embedding_l2={"low": 20.0, "high": 50.0, "log": True},
                                   training__batch_size={"choices": [128, 256]}))
    plain = load_study(study_file(STUDY, study__name="plain", study__n_trials=1))
    strong_result = tune(strong, tracking_uri=tracking)
    plain_result = tune(plain, tracking_uri=tracking)

    trials = [t for t in strong_result.handle.study.get_trials() if t.state.name == "COMPLETE"]
    assert len(trials) == 2
    for trial in trials:  # what each trial trained is what Optuna suggested, in Optuna, MLflow and the record
        _, control = trained_config(trial, strong)
        assert control.embedding_l2 == trial.params["training.embedding_l2"] >= 20.0
        assert control.batch_size == trial.params["training.batch_size"]
        run = strong_result.handle.tracker.client.get_run(trial.user_attrs["mlflow_run_id"])
        assert float(run.data.params["training.embedding_l2"]) == pytest.approx(control.embedding_l2)
    # the penalty reached the optimizer: embeddings trained under it are far smaller
    strong_norm = _embedding_norm(tracking, strong_result.best_trial, in_tmp / "a")
    plain_norm = _embedding_norm(tracking, plain_result.best_trial, in_tmp / "b")
    assert strong_norm < plain_norm / 3

    # the best trial's written file holds its V1 config and, beside it, the training values it was trained with
    parent = strong_result.handle.parent_run_id
    local = download_artifacts(run_id=parent, artifact_path="best_policy.yaml", dst_path=str(in_tmp / "c"),
                               tracking_uri=tracking)
    policy, control = read_policy_yaml(local)
    assert (policy, control) == trained_config(strong_result.best_trial, strong)
    parent_tags = strong_result.handle.tracker.client.get_run(parent).data.tags
    assert float(parent_tags["best.training.embedding_l2"]) == pytest.approx(control.embedding_l2)


@pytest.mark.slow
def test_train_reads_column_roles_from_a_schema_file(in_tmp):
    """An integer column (position: 1..3) is numeric when inferred; --schema makes it categorical."""
    (in_tmp / "schema.yaml").write_text(yaml.safe_dump(
        {"label": "click", "categorical": ["item_id", "position"], "ignore": ["", "timestamp", "propensity_score"]}))
    (in_tmp / "policy.yaml").write_text(yaml.safe_dump({"policy_configs": {"scoring_policy": {
        "policy_type": "deepfm", "embedding_dim": 4, "deep_hidden_units": [8], "activation_fn": "relu",
        "dropout": 0.0, "learning_rate": 0.01}}, "training": {"max_epochs": 1, "device": "cpu", "threads": 1}}))
    data = str(ROOT / "data/open-bandit/men.csv")
    command = [sys.executable, "-m", "deepfm_tuner.tuner.cli", "train", "--policy", "policy.yaml", "--data", data]
    done = subprocess.run(command + ["--schema", "schema.yaml", "--out", "out"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    schema = json.loads((in_tmp / "out/encoder.json").read_text())["schema"]
    assert "position" in schema["categorical"] and "timestamp" not in schema["categorical"] + schema["numeric"]

    (in_tmp / "bad.yaml").write_text("labl: click\n")
    bad = subprocess.run(command + ["--schema", "bad.yaml", "--out", "out2"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "did you mean 'label'" in bad.stderr
    assert not (in_tmp / "out2").exists()


def test_trial_lines_show_the_strength_that_was_applied():
    from deepfm_tuner.tuner.spec.space import shown_params

    assert shown_params({"training.embedding_l2": 0.01, "training.embedding_l2.zero": True, "dropout": 0.1}) == {
        "training.embedding_l2": 0, "dropout": 0.1}
    assert shown_params({"training.embedding_l2": 0.01, "training.embedding_l2.zero": False}) == {
        "training.embedding_l2": 0.01}
