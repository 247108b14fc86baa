"""The baseline guard: promotion never registers a tuned model that is significantly worse than the V1 baseline
on the test rows; the baseline trial is registered instead, and the message says why."""

from __future__ import annotations

import pytest

from deepfm_tuner.tuner.pipeline.promotion import promote_study
from deepfm_tuner.tuner.pipeline.tune import tune
from deepfm_tuner.tuner.registry.history import read_history
from deepfm_tuner.tuner.spec.study import load_study


@pytest.mark.slow
def test_a_tuned_model_worse_than_the_baseline_on_test_is_replaced_by_the_baseline(in_tmp, study_file):
    # the baseline trains at learning rate 1e-5 (the closest choice to V1's 0.001): a weak model; the tuned
    # 0.03 is far better on validation. Scored on label-flipped test rows the better model is the worse one.
    spec = load_study(study_file({
        "study": {"name": "guard", "n_trials": 3, "promote": False, "registered_model": "guard-m",
                  "sampler": {"type": "random", "seed": 3}},
        "data": {"synthetic": {"rows": 6000, "seed": 2, "max_cardinality": 200}, "test_fraction": 0.4},
        "training": {"batch_size": 256, "max_epochs": 2, "seed": 0, "device": "cpu", "threads": 1},
        "policy_configs": {"scoring_policy": {"embedding_dim": 8, "deep_hidden_units": [32], "activation_fn": "relu",
                                              "dropout": 0.0, "learning_rate": {"choices": [1.0e-5, 0.03]}}}}))
    result = tune(spec)
    best, base = result.best_trial, result.handle.study.trials[0]
    assert best.params["learning_rate"] == 0.03 and base.params["learning_rate"] == 1e-5
    test = spec.data.prepare().test_frame()
    flipped = test.assign(label=1 - test["label"])

    promotion = promote_study(result.handle, test_frame=flipped)
    version = result.handle.tracker.client.get_model_version("guard-m", str(promotion.version))
    assert version.tags["trial_number"] == str(base.number) and version.tags["chosen_by"] == "baseline_guard"
    assert version.tags["guard.tuned_trial"] == str(best.number) and float(version.tags["guard.auc_diff"]) < 0
    assert version.run_id == base.user_attrs["mlflow_run_id"]
    assert promotion.baseline_message.startswith("baseline guard: the tuned candidate (trial")
    assert "significantly worse than the V1 baseline" in promotion.baseline_message

    # on the real test rows the tuned model is better: it is what gets registered
    promotion = promote_study(result.handle, test_frame=test)
    version = result.handle.tracker.client.get_model_version("guard-m", str(promotion.version))
    assert version.tags["trial_number"] == str(best.number) and "chosen_by" not in version.tags
    assert promotion.baseline_message.startswith("tuning helped")
    # the model's history names both moves, the guard's first
    moves = [(e.action, e.to_version) for e in read_history(result.handle.tracker.client, "guard-m")][::-1]
    assert moves[0] == ("baseline_guard", 1) and moves[1][1] == promotion.version
