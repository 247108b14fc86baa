"""Tuning studies end to end on real SQLite stores: Optuna trials and MLflow runs stay in step."""

import contextlib
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from deepfm_tuner.model.config import PolicyConfig, policy_to_v1_yaml, read_policy_yaml
from deepfm_tuner.tuner.pipeline.tune import load_data, tune
from deepfm_tuner.tuner.spec.space import policy_from_params
from deepfm_tuner.tuner.spec.study import load_study

from support import write_study

pytestmark = pytest.mark.slow


def runs_of(experiment="deepfm-tiny"):
    client = MlflowClient(f"sqlite:///{Path('mlruns/mlflow.db').resolve()}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("deepfm.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("deepfm.role") == "trial"]
    return client, parents, trials


def nan_on_trial(number):
    """A suggest_policy that gives trial `number` a learning rate that diverges (the test's failure injector)."""
    from deepfm_tuner.tuner.trials import objective

    suggest = objective.suggest_policy

    def inject(trial, space):
        policy = suggest(trial, space)
        return PolicyConfig(**{**policy.to_dict(), "learning_rate": 1e12}) if trial.number == number else policy
    return inject


@pytest.fixture(scope="module")
def six_trials(tmp_path_factory):
    """One 6-trial study (trial 2 forced to NaN) run once; tests below read its stores."""
    folder = tmp_path_factory.mktemp("study")
    with contextlib.chdir(folder):  # the study's relative stores (mlruns/) land in its folder
        spec = load_study(write_study(folder))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("deepfm_tuner.tuner.trials.objective.suggest_policy", nan_on_trial(2))
            result = tune(spec)
        yield folder, spec, result


@pytest.fixture()
def in_study(six_trials, monkeypatch):
    monkeypatch.chdir(six_trials[0])
    return six_trials


def test_one_parent_and_one_nested_run_per_trial(in_study):
    """n_trials counts finished (complete or pruned) trials; the failed NaN trial is one more, with its own run."""
    _, spec, result = in_study
    client, parents, trials = runs_of()
    study = result.handle.study
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 6 and len(study.trials) == 7
    assert len(parents) == 1 and len(trials) == 7
    parent_id = parents[0].info.run_id
    assert all(r.data.tags["mlflow.parentRunId"] == parent_id for r in trials)
    assert sorted(int(r.data.tags["deepfm.trial_number"]) for r in trials) == list(range(7))
    assert not [r for r in client.search_runs([parents[0].info.experiment_id]) if r.info.status == "RUNNING"]
    # no data.tune_rows: trials train on every row and nothing is refit (issue 16: a study as written before)
    assert spec.refit is None and "refit" not in study.user_attrs
    assert {r.data.tags.get("deepfm.role") for r in client.search_runs([parents[0].info.experiment_id])} == {
        "study", "trial"}


def test_trial_runs_hold_params_tags_and_per_epoch_metrics(in_study):
    _, spec, result = in_study
    client, _, trials = runs_of()
    study = result.handle.study
    for trial in study.get_trials():
        run = next(r for r in trials if r.data.tags["deepfm.trial_number"] == str(trial.number))
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        if trial.state != optuna.trial.TrialState.FAIL:  # the NaN trial's learning rate was overridden
            policy = policy_from_params(trial.params, spec.space)
            assert run.data.params["learning_rate"] == str(policy.learning_rate)
            assert run.data.params["deep_hidden_units"] == str(list(policy.deep_hidden_units))
        assert run.data.params["training.batch_size"] == "256"
        for tag in ("deepfm.study", "deepfm.sampler", "deepfm.data_fingerprint", "deepfm.seed"):
            assert tag in run.data.tags
        # where and how every trial trained, pruned and failed ones included: one optimizer on every device
        assert (run.data.tags["deepfm.device"], run.data.tags["deepfm.optimizer"]) == ("cpu", "adam+lazy_adam")
        assert (trial.user_attrs["device"], trial.user_attrs["optimizer"]) == ("cpu", "adam+lazy_adam")
        if trial.state != optuna.trial.TrialState.FAIL:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch_val_auc")]
            assert steps == list(range(len(steps))) and steps
            assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch_val_logloss")] == steps
            reported = trial.intermediate_values
            assert sorted(reported) == steps


