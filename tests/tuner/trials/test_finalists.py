"""Finalists over seeds: the top_k configurations re-trained with more seeds, chosen by the mean of the retrains."""

from __future__ import annotations

import contextlib
import json
import statistics
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from deepfm_tuner.model.config import PolicyConfig, TrainConfig
from deepfm_tuner.model.errors import ConfigError
from deepfm_tuner.tuner.cli import main
from deepfm_tuner.tuner.pipeline.tune import load_data, tune
from deepfm_tuner.tuner.spec.study import FinalistsSpec, load_study
from deepfm_tuner.tuner.trials import finalist_runs
from deepfm_tuner.tuner.trials.finalists import candidates, current_result, finalist_seeds, table_lines

from support import write_study

STUDY = {
    "study": {"name": "fin", "n_trials": 3, "sampler": {"type": "random", "seed": 3},
              "pruner": {"type": "none"}, "promote": False, "finalists": {"top_k": 2, "seeds": 2}},
    "data": {"synthetic": {"rows": 2000, "seed": 1, "max_cardinality": 100}},
    "training": {"batch_size": 256, "max_epochs": 2, "patience": 1, "seed": 0, "device": "cpu", "threads": 1},
    "policy_configs": {"scoring_policy": {
        "embedding_dim": {"choices": [4, 8]}, "deep_hidden_units": [16], "activation_fn": "relu", "dropout": 0.0,
        "learning_rate": {"low": 1.0e-3, "high": 3.0e-2, "log": True}}},
}


