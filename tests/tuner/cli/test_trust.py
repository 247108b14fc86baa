"""Issue #11 "Trustworthy results": bad input fails fast with one line (exit 2), and numbers mean what they say."""

from __future__ import annotations

import datetime
import logging
import time

import optuna
import pytest
import torch

from deepfm_tuner.model.errors import ConfigError
from deepfm_tuner.model.train import train
from deepfm_tuner.tuner.spec.study import load_study

from conftest import TINY_POLICY, TINY_TRAINING
from support import POLICY, assert_one_line_error, run

STUDY = {
    "study": {"name": "t", "n_trials": 1, "pruner": "none"},
    "data": {"synthetic": {"rows": 600}},
    "training": {"batch_size": 256, "max_epochs": 1, "device": "cpu", "threads": 1},
    "policy_configs": {"scoring_policy": {"embedding_dim": 4, "deep_hidden_units": [8], "activation_fn": "relu",
                                          "dropout": 0.0, "learning_rate": 0.01}},
}


# -- 7: duplicate YAML keys --------------------------------------------------------------------------
def test_duplicate_yaml_key_is_one_line_naming_the_key_and_line(in_tmp):
    (in_tmp / "policy.yaml").write_text(POLICY.replace("    dropout: 0.0\n", "    dropout: 0.0\n    dropout: 0.3\n"))
    assert_one_line_error(run("train", "--policy", "policy.yaml", "--synthetic", 500),
                          "policy.yaml", "duplicate key 'dropout' at line 8", "first at line 7")


def test_duplicate_key_in_a_study_file_is_refused(study_file):
    path = study_file(STUDY, "s.yaml", sort_keys=False)  # in the file's order: n_trials on line 3
    path.write_text(path.read_text().replace("  n_trials: 1\n", "  n_trials: 1\n  n_trials: 50\n"))
    with pytest.raises(ConfigError, match="duplicate key 'n_trials' at line 4"):
        load_study(path)


# -- 8: absurd model sizes (the estimate and the config's limits: tests/model/) -----------------------
HUGE = POLICY.replace("embedding_dim: 4", "embedding_dim: 1024").replace("[16]", "[65536, 65536, 65536, 65536]")


def test_train_refuses_a_model_too_large_for_memory_before_allocating(in_tmp):
    (in_tmp / "policy.yaml").write_text(HUGE)
    started = time.monotonic()
    result = run("train", "--policy", "policy.yaml", "--synthetic", 500)
    assert_one_line_error(result, "parameters and needs about", "GB to train", "use smaller deep_hidden_units")
    assert time.monotonic() - started < 30


def test_a_study_trial_too_large_fails_with_the_reason_and_the_study_ends(in_tmp, caplog, study_file):
    from deepfm_tuner.tuner.pipeline.tune import tune

    too_large = {**STUDY["policy_configs"]["scoring_policy"], "embedding_dim": 1024, "deep_hidden_units": [65536] * 4}
    study_file(STUDY, "s.yaml", policy_configs__scoring_policy=too_large)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="optuna"):
        result = tune(load_study(in_tmp / "s.yaml"), promote=False)
    assert time.monotonic() - started < 60
    assert result.best_trial is None and result.counts == {"FAIL": 5}  # five in a row: the worker stops
    failures = [r for r in caplog.records if "failed with parameters" in r.getMessage()]
    assert failures and "GB to train" in failures[0].getMessage() and failures[0].exc_info is None
    assert not any(r.getMessage().endswith("failed with value None.") for r in caplog.records)


# -- 9: registered_model checked with MLflow's rules when the study is read (the rule: tests/tuner/spec/)
@pytest.mark.parametrize("name", ["team/ctr", "ctr:v1", ""])
def test_invalid_registered_model_name_fails_before_anything_runs(in_tmp, name, study_file):
    study_file(STUDY, "s.yaml", sort_keys=False, study__registered_model=name)
    assert_one_line_error(run("tune", "s.yaml"), "study.registered_model", "refused by MLflow", "'deepfm-ctr'")
    assert not (in_tmp / "mlruns").exists()


# -- 18: device, skipped trials (patience: tests/model/test_train.py) --------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_cuda_device_is_one_line(in_tmp):
    (in_tmp / "policy.yaml").write_text(POLICY)
    assert_one_line_error(run("train", "--policy", "policy.yaml", "--synthetic", 500, "--device", "cuda"),
                          "no CUDA device is available", "use 'auto' or 'cpu'")


def _study_with_a_skipped_trial(storage=None) -> optuna.Study:
    from deepfm_tuner.tuner.trials.names import ATTR_SKIPPED

    study = optuna.create_study(storage=storage, study_name="t", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.7))
    skipped = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={ATTR_SKIPPED: "total reached"})
    study.add_trial(skipped)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    return study


def test_skipped_trials_are_counted_as_skipped_not_failed():
    from deepfm_tuner.tuner.trials.record import trial_counts

    assert trial_counts(_study_with_a_skipped_trial()) == {"COMPLETE": 1, "SKIPPED": 1, "FAIL": 1}


def test_status_shows_skipped_trials(in_tmp, study_file):
    from deepfm_tuner.tuner.stores.locations import resolve_stores
    from deepfm_tuner.tuner.stores.optuna_storage import resolve_storage

    study_file(STUDY, "t.yaml", sort_keys=False)
    _study_with_a_skipped_trial(resolve_storage(resolve_stores().storage_url))
    result = run("status", "t.yaml")
    assert result.exit_code == 0, result.output
    assert "1 complete, 1 fail, 1 skipped" in result.output
    assert " skipped " in result.output.split("\n1 complete")[0]  # the table row


# -- 19: epochs are 1-based wherever people read them ---------------------------------------------------
def test_train_prints_one_based_epochs(in_tmp):
    (in_tmp / "policy.yaml").write_text(POLICY)
    result = run("train", "--policy", "policy.yaml", "--synthetic", 600, "--epochs", 2, "--out", "p")
    assert result.exit_code == 0, result.output
    assert "epoch 1:" in result.output and "epoch 2:" in result.output and "epoch 0" not in result.output
    assert "reached max_epochs=2; best epoch 1:" in result.output or "best epoch 2:" in result.output


def test_callback_stop_reason_and_pruned_trial_lines_are_one_based(tiny_prepared):
    from rich.console import Console

    from deepfm_tuner.tuner.cli.progress import TrialProgress

    result = train(tiny_prepared, TINY_POLICY, TINY_TRAINING, on_epoch=lambda m: True)
    assert result.stop_reason == "stopped by callback after epoch 1"
    console = Console(record=True, width=200)
    progress = TrialProgress(console, 3, 3, "val_auc", "maximize")
    now = datetime.datetime.now()
    pruned = optuna.trial.FrozenTrial(number=4, state=optuna.trial.TrialState.PRUNED, value=None, values=None,
                                      datetime_start=now, datetime_complete=now, params={}, distributions={},
                                      user_attrs={}, system_attrs={}, intermediate_values={0: 0.61}, trial_id=4)
    progress.on_trial(None, pruned)
    assert "score_val_auc 0.6100, pruned at epoch 1" in console.export_text()