def test_run_status_follows_trial_state(in_study):
    _, _, result = in_study
    _, _, trials = runs_of()
    expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    states = {t.number: t.state.name for t in result.handle.study.get_trials()}
    for run in trials:
        assert run.info.status == expected[states[int(run.data.tags["deepfm.trial_number"])]]
    assert "PRUNED" in states.values(), "the median pruner should stop at least one weak trial"


def test_nan_trial_fails_with_its_reason_and_the_study_goes_on(in_study):
    _, _, result = in_study
    _, _, trials = runs_of()
    states = [t.state.name for t in result.handle.study.get_trials()]
    assert states[2] == "FAIL" and states.count("COMPLETE") + states.count("PRUNED") == 6
    run = next(r for r in trials if r.data.tags["deepfm.trial_number"] == "2")
    assert "lower learning_rate" in run.data.tags["deepfm.failure_reason"]
    # said on the trial too: a FAIL that says nothing is a dead worker's, whose slot waits for its retry
    assert "lower learning_rate" in result.handle.study.get_trials()[2].user_attrs["failure"]["reason"]


def test_parent_run_holds_best_metrics_params_and_report(in_study):
    _, spec, result = in_study
    client, parents, _ = runs_of()
    parent = client.get_run(parents[0].info.run_id)
    best = result.best_trial
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["score_val_auc"] == pytest.approx(best.value)
    assert parent.data.tags["deepfm.best_trial"] == str(best.number)
    assert parent.data.tags["best.learning_rate"] == str(policy_from_params(best.params, spec.space).learning_rate)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_policy.yaml", "report"} <= artifacts


def test_the_score_has_one_name_in_every_run_pruned_trials_included(in_study):
    """Issue #11.1: `score_val_auc` is the best epoch's value (pruned: best so far, plus the step it stopped at);
    per-epoch curves are `epoch_*`; no run carries a bare `val_auc` or `best_val_auc` to be misread as the score."""
    _, _, result = in_study
    client, parents, trials = runs_of()
    pruned_seen = 0
    for trial in result.handle.study.get_trials():
        if trial.state.name not in ("COMPLETE", "PRUNED"):
            continue
        run = next(r for r in trials if r.data.tags["deepfm.trial_number"] == str(trial.number))
        curve = client.get_metric_history(run.info.run_id, "epoch_val_auc")
        assert not {"val_auc", "val_logloss", "best_val_auc", "best_val_logloss"} & set(run.data.metrics)
        assert run.data.metrics["score_val_auc"] == pytest.approx(max(m.value for m in curve))
        assert run.data.metrics["best_epoch"] == max(curve, key=lambda m: m.value).step + 1  # counted from 1
        if trial.state.name == "COMPLETE":
            assert run.data.metrics["score_val_auc"] == pytest.approx(trial.value)
            assert "pruned_at_epoch" not in run.data.metrics
        else:
            pruned_seen += 1
            last = max(m.step for m in curve)
            assert run.data.metrics["pruned_at_epoch"] == last and run.data.tags["deepfm.pruned_at_epoch"] == str(last)
    assert pruned_seen, "the study should have pruned a trial"
    assert parents[0].data.metrics["score_val_auc"] == pytest.approx(result.best_trial.value)
    assert "best_val_auc" not in parents[0].data.metrics


def test_status_names_the_score_and_shows_pruned_trials_best_so_far(in_study):
    from click.testing import CliRunner

    from deepfm_tuner.tuner.cli import main
    from deepfm_tuner.tuner.trials.record import trial_score

    folder, spec, result = in_study
    out = CliRunner().invoke(main, ["status", str(folder / "tiny.yaml")])
    assert out.exit_code == 0, out.output
    header = next(line for line in out.output.splitlines() if "state" in line)
    assert "score_val_auc" in header and "best epoch" in header and " val_auc" not in header.replace("score_val_auc", "")
    assert f"best trial {result.best_trial.number}: score_val_auc {result.best_trial.value:.4f}" in out.output
    pruned = [t for t in result.handle.study.get_trials() if t.state.name == "PRUNED"]
    for trial in pruned:
        row = next(line for line in out.output.splitlines() if line.strip(" │|").startswith(f"{trial.number} "))
        best_so_far = max(trial.intermediate_values.values())
        assert trial_score(trial, "maximize") == pytest.approx(best_so_far)
        assert f"{best_so_far:.4f}" in row and f"pruned at epoch {max(trial.intermediate_values) + 1}" in row


