"""Issue #11.2: the registered version and the logged model it came from point at each other, and the logged model
carries the trial's score and its best epoch's metrics (not epoch 0's)."""

from __future__ import annotations

import json
import time

import pytest
from mlflow import MlflowClient  # noqa: E402  (after tuner: quiet defaults)
from mlflow.entities import Metric  # noqa: E402

from deepfm_tuner.model.data.frames import split_rows
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.model.train import train
from deepfm_tuner.tuner.registry.promotion import promote_policy

from conftest import TINY_POLICY, TINY_TRAINING

CURVE = [0.60, 0.72, 0.66]  # epoch_val_auc per step: the best epoch is step 1, the 2nd epoch (best_epoch 2)


@pytest.fixture(scope="module")
def promoted(tiny_prepared, tiny_frame, tmp_path_factory):
    root = tmp_path_factory.mktemp("links")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("links", artifact_location=(root / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric("epoch_val_auc", v, now + i, i) for i, v in enumerate(CURVE)]
                     + [Metric("epoch_val_logloss", 0.5 - v / 10, now + i, i) for i, v in enumerate(CURVE)]
                     + [Metric("score_val_auc", max(CURVE), now + 5, 0), Metric("best_epoch", 2, now + 5, 0),
                        Metric("train_seconds", 1.5, now + 5, 0)])
    client.set_terminated(run_id, "FINISHED")
    policy_dir = ScoringPolicy(TINY_POLICY, TINY_TRAINING, tiny_prepared.encoder,
                               train(tiny_prepared, TINY_POLICY, TINY_TRAINING).model, {}).save(root / "policy")
    test_frame = tiny_frame.iloc[split_rows(len(tiny_frame), seed=0).test].reset_index(drop=True)
    result = promote_policy(run_id=run_id, policy_dir=policy_dir, test_frame=test_frame, registered_name="linked",
                            tags={"score_val_auc": "0.720000"}, client=client)
    return client, run_id, result


def version_model_id(version) -> str:
    return version.model_id or version.source.removeprefix("models:/")


def test_version_and_logged_model_are_linked(promoted):
    client, run_id, result = promoted
    version = client.get_model_version("linked", str(result.version))
    # MLflow 3.17's SQL registry does not keep ModelVersion.model_id (it is None when read back): the version's
    # source, models:/<model_id>, is its link to the logged model
    model_id = version_model_id(version)
    assert version.source == f"models:/{model_id}" and version.run_id == run_id
    model = client.get_logged_model(model_id)
    assert model.source_run_id == run_id and model.model_id == model_id
    # what the UI's logged-model page reads to show the version (else: "Not registered" and "Register model")
    linked = json.loads(model.tags["mlflow.modelVersions"])
    assert [(v["name"], str(v["version"])) for v in linked] == [("linked", str(result.version))]


def test_logged_model_carries_the_score_and_the_best_epoch_not_epoch_0(promoted):
    client, run_id, result = promoted
    model = client.get_logged_model(version_model_id(client.get_model_version("linked", str(result.version))))
    metrics = {m.key: m for m in model.metrics}
    assert metrics["score_val_auc"].value == pytest.approx(max(CURVE))
    assert metrics["epoch_val_auc"].value == pytest.approx(CURVE[1]) and metrics["epoch_val_auc"].step == 1
    assert metrics["best_epoch"].value == 2  # counted from 1, as people read it
    assert "train_seconds" not in metrics  # only the score and best-epoch metrics are the model's
    # linking re-logs the same points: the run's histories gain no duplicate
    assert len(client.get_metric_history(run_id, "score_val_auc")) == 1
    assert [m.step for m in client.get_metric_history(run_id, "epoch_val_auc")] == [0, 1, 2]
