"""The training loop: learns, stops early and restores the best epoch, obeys its hook, refuses NaN."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from deepfm_tuner.model.config import PolicyConfig
from deepfm_tuner.model.errors import TrainingDiverged
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.model.train import evaluate, train

from conftest import TINY_POLICY, TINY_TRAINING


def test_training_learns_signal_from_synthetic_data(tiny_prepared):
    result = train(tiny_prepared, TINY_POLICY, TINY_TRAINING)
    auc, logloss = evaluate(result.model, tiny_prepared.test)
    assert auc > 0.6 and math.isfinite(logloss)
    assert [m.epoch for m in result.history] == list(range(len(result.history)))


def test_same_seed_gives_same_model(tiny_prepared):
    a = train(tiny_prepared, TINY_POLICY, TINY_TRAINING.replace(max_epochs=1))
    b = train(tiny_prepared, TINY_POLICY, TINY_TRAINING.replace(max_epochs=1))
    assert a.history[0].val_auc == b.history[0].val_auc


def test_early_stopping_restores_the_best_epoch(tiny_prepared):
    # a high learning rate overfits fast: validation AUC peaks, then falls
    policy = PolicyConfig(embedding_dim=8, deep_hidden_units=(64,), dropout=0.0, learning_rate=0.05)
    result = train(tiny_prepared, policy, TINY_TRAINING.replace(max_epochs=8, patience=1))
    best = max(m.val_auc for m in result.history)
    assert result.best.val_auc == best
    assert evaluate(result.model, tiny_prepared.val)[0] == pytest.approx(best, abs=1e-9)
    if len(result.history) < 8:
        assert result.stop_reason.startswith("early stop")


def test_on_epoch_hook_sees_every_epoch_and_can_stop(tiny_prepared):
    seen = []
    result = train(tiny_prepared, TINY_POLICY, TINY_TRAINING.replace(max_epochs=5),
                   on_epoch=lambda m: seen.append(m.epoch) or m.epoch == 1)
    assert seen == [0, 1] and "callback" in result.stop_reason


def test_hook_exceptions_propagate_for_pruning(tiny_prepared):
    class Pruned(Exception):
        pass

    def prune(_):
        raise Pruned()

    with pytest.raises(Pruned):
        train(tiny_prepared, TINY_POLICY, TINY_TRAINING, on_epoch=prune)


def test_nan_loss_stops_with_a_clear_reason(tiny_prepared):
    with pytest.raises(TrainingDiverged, match="lower learning_rate"):
        train(tiny_prepared, PolicyConfig(learning_rate=1e12, dropout=0.0), TINY_TRAINING)


def test_policy_directory_round_trip_scores_identically(tmp_path, tiny_prepared, tiny_frame):
    result = train(tiny_prepared, TINY_POLICY, TINY_TRAINING.replace(max_epochs=1))
    policy = ScoringPolicy(TINY_POLICY, TINY_TRAINING, tiny_prepared.encoder, result.model, {"x": 1})
    policy.save(tmp_path / "p")
    loaded = ScoringPolicy.load(tmp_path / "p")
    assert np.allclose(policy.predict(tiny_frame.head(500)), loaded.predict(tiny_frame.head(500)), atol=1e-6)
    assert loaded.config == TINY_POLICY and loaded.metrics == {"x": 1}
    # weights are a plain state dict: loadable with weights_only=True
    assert isinstance(torch.load(tmp_path / "p" / "weights.pt", weights_only=True), dict)


def test_model_package_never_imports_optuna_or_mlflow():
    code = ("import importlib, pkgutil, sys, deepfm_tuner.model as m\n"
            "for info in pkgutil.walk_packages(m.__path__, 'deepfm_tuner.model.'):\n"
            "    importlib.import_module(info.name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('optuna', 'mlflow', 'click')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_kept_epoch_follows_the_selected_metric(tiny_prepared):
    """A study that minimises val_logloss keeps (and reports) the lowest-logloss epoch, not the best-AUC one."""
    policy = PolicyConfig(embedding_dim=8, deep_hidden_units=(64,), dropout=0.0, learning_rate=0.05)
    control = TINY_TRAINING.replace(max_epochs=6, patience=0)
    by_loss = train(tiny_prepared, policy, control, select="val_logloss")
    assert by_loss.best.val_logloss == min(m.val_logloss for m in by_loss.history)
    assert evaluate(by_loss.model, tiny_prepared.val)[1] == pytest.approx(by_loss.best.val_logloss, abs=1e-6)
    by_auc = train(tiny_prepared, policy, control)
    assert by_auc.best.val_auc == max(m.val_auc for m in by_auc.history)
    with pytest.raises(ValueError, match="select must be one of"):
        train(tiny_prepared, policy, control, select="auc")


def test_patience_zero_means_no_early_stopping(tiny_prepared):
    policy = PolicyConfig(embedding_dim=4, deep_hidden_units=(8,), dropout=0.0, learning_rate=1e-12)  # AUC flat
    result = train(tiny_prepared, policy, TINY_TRAINING.replace(max_epochs=4, patience=0))
    assert len(result.history) == 4 and result.stop_reason == "reached max_epochs=4"
    stopped = train(tiny_prepared, policy, TINY_TRAINING.replace(max_epochs=4, patience=1))
    assert len(stopped.history) < 4 and stopped.stop_reason.startswith("early stop")