def test_report_axes_name_the_score_and_the_epoch_curves(in_study, tmp_path):
    from deepfm_tuner.tuner.pipeline.report import write_report

    _, spec, result = in_study
    page = write_report(result.handle.study, tmp_path / "r.html", spec.metric).read_text()
    assert "score_val_auc" in page and "epoch_val_auc" in page
    assert '"text":"Objective Value"' not in page and '"text":"Intermediate Value"' not in page  # Optuna's axis titles
    assert '"yaxis":{"title":{"text":"epoch_val_auc"}}' in page


def test_best_trial_v1_config_round_trips(in_study, tmp_path):
    _, spec, result = in_study
    policy = policy_from_params(result.best_trial.params, spec.space)
    path = tmp_path / "best.yaml"
    path.write_text(policy_to_v1_yaml(policy))
    assert read_policy_yaml(path)[0] == policy
    assert policy.activation_fn == "relu" and policy.dropout == 0.0  # fixed values stay fixed


def test_only_the_best_and_the_baseline_trial_keep_a_checkpoint(in_study):
    _, _, result = in_study
    client, _, trials = runs_of()
    study = result.handle.study
    keep = {result.best_trial.user_attrs["mlflow_run_id"], study.trials[0].user_attrs["mlflow_run_id"]}
    with_checkpoint = {r.info.run_id for r in trials
                       if any(a.path == "checkpoint" for a in client.list_artifacts(r.info.run_id))}
    assert with_checkpoint == keep


def test_the_first_trial_is_the_v1_baseline_mapped_into_the_space(in_study):
    """Fixed values stay fixed; V1 defaults outside the user's choices take the closest valid value (16 -> 8,
    [128, 64, 32] -> [16] of [[16], [16, 8]]), said in a tag; 0.001 lies in the range and is kept."""
    _, spec, result = in_study
    client, _, trials = runs_of()
    first = result.handle.study.trials[0]
    assert first.user_attrs["baseline"] is True and first.state.name == "COMPLETE"
    assert [t.number for t in result.handle.study.trials if t.user_attrs.get("baseline")] == [0]
    policy = policy_from_params(first.params, spec.space)
    assert (policy.embedding_dim, policy.deep_hidden_units, policy.learning_rate) == (8, (16,), 0.001)
    assert (policy.activation_fn, policy.dropout) == ("relu", 0.0)
    run = next(r for r in trials if r.data.tags["deepfm.trial_number"] == "0")
    assert run.data.tags["deepfm.baseline"] == "true"
    assert "embedding_dim: V1 default 16 is outside the search space, baseline uses 8" in \
        run.data.tags["deepfm.baseline_adjusted"]
    assert not any(r.data.tags.get("deepfm.baseline") for r in trials if r.info.run_id != run.info.run_id)


def test_parent_run_reports_the_lift_over_the_baseline(in_study):
    _, _, result = in_study
    client, parents, _ = runs_of()
    metrics = client.get_run(parents[0].info.run_id).data.metrics
    baseline = result.handle.study.trials[0].value
    assert metrics["baseline_score_val_auc"] == pytest.approx(baseline)
    assert metrics["lift_over_baseline"] == pytest.approx(result.best_trial.value - baseline)
    assert metrics["lift_over_baseline"] >= 0  # the baseline is one of the trials the best is chosen from


def test_resume_adds_trials_without_duplicating_runs(in_tmp, study_file):
    path = study_file(study__n_trials=2)
    data = load_data(load_study(path))
    tune(load_study(path), data=data)
    result = tune(load_study(path).with_overrides(n_trials=4), data=data)
    _, parents, trials = runs_of()
    numbers = sorted(int(r.data.tags["deepfm.trial_number"]) for r in trials)
    assert len(parents) == 1 and numbers == [0, 1, 2, 3]
    assert len(result.handle.study.trials) == 4
    assert [t.number for t in result.handle.study.trials if t.user_attrs.get("baseline")] == [0]  # queued once


