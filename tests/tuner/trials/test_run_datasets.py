"""Every training run (trials, the V1 baseline, finalist retrains) logs the data it trained and was scored on as
MLflow dataset inputs, so the runs table's Dataset column shows it and runs can be filtered by it; the champion's
logged model carries its test scores on the test dataset ("Datasets used" on its page)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from deepfm_tuner.tuner.pipeline.tune import load_data, tune
from deepfm_tuner.tuner.spec.study import load_study

from support import TINY_STUDY, write_study

STUDY = {**TINY_STUDY,
         "study": {"name": "datasets", "n_trials": 2, "sampler": {"type": "random", "seed": 3},
                   "pruner": {"type": "none"}, "promote": True, "finalists": {"top_k": 1, "seeds": 1}},
         "training": {**TINY_STUDY["training"], "max_epochs": 1}}
CONTEXTS = {"training": "train", "validation": "val", "test": "test"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One tiny study (the baseline and one more trial, one finalist retrain, promoted): its client, experiment id,
    runs by role, data and promotion."""
    folder = tmp_path_factory.mktemp("datasets")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        spec = load_study(write_study(folder, STUDY))
        result = tune(spec)
        data = load_data(spec, lambda message: None)
    client = MlflowClient(f"sqlite:///{Path(folder, 'mlruns/mlflow.db')}")
    experiment = client.get_experiment_by_name("deepfm-datasets").experiment_id
    runs = {role: client.search_runs([experiment], f"tags.`deepfm.role` = '{role}'")
            for role in ("trial", "finalist")}
    return client, experiment, runs, data, result.promotion


def inputs_by_context(run) -> dict:
    return {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
            for i in run.inputs.dataset_inputs}


@pytest.mark.slow
def test_each_trial_and_finalist_run_logs_its_train_validation_and_test_data(study):
    _, _, runs, data, _ = study
    assert len(runs["trial"]) == 2 and len(runs["finalist"]) == 1
    assert any(r.data.tags.get("deepfm.baseline") == "true" for r in runs["trial"])  # the V1 baseline is a trial
    for run in runs["trial"] + runs["finalist"]:
        datasets = inputs_by_context(run)
        assert list(datasets) == list(CONTEXTS), run.info.run_name
        for context, part in CONTEXTS.items():
            dataset = datasets[context]
            assert dataset.digest == data.fingerprint
            assert dataset.name.endswith(f":{part}")
            assert json.loads(dataset.profile)["rows"] == len(data.parts[part])
            assert json.loads(dataset.source)["files"]  # the source files, as the dataset drawer shows them


@pytest.mark.slow
def test_runs_are_found_by_their_data(study):
    client, experiment, runs, data, _ = study
    trained = {r.info.run_id for r in runs["trial"] + runs["finalist"]}
    test_name = inputs_by_context(runs["trial"][0])["test"].name

    def found(query: str) -> set[str]:
        return {r.info.run_id for r in client.search_runs([experiment], query)}

    assert found(f"dataset.digest = '{data.fingerprint}'") == trained  # not the study's parent run
    assert found(f"dataset.name = '{test_name}' and dataset.context = 'test'") == trained
    assert found("dataset.digest = '0000000000000000'") == set()


@pytest.mark.slow
def test_the_champion_model_carries_its_test_scores_on_the_test_dataset(study):
    client, experiment, runs, data, promotion = study
    assert promotion is not None and promotion.promoted
    version = client.get_model_version_by_alias(promotion.name, "champion")
    model = client.get_logged_model(version.source.removeprefix("models:/"))  # the version's logged model
    datasets = inputs_by_context(runs["finalist"][0])  # the finalist retrain's checkpoint is the candidate
    on = {m.key: (m.dataset_name, m.dataset_digest) for m in model.metrics}
    test = datasets["test"]
    assert on["test_auc"] == on["test_logloss"] == (test.name, test.digest)
    assert {m.key: m.value for m in model.metrics}["test_auc"] == pytest.approx(promotion.test_auc)
    assert [m.model_id for m in client.search_logged_models(
        [experiment], datasets=[{"dataset_name": test.name, "dataset_digest": data.fingerprint}])] == [model.model_id]
