"""Sub-epoch evaluation in a study (training.eval_every): Optuna and MLflow get the points at the same steps, pruning
acts before an epoch ends; the kept epoch is still chosen on the full validation split. The training loop's side:
tests/model/test_subepoch.py."""

import contextlib

import optuna
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from deepfm_tuner.tuner.cli import main
from deepfm_tuner.tuner.pipeline.handle import init_study
from deepfm_tuner.tuner.pipeline.report import write_report
from deepfm_tuner.tuner.pipeline.tune import load_data, tune
from deepfm_tuner.tuner.spec.study import load_study
from deepfm_tuner.tuner.trials.names import curve_name
from deepfm_tuner.tuner.trials.record import pruned_at_epoch, pruned_where, trial_score

from support import write_study

FAKE = {"embedding_dim": 4, "deep_hidden_units": "16-8", "learning_rate": 0.01}
FAKE_DISTRIBUTIONS = {
    "embedding_dim": optuna.distributions.CategoricalDistribution([4, 8]),
    "deep_hidden_units": optuna.distributions.CategoricalDistribution(["16", "16-8"]),
    "learning_rate": optuna.distributions.FloatDistribution(1e-4, 3e-2, log=True)}


@pytest.fixture(scope="module")
def half_epochs(tmp_path_factory):
    """A 5-trial study reporting every half epoch (2 epochs: steps 0-3): the V1 baseline, two earlier trials
    at 0.99 on every step (so the median pruner stops any real trial at its first report), two real trials."""
    folder = tmp_path_factory.mktemp("subepoch")
    with contextlib.chdir(folder):  # the study's relative stores (mlruns/) land in its folder
        path = write_study(folder, study__n_trials=5,
                           study__pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
                           training__max_epochs=2, training__eval_every=0.5)
        spec = load_study(path)
        study = init_study(spec).study
        for _ in range(2):
            study.add_trial(optuna.trial.create_trial(value=0.99, params=FAKE, distributions=FAKE_DISTRIBUTIONS,
                                                      intermediate_values={s: 0.99 for s in range(4)}))
        yield folder, spec, tune(spec)


def _runs(folder):
    client = MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("deepfm-tiny")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`deepfm.role` = 'trial'")
    return client, {int(r.data.tags["deepfm.trial_number"]): r for r in runs}


@pytest.mark.slow
def test_sub_epoch_steps_match_between_optuna_and_mlflow(half_epochs):
    folder, spec, result = half_epochs
    client, runs = _runs(folder)
    trained = [t for t in result.handle.study.get_trials() if t.number in runs]
    assert len(trained) == 3
    for trial in trained:
        curve = client.get_metric_history(runs[trial.number].info.run_id, "step_val_auc")
        assert sorted(trial.intermediate_values) == sorted(m.step for m in curve) and curve
        assert {m.step: m.value for m in curve} == pytest.approx(trial.intermediate_values)
        samples = client.get_metric_history(runs[trial.number].info.run_id, "step_samples")
        assert sorted(m.step for m in samples) == sorted(trial.intermediate_values)
    baseline = result.handle.study.trials[0]
    assert baseline.state.name == "COMPLETE" and sorted(baseline.intermediate_values) == [0, 1, 2, 3]
    epochs = client.get_metric_history(runs[0].info.run_id, "epoch_val_auc")  # still per epoch, not reported
    assert sorted(m.step for m in epochs) == [0, 1]
    assert baseline.value == pytest.approx(max(m.value for m in epochs))  # the score: full split, best epoch


