"""Warm start: an earlier study's best configurations are queued once when a new study is created."""

from __future__ import annotations

import optuna
import pytest
from mlflow.tracking import MlflowClient

from deepfm_tuner.model.errors import ConfigError
from deepfm_tuner.tuner.pipeline.handle import init_study
from deepfm_tuner.tuner.spec.study import load_study
from deepfm_tuner.tuner.stores.optuna_storage import open_storage, resolve_storage

OLD_SPACE = {
    "embedding_dim": optuna.distributions.CategoricalDistribution([8, 16, 32]),
    "deep_hidden_units": optuna.distributions.CategoricalDistribution(["64-32", "128-64-32"]),
    "learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
}
OLD_TRIALS = [  # (val_auc, params): best first is #2, then #0, #3, #1
    (0.71, {"embedding_dim": 16, "deep_hidden_units": "64-32", "learning_rate": 0.002}),
    (0.60, {"embedding_dim": 8, "deep_hidden_units": "128-64-32", "learning_rate": 0.0001}),
    (0.74, {"embedding_dim": 32, "deep_hidden_units": "128-64-32", "learning_rate": 0.005}),
    (0.65, {"embedding_dim": 16, "deep_hidden_units": "64-32", "learning_rate": 0.0003}),
]


def old_study(storage_url: str, name: str = "old") -> None:
    study = optuna.create_study(study_name=name, storage=open_storage(resolve_storage(storage_url)),
                                direction="maximize")
    for value, params in OLD_TRIALS:
        study.add_trial(optuna.trial.create_trial(value=value, params=params, distributions=OLD_SPACE))


NEW_STUDY = {  # each test sets its study.warm_start
    "study": {"name": "new", "n_trials": 8, "promote": False},
    "data": {"synthetic": {"rows": 1500, "seed": 1, "max_cardinality": 100}},
    "training": {"batch_size": 256, "max_epochs": 1, "seed": 0, "device": "cpu", "threads": 1},
    "policy_configs": {"scoring_policy": {  # learning rate narrowed: 0.0003 and 0.0001 fall outside
        "embedding_dim": {"choices": [8, 16, 32]}, "deep_hidden_units": {"choices": [[64, 32], [128, 64, 32]]},
        "activation_fn": "relu", "dropout": 0.1, "learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}}},
}


def queued(study):
    return [t for t in study.get_trials() if t.state == optuna.trial.TrialState.WAITING]


def test_top_k_of_the_earlier_study_are_queued_after_the_baseline(in_tmp, study_file):
    old_study("sqlite:///mlruns/optuna.db")
    handle = init_study(load_study(study_file(NEW_STUDY, study__warm_start={"from": "old", "top_k": 3})))
    waiting = queued(handle.study)
    assert waiting[0].user_attrs.get("baseline") is True
    warm = waiting[1:]
    assert [t.user_attrs["warm_start_from"] for t in warm] == ["old#2", "old#0", "old#3"]
    params = [t.system_attrs["fixed_params"] for t in warm]
    assert params[0] == OLD_TRIALS[2][1] and params[1] == OLD_TRIALS[0][1]
    assert params[2] == {"embedding_dim": 16, "deep_hidden_units": "64-32"}  # its learning rate is out of range
    assert any("trial 3 of 'old': skipped learning_rate=0.0003" in n for n in handle.notes)
    assert "warm start: queued 3 configurations of study 'old'" in handle.notes
    tags = handle.tracker.client.get_run(handle.parent_run_id).data.tags
    assert (tags["deepfm.warm_start.from"], tags["deepfm.warm_start.queued"]) == ("old", "3")
    resumed = study_file(NEW_STUDY, study__warm_start={"from": "old", "top_k": 3})
    again = init_study(load_study(resumed))  # resume: nothing more is queued
    assert len(again.study.get_trials()) == 4


def test_source_in_another_storage(in_tmp, study_file):
    old_study("sqlite:///elsewhere/old.db", name="older")
    warm_start = {"from": "older", "top_k": 1, "storage": "sqlite:///elsewhere/old.db"}
    handle = init_study(load_study(study_file(NEW_STUDY, study__warm_start=warm_start)))
    assert [t.user_attrs.get("warm_start_from") for t in queued(handle.study)] == [None, "older#2"]


def test_a_missing_source_study_fails_before_anything_is_created(in_tmp, study_file):
    old_study("sqlite:///mlruns/optuna.db")
    with pytest.raises(ConfigError, match=r"no study named 'olf' in .*did you mean 'old'") as info:
        init_study(load_study(study_file(NEW_STUDY, study__warm_start={"from": "olf"})))
    assert "\n" not in str(info.value)
    assert "new" not in optuna.get_all_study_names(resolve_storage("sqlite:///mlruns/optuna.db"))
    client = MlflowClient(f"sqlite:///{(in_tmp / 'mlruns' / 'mlflow.db').resolve()}")
    assert client.get_experiment_by_name("deepfm-new") is None


def test_a_missing_source_storage_is_a_one_line_error(in_tmp, study_file):
    path = study_file(NEW_STUDY, study__warm_start={"from": "old", "storage": "sqlite:///nowhere.db"})
    with pytest.raises(ConfigError, match="no Optuna storage at sqlite:///.*nowhere.db"):
        init_study(load_study(path))


def test_cli_tune_runs_the_warm_started_configurations_and_status_shows_them(in_tmp, study_file):
    from click.testing import CliRunner

    from deepfm_tuner.tuner.cli import main

    old_study("sqlite:///mlruns/optuna.db")
    path = study_file(NEW_STUDY, study__warm_start={"from": "old", "top_k": 1}, study__n_trials=2)
    result = CliRunner().invoke(main, ["tune", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "warm start: queued 1 configuration of study 'old'" in result.output
    status = CliRunner().invoke(main, ["status", str(path)], catch_exceptions=False)
    assert "(V1 baseline)" in status.output and "(from old#2)" in status.output
    client = MlflowClient(f"sqlite:///{(in_tmp / 'mlruns' / 'mlflow.db').resolve()}")
    runs = client.search_runs([client.get_experiment_by_name("deepfm-new").experiment_id],
                              filter_string="tags.`deepfm.trial_number` = '1'")
    assert runs[0].data.tags["deepfm.warm_start_from"] == "old#2" and runs[0].data.params["embedding_dim"] == "32"


def test_cli_missing_source_exits_2_with_one_line(in_tmp, study_file):
    from click.testing import CliRunner

    from deepfm_tuner.tuner.cli import main

    path = study_file(NEW_STUDY, study__warm_start={"from": "gone"})
    result = CliRunner().invoke(main, ["init", str(path)])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "no study named 'gone'" in errors[0]  # (other lines: data progress, if any)
