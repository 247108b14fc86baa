"""Issue #11.3: the embedded store (mlruns/) survives moving the project folder; #11.1/#11.2 end to end: the
champion's version tags and logged model carry the trial's score under its one name."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient  # noqa: E402  (after tuner: quiet defaults)

from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.tuner.cli import main
from deepfm_tuner.tuner.pipeline.tune import tune
from deepfm_tuner.tuner.spec.study import load_study

from support import write_study

pytestmark = pytest.mark.slow


def test_a_moved_project_still_pulls_and_loads_its_champion(tmp_path, monkeypatch):
    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir()
    monkeypatch.chdir(before)
    result = tune(load_study(write_study(before, study__n_trials=2, study__promote=True)))
    promotion, best = result.promotion, result.best_trial
    assert promotion is not None and promotion.promoted

    monkeypatch.chdir(tmp_path)
    shutil.move(str(before), str(after))  # the whole project folder, stores included
    monkeypatch.chdir(after)
    pulled = CliRunner().invoke(main, ["pull", f"{promotion.name}@champion", "--out", "pulled"])
    assert pulled.exit_code == 0, pulled.output
    assert ScoringPolicy.load(after / "pulled" / "policy").config is not None
    assert (after / "pulled" / "model" / "MLmodel").is_file()

    client = MlflowClient(f"sqlite:///{after}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("deepfm-tiny")
    assert experiment.artifact_location.startswith((after / "mlruns").as_uri())
    version = client.get_model_version_by_alias(promotion.name, "champion")
    assert str(before) not in client.get_model_version_download_uri(promotion.name, version.version)
    # the champion says what it scored, under the score's one name, on the version and on its logged model
    assert version.tags["score_val_auc"] == f"{best.value:.6f}" and "val_auc" not in version.tags
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    assert {m.key: m.value for m in model.metrics}["score_val_auc"] == pytest.approx(best.value)

    # and the study goes on in its new place: new trials' artifacts land there
    resumed = tune(load_study(write_study(after, study__n_trials=3)))
    run = client.get_run(resumed.handle.study.trials[-1].user_attrs["mlflow_run_id"])
    assert run.info.artifact_uri.startswith((after / "mlruns").as_uri())
