"""A promotion names the data it scored the model on: the test scores go on the logged model with the test dataset
(what the UI's model page lists as "Datasets used"), and the run gets that dataset as a test input if it lacked it."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from deepfm_tuner.model.data.frames import split_rows
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.model.train import train
from deepfm_tuner.tuner.registry.promotion import promote_policy
from deepfm_tuner.tuner.stores.datasets import part_dataset

from conftest import TINY_POLICY, TINY_TRAINING


@pytest.mark.slow
def test_promotion_puts_the_test_scores_on_the_model_with_the_test_dataset(tiny_prepared, tiny_frame, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("scored", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id  # a run that logged no dataset (e.g. trained on other data)
    client.set_terminated(run_id, "FINISHED")
    policy_dir = ScoringPolicy(TINY_POLICY, TINY_TRAINING, tiny_prepared.encoder,
                               train(tiny_prepared, TINY_POLICY, TINY_TRAINING).model, {}).save(tmp_path / "policy")
    test_frame = tiny_frame.iloc[split_rows(len(tiny_frame), seed=0).test].reset_index(drop=True)
    test = part_dataset(tiny_prepared, "test")

    result = promote_policy(run_id=run_id, policy_dir=policy_dir, test_frame=test_frame, registered_name="scored",
                            tags={}, client=client, test_dataset=test)

    model = client.get_logged_model(client.get_model_version("scored", str(result.version)).source.removeprefix(
        "models:/"))
    scores = {m.key: m for m in model.metrics if m.key.startswith("test_")}
    assert {k: (m.dataset_name, m.dataset_digest) for k, m in scores.items()} == {
        "test_auc": (test.name, tiny_prepared.fingerprint), "test_logloss": (test.name, tiny_prepared.fingerprint)}
    assert scores["test_auc"].value == pytest.approx(result.test_auc)
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest, [(t.key, t.value) for t in i.tags]) for i in inputs] == [
        (test.name, tiny_prepared.fingerprint, [("mlflow.data.context", "test")])]
    assert client.get_run(run_id).info.status == "FINISHED"  # the run is left as it was