def test_promotion_compares_the_best_trial_with_the_baseline(in_tmp, study_file):
    """End to end: the champion's version carries gate.* and baseline.* tags; the message says whether tuning
    helped over the V1 baseline."""
    path = study_file(study__n_trials=3, study__promote=True)
    result = tune(load_study(path))
    promotion = result.promotion
    assert promotion.alias == "champion" and promotion.gate is None  # the first champion: nothing to compare
    assert promotion.baseline_message.startswith(("tuning helped: +", "no significant gain over the V1 baseline"))
    client = MlflowClient(f"sqlite:///{Path('mlruns/mlflow.db').resolve()}")
    tags = client.get_model_version(promotion.name, str(promotion.version)).tags
    assert tags["gate.decision"] == "first_champion" and tags["baseline.trial_number"] == "0"
    if result.best_trial.number == 0:
        assert float(tags["baseline.auc_diff"]) == 0.0 and float(tags["baseline.p_value"]) == 1.0
    else:
        assert {"baseline.auc_diff", "baseline.ci_low", "baseline.ci_high", "baseline.p_value"} <= set(tags)
    # another study's best trial under the same registered name: a new checkpoint, promoted through the gate (the
    # same checkpoint again is not registered again, issue #18: tests/tuner/registry/test_idempotent_promotion.py)
    other = study_file(study__name="tiny2", study__n_trials=2, study__promote=True,
                       study__registered_model=promotion.name)
    again = tune(load_study(other))
    tags = client.get_model_version(again.promotion.name, str(again.promotion.version)).tags
    assert tags["gate.require"] == "not_worse" and float(tags["gate.ci_low"]) <= float(tags["gate.ci_high"])
    assert tags["gate.decision"] in ("promoted", "kept_challenger") and "95% CI" in again.promotion.reason


def test_ctrl_c_leaves_no_running_trial_or_run(in_tmp, study_file):
    path = study_file(study__n_trials=3)

    def interrupt(trial, metrics):
        if trial.number == 1 and metrics.epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(load_study(path), on_epoch=interrupt)
    client, parents, trials = runs_of()
    assert {r.info.status for r in trials} <= {"FINISHED", "KILLED", "FAILED"}
    assert parents[0].info.status == "KILLED"
    study = optuna.load_study(study_name="tiny", storage="sqlite:///mlruns/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"] or \
        [t.state.name for t in study.trials][1] == "FAIL"
    # resuming finishes the study
    tune(load_study(path))
    study = optuna.load_study(study_name="tiny", storage="sqlite:///mlruns/optuna.db")
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 3


def test_a_worker_without_summary_leaves_the_parent_run_to_its_coordinator(in_tmp, study_file):
    """`--workers N` runs its workers with --no-summary: the parent run stays open with no report until the
    coordinator summarises once, after every worker."""
    from deepfm_tuner.tuner.pipeline.summary import summarise

    path = study_file(study__n_trials=2)
    result = tune(load_study(path), summary=False)
    client, parents, trials = runs_of()
    assert len(trials) == 2 and parents[0].info.status == "RUNNING"
    assert not [a for a in client.list_artifacts(parents[0].info.run_id) if a.path == "report"]
    summarise(result.handle)
    client, parents, _ = runs_of()
    assert parents[0].info.status == "FINISHED" and "score_val_auc" in parents[0].data.metrics


def test_the_baseline_is_never_pruned(in_tmp, study_file):
    """Two earlier trials far better at every epoch would make the median pruner stop any trial; the baseline
    still runs to the end, since it is the reference for the lift and the promotion comparison."""
    from deepfm_tuner.tuner.pipeline.handle import init_study

    path = study_file(study__n_trials=3,
                      study__pruner={"type": "median", "n_startup_trials": 0, "n_warmup_steps": 0})
    study = init_study(load_study(path)).study
    params = {"embedding_dim": 4, "deep_hidden_units": "16-8", "learning_rate": 0.01}
    distributions = {"embedding_dim": optuna.distributions.CategoricalDistribution([4, 8]),
                     "deep_hidden_units": optuna.distributions.CategoricalDistribution(["16", "16-8"]),
                     "learning_rate": optuna.distributions.FloatDistribution(1e-4, 3e-2, log=True)}
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(value=0.99, params=params, distributions=distributions,
                                                  intermediate_values={0: 0.99, 1: 0.99, 2: 0.99}))
    result = tune(load_study(path))
    baseline = next(t for t in result.handle.study.trials if t.user_attrs.get("baseline"))
    assert baseline.state.name == "COMPLETE" and len(baseline.intermediate_values) >= 2