def runs(role: str):
    client = MlflowClient(f"sqlite:///{Path('mlruns/mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("deepfm-fin")
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.`deepfm.role` = '{role}'", max_results=1000)
    return client, found


def has_checkpoint(client, run_id: str) -> bool:
    return any(a.path == "checkpoint" for a in client.list_artifacts(run_id))


# -- the study file ----------------------------------------------------------------------------------------------
def test_finalists_block_parses_and_is_off_by_default(study_file):
    assert load_study(study_file(STUDY, study__finalists=None)).finalists is None
    assert load_study(study_file(STUDY)).finalists == FinalistsSpec(2, 2)
    assert load_study(study_file(STUDY, study__finalists={"top_k": 1})).finalists == FinalistsSpec(1, 3)


@pytest.mark.parametrize("block, message", [
    ({"top_k": 0}, "study.finalists.top_k must be an integer >= 1, got 0"),
    ({"seeds": 1.5}, "study.finalists.seeds must be an integer >= 1, got 1.5"),
    ({"seeds": True}, "study.finalists.seeds must be an integer >= 1, got True"),
    ({"top_k": 2, "seed": 3}, "did you mean 'seeds'"),
    (3, "study.finalists must be a mapping such as {top_k: 3, seeds: 3}"),
])
def test_bad_finalists_blocks_are_one_line_errors(study_file, block, message):
    with pytest.raises(ConfigError) as info:
        load_study(study_file(STUDY, study__finalists=block))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_bad_finalists_block_stops_tune_with_one_line_and_exit_2(in_tmp, study_file):
    path = study_file(STUDY, study__finalists={"top_k": -1, "seeds": 2})
    result = CliRunner().invoke(main, ["tune", str(path)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "study.finalists.top_k" in lines[0]
    assert not (in_tmp / "mlruns").exists()  # nothing was created


# -- the choice --------------------------------------------------------------------------------------------------
def in_memory_study(values: list[float]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    trained = {"policy": PolicyConfig().to_dict(), "training": TrainConfig(seed=7).to_dict()}
    for value in values:
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"trained": trained,
                                                                           "mlflow_run_id": f"run{value}"}))
    return study


def test_the_choice_is_the_best_mean_of_the_retrains_not_the_best_single_trial(study_file):
    """Trial 0 was the luckiest single run; trial 1's retrains are better on average, so it is chosen. The
    original values are not in the mean (reported beside it), and the std is the sample std."""
    spec = load_study(study_file(STUDY))
    study = in_memory_study([0.80, 0.79, 0.60])
    assert [t.number for t in candidates(study, 2)] == [0, 1]
    assert finalist_seeds(study.trials[0], spec) == [8, 9]  # the trial's own seed (7) plus 1..seeds
    retrains = [{"trial": 0, "seed": 8, "run_id": "a", "state": "COMPLETE", "value": 0.70, "checkpoint": "runs:/a/c"},
                {"trial": 0, "seed": 9, "run_id": "b", "state": "COMPLETE", "value": 0.71},
                {"trial": 1, "seed": 8, "run_id": "c", "state": "COMPLETE", "value": 0.75},
                {"trial": 1, "seed": 9, "run_id": "d", "state": "COMPLETE", "value": 0.74, "checkpoint": "runs:/d/c"}]
    study.set_user_attr("finalists", {"top_k": 2, "seeds": 2, "metric": "val_auc", "candidates": [0, 1],
                                      "retrains": retrains, "complete": True})
    result = current_result(study, spec)
    chosen = result.chosen
    assert chosen.trial == 1 and chosen.mean == pytest.approx(0.745) and chosen.original == 0.79
    assert chosen.std == pytest.approx(statistics.stdev([0.75, 0.74])) and chosen.n == 2
    assert (chosen.best_run_id, chosen.best_seed, chosen.checkpoint) == ("c", 8, None)  # best retrain: seed 8
    assert any("<- chosen" in line and line.split()[0] == "1" for line in table_lines(result))
    study.add_trial(optuna.trial.create_trial(value=0.81, user_attrs=study.trials[0].user_attrs))
    assert current_result(study, spec) is None  # a new trial entered the top: the record is not current


# -- end to end --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finalised(tmp_path_factory):
    """One 3-trial study with finalists {top_k: 2, seeds: 2}, promoted; tests below read its stores."""
    folder = tmp_path_factory.mktemp("finalists")
    with contextlib.chdir(folder):  # the study's relative stores (mlruns/) land in its folder
        path = write_study(folder, STUDY, study__promote=True)
        result = tune(load_study(path))
        yield folder, path, result


@pytest.fixture()
def in_finalised(finalised, monkeypatch):
    monkeypatch.chdir(finalised[0])
    return finalised


def test_finalists_produce_top_k_x_seeds_runs(in_finalised):
    """2 configurations x 2 seeds = 4 finalist runs, nested under the parent run, tagged with the trial each
    repeats (and its run) and a seed that is not the trial's own; none are counted as trial runs."""
    _, _, result = in_finalised
    study = result.handle.study
    client, finals = runs("finalist")
    _, trials = runs("trial")
    top = [t.number for t in candidates(study, 2)]
    assert len(finals) == 4 and len(trials) == 3
    assert all(r.data.tags["mlflow.parentRunId"] == result.handle.parent_run_id for r in finals)
    assert all(r.info.status == "FINISHED" and r.data.tags["deepfm.trial_state"] == "COMPLETE" for r in finals)
    pairs = sorted((int(r.data.tags["deepfm.finalist_of_trial"]), int(r.data.tags["deepfm.finalist_seed"]))
                   for r in finals)
    assert pairs == sorted((n, s) for n in top for s in (1, 2))  # training.seed 0 -> seeds 1, 2
    for r in finals:
        trial = study.trials[int(r.data.tags["deepfm.finalist_of_trial"])]
        assert r.data.tags["deepfm.finalist_of_run_id"] == trial.user_attrs["mlflow_run_id"]
        assert r.data.params["training.seed"] == r.data.tags["deepfm.finalist_seed"]
        assert r.data.params["learning_rate"] == str(trial.user_attrs["trained"]["policy"]["learning_rate"])
        assert "score_val_auc" in r.data.metrics and client.get_metric_history(r.info.run_id, "epoch_val_auc")
        assert (r.data.tags["deepfm.device"], r.data.tags["deepfm.optimizer"]) == ("cpu", "adam+lazy_adam")


def test_mean_and_std_are_recorded_on_the_study_and_the_parent_run(in_finalised):
    _, _, result = in_finalised
    client, finals = runs("finalist")
    values = {}
    for r in finals:
        values.setdefault(int(r.data.tags["deepfm.finalist_of_trial"]), []).append(r.data.metrics["score_val_auc"])
    chosen = max(values, key=lambda n: statistics.fmean(values[n]))
    assert result.finalists.chosen.trial == chosen and result.finalists.trained == 4
    record = result.handle.study.user_attrs["finalists"]
    assert record["complete"] is True and record["chosen"] == chosen
    row = next(r for r in record["results"] if r["trial"] == chosen)
    assert row["mean"] == pytest.approx(statistics.fmean(values[chosen]))
    assert row["std"] == pytest.approx(statistics.stdev(values[chosen])) and row["n"] == 2
    parent = client.get_run(result.handle.parent_run_id)
    assert parent.data.metrics["finalists_mean_score_val_auc"] == pytest.approx(row["mean"])
    assert parent.data.metrics["finalists_std_score_val_auc"] == pytest.approx(row["std"])
    assert parent.data.tags["deepfm.finalists.chosen_trial"] == str(chosen)
    Path("dl").mkdir(exist_ok=True)
    local = client.download_artifacts(parent.info.run_id, "finalists.json", str(Path("dl").resolve()))
    assert json.loads(Path(local).read_text())["chosen"] == chosen


def test_the_registered_version_is_the_chosen_configurations_best_retrain(in_finalised):
    """Promotion registers the chosen configuration's best retrain; its version says it is a finalist choice.
    Each candidate's best retrain keeps a checkpoint, the other retrains do not."""
    _, _, result = in_finalised
    chosen = result.finalists.chosen
    client, finals = runs("finalist")
    version = client.get_model_version(result.promotion.name, str(result.promotion.version))
    assert version.run_id == chosen.best_run_id
    tags = version.tags
    assert tags["chosen_by"] == "finalists_mean" and tags["trial_number"] == tags["finalist.of_trial"] == str(chosen.trial)
    assert float(tags["finalist.mean_score_val_auc"]) == pytest.approx(chosen.mean, abs=1e-6)
    assert float(tags["finalist.std_score_val_auc"]) == pytest.approx(chosen.std, abs=1e-6)
    assert tags["finalist.n"] == "2" and tags["finalist.seed"] == str(chosen.best_seed)
    assert float(tags["score_val_auc"]) == pytest.approx(max(chosen.values), abs=1e-6)
    assert tags["gate.decision"] == "first_champion" and "baseline.auc_diff" in tags  # the gate still works
    best_retrains = {f.best_run_id for f in result.finalists.finalists}
    assert {r.info.run_id for r in finals if has_checkpoint(client, r.info.run_id)} == best_retrains


def test_a_resumed_study_does_not_rerun_its_finalists(in_finalised):
    _, path, _ = in_finalised
    again = tune(load_study(path).with_overrides(promote=False))
    _, finals = runs("finalist")
    assert len(finals) == 4 and again.finalists.trained == 0
    result = CliRunner().invoke(main, ["status", str(path)], catch_exceptions=False)
    assert result.exit_code == 0 and "<- chosen" in result.output and "finalists (mean" in result.output


def test_more_trials_rerun_only_what_the_new_top_needs(in_tmp, study_file):
    path = study_file(STUDY, study__finalists={"top_k": 1, "seeds": 1}, study__n_trials=2)
    data = load_data(load_study(path))
    first = tune(load_study(path), data=data)
    second = tune(load_study(path).with_overrides(n_trials=4), data=data)
    _, finals = runs("finalist")
    top_trials = {first.finalists.chosen.trial, second.finalists.chosen.trial}
    assert len(finals) == len(top_trials)  # one retrain per configuration that was ever the top 1, never twice
    assert second.finalists.trained == (0 if len(top_trials) == 1 else 1)
    assert [f.trial for f in second.finalists.finalists] == [candidates(second.handle.study, 1)[0].number]


def test_ctrl_c_during_finalists_leaves_no_running_run_and_resume_finishes_them(in_tmp, study_file,
                                                                                 monkeypatch):
    path = study_file(STUDY)
    real_train, calls = finalist_runs.train, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(finalist_runs, "train", interrupted)
    data = load_data(load_study(path))
    with pytest.raises(KeyboardInterrupt):
        tune(load_study(path), data=data)
    client, finals = runs("finalist")
    _, parents = runs("study")
    assert sorted(r.info.status for r in finals) == ["FINISHED", "KILLED"]
    assert parents[0].info.status == "KILLED"
    killed = next(r for r in finals if r.info.status == "KILLED")
    assert killed.data.tags["deepfm.failure_reason"].startswith("interrupted")
    monkeypatch.setattr(finalist_runs, "train", real_train)
    result = tune(load_study(path), data=data)
    _, finals = runs("finalist")
    finished = [r for r in finals if r.info.status == "FINISHED"]
    assert len(finished) == 4 and result.finalists.trained == 3  # the finished retrain is reused
    assert len({(r.data.tags["deepfm.finalist_of_trial"], r.data.tags["deepfm.finalist_seed"])
                for r in finished}) == 4


@pytest.mark.slow
def test_local_workers_leave_the_finalists_to_their_coordinator(in_tmp, study_file, workers_killed_at_exit):
    """`--workers 2`: the workers run no finalists (they do not summarise); the coordinator runs them once."""
    path = study_file(STUDY, study__finalists={"top_k": 1, "seeds": 2}, study__n_trials=2)
    result = tune(load_study(path), workers=2, threads=1)
    _, finals = runs("finalist")
    assert len(finals) == 2 and result.finalists.trained == 2
    assert {r.data.tags["deepfm.finalist_of_trial"] for r in finals} == {str(result.finalists.chosen.trial)}