@pytest.mark.slow
def test_a_clearly_worse_trial_is_pruned_before_its_first_epoch_ends(half_epochs, monkeypatch):
    folder, spec, result = half_epochs
    monkeypatch.chdir(folder)  # the study's encoded dataset, mapped again
    client, runs = _runs(folder)
    n = len(load_data(spec).train)
    pruned = [t for t in result.handle.study.get_trials() if t.state.name == "PRUNED"]
    assert pruned, "a trial below 0.99 at its first half epoch should have been pruned"
    for trial in pruned:
        training = trial.user_attrs["training"]
        assert list(trial.intermediate_values) == [0] and training["pruned_at_step"] == 0
        assert n / 2 <= training["samples"] < n and training["epochs_trained"] == pytest.approx(training["samples"] / n)
        assert "score" not in training and trial_score(trial, "maximize") is None  # no full-validation score yet
        assert pruned_at_epoch(trial) is None and pruned_where(trial).startswith("pruned after 0.5")
        metrics, tags = runs[trial.number].data.metrics, runs[trial.number].data.tags
        assert metrics["pruned_at_step"] == 0 and tags["deepfm.pruned_at_step"] == "0"
        assert metrics["samples_trained"] == training["samples"]
        assert not {"score_val_auc", "pruned_at_epoch", "best_epoch"} & set(metrics)
    baseline = result.handle.study.trials[0]
    assert baseline.user_attrs["training"]["samples"] == 2 * n
    assert runs[0].data.metrics["samples_trained"] == 2 * n


@pytest.mark.slow
def test_status_and_report_read_a_sub_epoch_study(half_epochs, monkeypatch):
    folder, spec, result = half_epochs
    monkeypatch.chdir(folder)
    out = CliRunner().invoke(main, ["status", str(folder / "tiny.yaml")])
    assert out.exit_code == 0, out.output
    assert "pruned after 0.5" in out.output
    page = write_report(result.handle.study, folder / "r.html", spec.metric, curve_name(spec.metric, spec.training))
    assert '"yaxis":{"title":{"text":"step_val_auc"}}' in page.read_text()


@pytest.mark.slow
def test_a_pruned_trial_of_a_logloss_study_is_scored_by_its_lowest_logloss(tmp_path, monkeypatch, study_file):
    """One meaning per metric: a pruned trial's score_val_logloss is its best epoch by the study metric (lowest
    logloss), as a complete trial's is, not the logloss of its best-AUC epoch."""
    monkeypatch.chdir(tmp_path)
    path = study_file(study__n_trials=4, study__metric="val_logloss",
                      study__pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 1},
                      training__max_epochs=3, training__patience=0)
    spec = load_study(path)
    study = init_study(spec).study
    for _ in range(2):  # far better earlier trials: every real one is pruned after its 2nd epoch
        study.add_trial(optuna.trial.create_trial(value=0.01, params=FAKE, distributions=FAKE_DISTRIBUTIONS,
                                                  intermediate_values={s: 0.01 for s in range(3)}))
    result = tune(spec)
    client, runs = _runs(tmp_path)
    pruned = [t for t in result.handle.study.get_trials() if t.state.name == "PRUNED"]
    assert pruned
    for trial in pruned:
        curve = [m.value for m in client.get_metric_history(runs[trial.number].info.run_id, "epoch_val_logloss")]
        assert trial.user_attrs["training"]["score"] == pytest.approx(min(curve))
        assert trial.user_attrs["training"]["best_epoch"] == curve.index(min(curve))


@pytest.mark.slow
def test_step_patience_trials_stop_after_their_peak_and_score_the_kept_point(in_tmp):
    """A study with `patience_steps`: every complete trial trains less than max_epochs, its value is the kept
    point's full-split score (the run's score metric and the checkpoint say the same), and its run says why."""
    path = write_study(in_tmp, study__n_trials=2, study__pruner={"type": "none"},
                       training__max_epochs=6, training__eval_every=0.25, training__patience_steps=1,
                       training__patience=0)
    spec = load_study(path)
    result = tune(spec)
    rows = len(load_data(spec).parts["train"])
    client, runs = _runs(in_tmp)
    n = len(result.handle.study.trials)
    complete = [t for t in result.handle.study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == n == 2
    for trial in complete:
        run = runs[trial.number]
        assert run.data.metrics["samples_trained"] < 6 * rows
        assert run.data.tags["deepfm.stop_reason"].startswith("early stop: no better val_auc on the validation "
                                                              "sample for 1 evaluations")
        assert run.data.metrics["score_val_auc"] == pytest.approx(trial.value, abs=1e-9)
