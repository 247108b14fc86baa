"""A study with serving budgets end to end: every trial records its cost, a trial over budget is marked and never
becomes champion, the V1 baseline over budget is never substituted by the baseline guard, and the summary, status
and report show the budget."""

from __future__ import annotations

import optuna
import pytest

from deepfm_tuner.tuner.pipeline.handle import init_study
from deepfm_tuner.tuner.pipeline.promotion import promote_study
from deepfm_tuner.tuner.pipeline.report import write_report
from deepfm_tuner.tuner.pipeline.tune import tune
from deepfm_tuner.tuner.spec.study import load_study
from deepfm_tuner.tuner.trials.constraints import within_budget

from support import TINY_STUDY, assert_one_line_error, run

# the tiny study's embedding_dim 8 (the V1 baseline's, mapped into the space) has ~17,500 parameters, 4 ~9,500
BUDGET = {"max_parameters": 12000, "max_latency_ms": 10000}


@pytest.mark.slow
def test_a_max_parameters_too_small_for_some_choices_yields_a_champion_within_it(in_tmp, study_file):
    path = study_file(study={**TINY_STUDY["study"], "name": "budget", "n_trials": 5, "promote": True,
                             "registered_model": "budget-m", "pruner": "none", "constraints": BUDGET,
                             "sampler": {"type": "tpe", "seed": 3, "n_startup_trials": 2}})
    result = tune(load_study(path))
    study, client = result.handle.study, result.handle.tracker.client
    over = [t for t in study.trials if not within_budget(t)]
    assert [t.number for t in over][:1] == [0] and all(t.user_attrs["parameter_count"] > 12000 for t in over)
    best = result.best_trial
    assert within_budget(best) and best.user_attrs["parameter_count"] <= 12000
    version = client.get_model_version("budget-m", str(result.promotion.version))
    assert version.tags["trial_number"] == str(best.number)

    for trial in study.trials:  # every complete trial was counted and timed, on the trial and on its run
        run_ = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run_.data.metrics["parameter_count"] == trial.user_attrs["parameter_count"]
        assert run_.data.metrics["score_latency_ms"] == trial.user_attrs["score_latency_ms"] > 0
        assert run_.data.tags["deepfm.within_budget"] == str(within_budget(trial)).lower()
        if trial in over[1:]:  # over budget: never the best so far, so no checkpoint (the baseline keeps its own)
            assert "checkpoint" not in trial.user_attrs
    parent = client.get_run(result.handle.parent_run_id).data.metrics
    assert parent["trials_over_budget"] == len(over) and parent["best_trial_parameter_count"] <= 12000

    status = run("status", path)
    assert status.exit_code == 0 and "over budget" in status.output
    assert f"best trial {best.number} within budget: {best.user_attrs['parameter_count']:,} parameters" in status.output
    report = write_report(study, in_tmp / "report.html").read_text()
    assert "Score vs serving cost (study.constraints)" in report and "within budget" in report


@pytest.mark.slow
def test_a_baseline_over_budget_is_never_what_the_baseline_guard_registers(in_tmp, study_file):
    # as the baseline guard's own test: a weak baseline (learning rate 1e-5) and a strong tuned model, scored on
    # label-flipped test rows so the tuned one is significantly worse; here the baseline (embedding_dim 16) is
    # also over the parameter budget, so the tuned model stays the candidate
    spec = load_study(study_file({
        "study": {"name": "guarded", "n_trials": 2, "promote": False, "registered_model": "guarded-m",
                  "sampler": {"type": "random", "seed": 3}, "constraints": {"max_parameters": 20000}},
        "data": {"synthetic": {"rows": 6000, "seed": 2, "max_cardinality": 200}, "test_fraction": 0.4},
        "training": {"batch_size": 256, "max_epochs": 2, "seed": 0, "device": "cpu", "threads": 1},
        "policy_configs": {"scoring_policy": {"embedding_dim": {"choices": [4, 16]}, "deep_hidden_units": [32],
                                              "activation_fn": "relu", "dropout": 0.0,
                                              "learning_rate": {"choices": [1.0e-5, 0.03]}}}}))
    handle = init_study(spec)
    assert "the random sampler does not steer away from trials over budget" in " ".join(handle.notes)
    handle.study.enqueue_trial({"embedding_dim": 4, "learning_rate": 0.03})  # after the baseline
    result = tune(spec)
    base, tuned = result.handle.study.trials
    assert base.params == {"embedding_dim": 16, "learning_rate": 1e-5} and not within_budget(base)
    assert result.best_trial.number == tuned.number and within_budget(tuned)
    test = spec.data.prepare().test_frame()

    promotion = promote_study(result.handle, test_frame=test.assign(label=1 - test["label"]))
    version = result.handle.tracker.client.get_model_version("guarded-m", str(promotion.version))
    assert version.tags["trial_number"] == str(tuned.number) and "chosen_by" not in version.tags
    assert promotion.baseline_message.startswith(f"baseline guard: the tuned candidate (trial {tuned.number}) is "
                                                 "significantly worse than the V1 baseline")
    assert "but the baseline is over the serving budget (study.constraints); registered the tuned candidate" in \
        promotion.baseline_message


def test_a_latency_budget_without_test_rows_fails_before_any_study_exists(in_tmp, study_file, tiny_criteo_dir):
    path = study_file(study={**TINY_STUDY["study"], "constraints": {"max_latency_ms": 5}},
                      data={"train": str(tiny_criteo_dir / "train.tsv"), "format": "criteo", "test_fraction": 0})
    assert_one_line_error(run("tune", path), "study.constraints.max_latency_ms times scoring on the test split's raw "
                                             "rows", "set data.test_fraction > 0")
    storage = in_tmp / "mlruns" / "optuna.db"
    assert not storage.exists() or optuna.get_all_study_names(f"sqlite:///{storage}") == []


@pytest.mark.slow
def test_no_trial_within_budget_promotes_nothing_and_says_what_scored_best(in_tmp, study_file):
    path = study_file(study={**TINY_STUDY["study"], "name": "tight", "n_trials": 2, "promote": True,
                             "registered_model": "tight-m", "pruner": "none", "constraints": {"max_parameters": 1000}})
    result = run("tune", path)
    assert result.exit_code == 0, result.output
    assert "no complete trial is within the serving budget: nothing can be promoted" in result.output
    assert "best overall trial" in result.output and "(max 1,000)" in result.output
    assert "trial   0 over budget" in result.output and "| best -" in result.output  # the live lines, too
    assert "registered" not in result.output
    assert_one_line_error(run("promote", path), "no complete trial of study 'tight' is within its serving budget")
