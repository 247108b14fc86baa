"""Serving budgets in the trials room: each trial's cost reaches Optuna as constraints, and a trial over budget is
never the best trial, never a finalist, never a warm start; the best overall is still named, with its cost."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution

from deepfm_tuner.model.config import PolicyConfig
from deepfm_tuner.model.deepfm import estimate_parameters
from deepfm_tuner.model.errors import ConfigError
from deepfm_tuner.tuner.spec.constraints import ConstraintsSpec
from deepfm_tuner.tuner.spec.study import load_study
from deepfm_tuner.tuner.trials.constraints import (
    ServingBudget,
    best_overall,
    budget_lines,
    budget_metrics,
    check_budget,
    record_budget,
    within_budget,
)
from deepfm_tuner.tuner.trials.finalists import candidates
from deepfm_tuner.tuner.trials.record import best_trial
from deepfm_tuner.tuner.trials.warmstart import plan_warm_start

BUDGET = ConstraintsSpec(max_parameters=12000, max_latency_ms=5.0)
SPACE = {"learning_rate": FloatDistribution(1e-4, 3e-2, log=True)}


def budgeted_study(costs, *, budget=BUDGET, storage=None, name=None) -> optuna.Study:
    """One complete trial per (score, parameters, latency_ms), its constraints set as the objective sets them."""
    study = optuna.create_study(direction="maximize", storage=storage, study_name=name)
    record_budget(study, budget)
    for number, (score, parameters, latency_ms) in enumerate(costs):
        trial = study.ask(SPACE)
        trial.set_user_attr("parameter_count", parameters)
        trial.set_user_attr("score_latency_ms", latency_ms)
        trial.set_constraint("max_parameters", parameters / budget.max_parameters - 1)
        trial.set_constraint("max_latency_ms", latency_ms / budget.max_latency_ms - 1)
        study.tell(trial, score)
    return study


@pytest.fixture()
def study() -> optuna.Study:
    return budgeted_study([(0.70, 9455, 2.0), (0.75, 17491, 2.5), (0.72, 9583, 6.0), (0.71, 9583, 4.0)])


def test_the_best_trial_is_the_best_within_budget_and_the_best_overall_is_named_with_its_cost(study):
    assert best_trial(study).number == 3 and best_overall(study).number == 1
    assert [within_budget(t) for t in study.trials] == [True, False, False, True]
    assert budget_lines(study, "val_auc") == [
        ("serving budget {max_parameters: 12000, max_latency_ms: 5}: 2 complete trials over it, never champion "
         "(trials 1, 2)"),
        "best trial 3 within budget: 9,583 parameters, 4.00 ms",
        "best overall trial 1 (over budget): score_val_auc 0.7500, 17,491 parameters (max 12,000), 2.50 ms"]
    assert budget_metrics(study, "val_auc") == {
        "trials_over_budget": 2, "best_trial_parameter_count": 9583, "best_trial_score_latency_ms": 4.0,
        "best_overall_trial": 1, "best_overall_score_val_auc": 0.75, "best_overall_parameter_count": 17491,
        "best_overall_score_latency_ms": 2.5}


def test_finalists_are_chosen_among_the_trials_within_budget(study):
    assert [t.number for t in candidates(study, 3)] == [3, 0]


def test_no_trial_within_budget_leaves_nothing_to_promote_and_says_what_was_best():
    over = budgeted_study([(0.75, 17491, 2.5), (0.70, 9455, 9.0)])
    assert best_trial(over) is None and candidates(over, 3) == []
    lines = budget_lines(over, "val_auc")
    assert lines[1].startswith("no complete trial is within the serving budget: nothing can be promoted")
    assert lines[2] == ("best overall trial 0 (over budget): score_val_auc 0.7500, 17,491 parameters (max 12,000), "
                        "2.50 ms")


def test_a_study_without_constraints_reads_as_before():
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.7, params={}, distributions={}))
    assert within_budget(study.trials[0]) and budget_lines(study, "val_auc") == []
    assert budget_metrics(study, "val_auc") == {}


def test_a_resumed_study_keeps_the_budget_it_was_created_with(study):
    check_budget(study, BUDGET)
    with pytest.raises(ConfigError, match=r"created with study.constraints \{max_parameters: 12000, max_latency_ms: "
                                          r"5\}, but the study file says \{max_parameters: 20000\}"):
        check_budget(study, ConstraintsSpec(max_parameters=20000))
    with pytest.raises(ConfigError, match="but the study file says none"):
        check_budget(study, None)
    check_budget(optuna.create_study(), None)  # a study from before budgets existed, resumed without one


class Run:
    """What ServingBudget needs of a training run: its id and a tracker that logs summaries."""

    def __init__(self):
        self.run_id, self.tracker, self.logged = "run-1", self, []

    def log_summary(self, run_id, metrics, params=(), tags=()):
        self.logged.append((dict(metrics), dict(tags)))


def test_a_trial_reaches_optuna_with_its_relative_excess_over_each_budget(tiny_prepared):
    study, run = optuna.create_study(direction="maximize"), Run()
    budget = ServingBudget(BUDGET, tiny_prepared.encoder, latency=lambda policy: 7.5)
    trial = study.ask()
    policy = PolicyConfig(embedding_dim=8, deep_hidden_units=(16,))
    count = budget.count(trial, run, policy)
    enc = tiny_prepared.encoder
    assert count == estimate_parameters(enc.categorical_dims, enc.multivalued_dims, len(enc.schema.numeric), policy)
    assert budget.judge(trial, run, trained=lambda: "the trained policy") is False
    study.tell(trial, 0.7)
    frozen = study.trials[0]
    assert frozen.constraints == pytest.approx({"max_parameters": count / 12000 - 1, "max_latency_ms": 0.5})
    assert frozen.user_attrs["parameter_count"] == count and frozen.user_attrs["score_latency_ms"] == 7.5
    assert run.logged == [({"parameter_count": count}, {}),
                          ({"score_latency_ms": 7.5}, {"deepfm.within_budget": "false"})]


def test_a_pruned_trial_is_judged_by_its_parameter_count_alone(tiny_prepared):
    study = optuna.create_study(direction="maximize")
    budget = ServingBudget(BUDGET, tiny_prepared.encoder, latency=lambda policy: pytest.fail("not timed"))
    trial = study.ask()
    budget.count(trial, Run(), PolicyConfig(embedding_dim=4, deep_hidden_units=(16,)))
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert list(study.trials[0].constraints) == ["max_parameters"] and within_budget(study.trials[0])


def test_without_constraints_the_parameter_count_is_still_recorded_and_nothing_is_timed(tiny_prepared):
    study, run = optuna.create_study(), Run()
    budget = ServingBudget(None, tiny_prepared.encoder)
    trial = study.ask()
    budget.count(trial, run, PolicyConfig())
    assert budget.judge(trial, run, trained=lambda: pytest.fail("not built")) is True
    study.tell(trial, 0.7)
    assert study.trials[0].constraints == {} and study.trials[0].user_attrs["parameter_count"] > 0


def test_warm_start_takes_the_best_configurations_within_the_source_budget(tmp_path, study_file):
    url = f"sqlite:///{tmp_path}/optuna.db"
    budgeted_study([(0.70, 9455, 2.0), (0.75, 17491, 2.5), (0.72, 9583, 4.0)], storage=url, name="old")
    spec = load_study(study_file(study__warm_start={"from": "old", "top_k": 2, "storage": url}))
    source = optuna.load_study(study_name="old", storage=url)
    plan = plan_warm_start(spec, url)
    assert [label for _, label in plan.configs] == ["old#2", "old#0"]
    assert [params["learning_rate"] for params, _ in plan.configs] == [
        source.trials[2].params["learning_rate"], source.trials[0].params["learning_rate"]]
