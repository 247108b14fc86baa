"""The V1 baseline trial: queued once at creation, mapped into the search space, closest value when outside."""

from __future__ import annotations

import optuna
import pytest

from deepfm_tuner.model.config import PolicyConfig
from deepfm_tuner.tuner.pipeline.handle import init_study
from deepfm_tuner.tuner.spec.space import parse_space, policy_from_params
from deepfm_tuner.tuner.spec.study import load_study
from deepfm_tuner.tuner.trials.baseline import baseline_params, baseline_trial, describe_lift, lift_over_baseline

V1 = PolicyConfig()


def test_default_space_baseline_is_the_v1_config_exactly():
    space = parse_space({})
    params, notes = baseline_params(space)
    assert notes == [] and policy_from_params(params, space) == V1
    assert params["deep_hidden_units"] == "128-64-32"  # layer-list choices are Optuna labels


def test_fixed_values_stay_fixed_and_only_tunables_are_params():
    space = parse_space({"embedding_dim": 4, "dropout": 0.0, "activation_fn": "gelu"})
    params, notes = baseline_params(space)
    assert set(params) == {"deep_hidden_units", "learning_rate"} and notes == []
    policy = policy_from_params(params, space)
    assert (policy.embedding_dim, policy.dropout, policy.activation_fn) == (4, 0.0, "gelu")
    assert (policy.deep_hidden_units, policy.learning_rate) == (V1.deep_hidden_units, V1.learning_rate)


def test_depth_and_width_layers_encode_the_v1_layers():
    space = parse_space({"deep_hidden_units": {"depth": [1, 4], "width": [16, 256]}})
    params, notes = baseline_params(space)
    assert params["deep_hidden_units.depth"] == 3 and notes == []
    assert [params[f"deep_hidden_units.l{i}"] for i in range(3)] == [128, 64, 32]
    assert policy_from_params(params, space) == V1


def test_defaults_outside_the_space_take_the_closest_valid_value_and_say_so():
    space = parse_space({
        "embedding_dim": {"choices": [4, 8, 64]},
        "deep_hidden_units": {"depth": [1, 2], "width": [64, 256]},
        "activation_fn": {"choices": ["gelu", "silu"]},
        "dropout": {"low": 0.0, "high": 0.45, "step": 0.15},
        "learning_rate": {"low": 0.01, "high": 0.1, "log": True},
    })
    params, notes = baseline_params(space)
    policy = policy_from_params(params, space)
    assert policy == PolicyConfig(embedding_dim=8, deep_hidden_units=(128, 64), activation_fn="gelu",
                                  dropout=0.15, learning_rate=0.01)
    assert len(notes) == 5 and all("outside the search space" in n for n in notes)
    assert "embedding_dim: V1 default 16 is outside the search space, baseline uses 8" in notes


STUDY = {
    "study": {"name": "base", "n_trials": 3, "sampler": {"type": "random", "seed": 0}, "promote": False},
    "data": {"synthetic": {"rows": 1000}},
    "policy_configs": {"scoring_policy": {"embedding_dim": {"choices": [4, 8]}, "dropout": 0.0}},
}


def test_the_baseline_is_queued_once_at_creation_not_on_resume(in_tmp, study_file):
    path = study_file(STUDY)
    handle = init_study(load_study(path))
    waiting = handle.study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs["baseline"] is True
    assert "baseline uses 8" in waiting[0].user_attrs["baseline_adjusted"]
    assert any("baseline uses 8" in note for note in handle.notes)
    parent = handle.tracker.client.get_run(handle.parent_run_id)
    assert "embedding_dim" in parent.data.tags["deepfm.baseline_adjusted"]
    again = init_study(load_study(path))  # a resume or a second worker
    assert len(again.study.get_trials()) == 1 and again.notes == []


def test_lift_is_signed_by_direction():
    for direction, values, expected in (("maximize", (0.70, 0.75), 0.05), ("minimize", (0.50, 0.45), 0.05)):
        study = optuna.create_study(direction=direction)
        study.add_trial(optuna.trial.create_trial(value=values[0], user_attrs={"baseline": True}))
        study.add_trial(optuna.trial.create_trial(value=values[1]))
        lift, base = lift_over_baseline(study)
        assert lift == pytest.approx(expected) and base.number == 0 and baseline_trial(study).number == 0
        assert "lift of the best over it: +0.0500" in describe_lift(study, "m")


def test_no_completed_baseline_means_no_lift():
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={"baseline": True}))
    study.add_trial(optuna.trial.create_trial(value=0.7))
    assert lift_over_baseline(study) is None and "is pruned" in describe_lift(study, "val_auc")
