"""Issue #18.12: one epoch numbering wherever people read it. The CLI's "best epoch 1", the trial runs'
`best_epoch` metric, the parent run's `best_trial_best_epoch` and the registered version's `best_epoch` tag all
count from 1; MLflow steps and Optuna report steps stay 0-based."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from deepfm_tuner.model.train import EpochMetrics, TrainResult
from deepfm_tuner.tuner.cli import main
from deepfm_tuner.tuner.pipeline.promotion import _version_tags
from deepfm_tuner.tuner.trials.objective import _record_pruned
from deepfm_tuner.tuner.trials.runs import TrainingRun


def epoch(index: int, auc: float) -> EpochMetrics:
    return EpochMetrics(epoch=index, train_loss=0.5, val_auc=auc, val_logloss=0.6 - auc / 10, seconds=1.0,
                        samples_per_second=100.0, samples=100 * (index + 1))


@dataclass
class FakeTracker:
    summaries: list = field(default_factory=list)

    def log_summary(self, run_id, metrics, params=(), tags=()):
        self.summaries.append((dict(metrics), dict(tags)))


@dataclass
class FakeTrial:
    user_attrs: dict = field(default_factory=dict)

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value


def test_a_finished_runs_best_epoch_counts_from_one():
    tracker = FakeTracker()
    result = TrainResult(model=None, history=[epoch(0, 0.60), epoch(1, 0.72), epoch(2, 0.66)], best_epoch=1,
                         stop_reason="patience")
    TrainingRun(tracker, "run").log_result(result, "val_auc")
    metrics, _ = tracker.summaries[0]
    assert metrics["best_epoch"] == 2 and metrics["score_val_auc"] == 0.72


def test_a_pruned_runs_best_epoch_counts_from_one_and_its_stored_index_stays_zero_based():
    tracker, trial = FakeTracker(), FakeTrial()
    run = TrainingRun(tracker, "run")
    _record_pruned(trial, run, "val_auc", False, {"best": epoch(0, 0.7), "last": epoch(1, 0.65)}, {}, 2.0)
    metrics, tags = tracker.summaries[0]
    assert metrics["best_epoch"] == 1  # the first epoch
    assert metrics["pruned_at_epoch"] == 1 and tags["deepfm.pruned_at_epoch"] == "1"  # a step: 0-based, unchanged
    assert trial.user_attrs["training"]["best_epoch"] == 0  # what the code reads: the 0-based index


def test_the_registered_versions_best_epoch_tag_counts_from_one(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"best_epoch": 0, "val_auc": 0.7, "val_logloss": 0.5}))
    spec = type("Spec", (), {"name": "s", "metric": "val_auc"})()
    assert _version_tags(spec, 3, 0.7, tmp_path, {})["best_epoch"] == "1"


STUDY = {
    "study": {"name": "epochs", "n_trials": 2, "sampler": {"type": "random", "seed": 3}, "promote": True,
              "pruner": {"type": "none"}},
    "data": {"synthetic": {"rows": 2000, "seed": 4, "max_cardinality": 50}},
    "training": {"batch_size": 256, "max_epochs": 3, "patience": 3, "device": "cpu", "threads": 1},
    "policy_configs": {"scoring_policy": {"embedding_dim": 4, "deep_hidden_units": [8], "dropout": 0.0,
                                          "learning_rate": {"low": 0.001, "high": 0.05, "log": True}}},
}


@pytest.mark.slow
def test_mlflow_and_the_cli_say_the_same_best_epoch(in_tmp):
    from mlflow import MlflowClient

    from deepfm_tuner.tuner.pipeline.tune import tune
    from deepfm_tuner.tuner.spec.study import load_study
    from deepfm_tuner.tuner.trials.record import Training

    (in_tmp / "epochs.yaml").write_text(yaml.safe_dump(STUDY))
    result = tune(load_study(in_tmp / "epochs.yaml"))
    client = MlflowClient(f"sqlite:///{Path('mlruns/mlflow.db').resolve()}")
    for trial in result.handle.study.get_trials():
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        curve = client.get_metric_history(run.info.run_id, "epoch_val_auc")
        best_step = max(curve, key=lambda m: (m.value, -m.step)).step
        assert run.data.metrics["best_epoch"] == best_step + 1 == Training.of(trial).best_epoch + 1
    best = result.best_trial
    parent = client.get_run(result.handle.parent_run_id)
    assert parent.data.metrics["best_trial_best_epoch"] == Training.of(best).best_epoch + 1
    version = client.get_model_version("deepfm-epochs", str(result.promotion.version))
    assert version.tags["best_epoch"] == str(Training.of(best).best_epoch + 1)

    status = CliRunner().invoke(main, ["status", "epochs.yaml"], catch_exceptions=False)
    row = next(line for line in status.output.splitlines() if line.startswith(f"{best.number} "))
    assert row.split()[3] == version.tags["best_epoch"]  # the table's "best epoch" column
