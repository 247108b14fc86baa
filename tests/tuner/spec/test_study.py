"""Study files: every hyperparameter fixed or tunable, defaults for unset ones, one-line errors at the edge."""

import optuna
import pytest
import yaml

from deepfm_tuner.model.errors import ConfigError
from deepfm_tuner.tuner.spec.space import DEFAULT_SPACE, Choices, Fixed, Layers, Range, parse_space, suggest_policy
from deepfm_tuner.tuner.spec.study import load_study

from support import ROOT

BASE = {"study": {"n_trials": 3}, "data": {"synthetic": {"rows": 1000}}}


STUDIES = ROOT / "studies"


@pytest.mark.parametrize("path", sorted(p for p in STUDIES.glob("*.yaml") if p.name != "policy.yaml"),
                         ids=lambda p: p.name)
def test_shipped_study_files_are_valid(path):
    spec = load_study(path)
    assert spec.name and spec.n_trials


def test_shipped_policy_file_is_the_seed_v1_config():
    from deepfm_tuner.model.config import PolicyConfig, read_policy_yaml

    assert read_policy_yaml(STUDIES / "policy.yaml")[0] == PolicyConfig()


def test_unset_hyperparameters_get_default_ranges(study_file):
    spec = load_study(study_file(BASE, "s.yaml", policy_configs={"scoring_policy": {"embedding_dim": 16}}))
    assert spec.space["embedding_dim"] == Fixed(16)
    for name in ("deep_hidden_units", "activation_fn", "dropout", "learning_rate"):
        assert spec.space[name] == DEFAULT_SPACE[name]
    assert spec.name == "s" and spec.direction == "maximize"


def test_every_kind_of_spec_parses():
    space = parse_space({
        "embedding_dim": {"low": 4, "high": 32, "log": True},
        "deep_hidden_units": {"depth": [1, 3], "width": [16, 128]},
        "activation_fn": {"choices": ["relu", "gelu"]},
        "dropout": {"low": 0.0, "high": 0.5, "step": 0.1},
        "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
    })
    assert space["embedding_dim"] == Range(4, 32, log=True, integer=True)
    assert space["deep_hidden_units"] == Layers((1, 3), (16, 128))
    assert space["activation_fn"] == Choices(("relu", "gelu"))


def test_suggested_policies_are_always_valid_and_use_stable_names():
    space = parse_space({"deep_hidden_units": {"choices": [[64, 32], [128]]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        policy = suggest_policy(trial, space)
        assert policy.deep_hidden_units in ((64, 32), (128,))
        study.tell(trial, 0.5)
    assert set(study.trials[0].params) == {"embedding_dim", "deep_hidden_units", "activation_fn", "dropout",
                                           "learning_rate"}


@pytest.mark.parametrize("block, message", [
    ({"dropout": {"low": 0.5, "high": 0.1}}, "low 0.5 > high 0.1"),
    ({"dropout": {"low": 0.1}}, "needs both 'low' and 'high'"),
    ({"learning_rate": {"low": 0.0, "high": 0.1, "log": True}}, "log range needs low > 0"),
    ({"activation_fn": {"choices": []}}, "non-empty list"),
    ({"activation_fn": {"choices": ["relu", "gleu"]}}, "did you mean 'gelu'"),
    ({"embedding_dim": {"low": 4, "hihg": 8}}, "did you mean 'high'"),
    ({"deep_hidden_units": {"depth": [3, 1], "width": [8, 16]}}, "low 3 > high 1"),
    ({"dropout": {"low": 0.1, "high": 1.5}}, "must be in [0, 1)"),
    ({"dropuot": 0.1}, "did you mean 'dropout'"),
])
def test_bad_search_spaces_are_one_line_errors(study_file, block, message):
    with pytest.raises(ConfigError) as info:
        load_study(study_file(BASE, "s.yaml", policy_configs={"scoring_policy": block}))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_scientific_notation_in_ranges_is_a_number_though_yaml_1_1_reads_it_as_text(tmp_path):
    """PyYAML reads `1e-5` (no dot) as the string '1e-5': a range's bounds (ours and Shaped's) take it as 1e-05."""
    path = tmp_path / "s.yaml"
    path.write_text("study: {n_trials: 3}\ndata: {synthetic: {rows: 1000}}\n"
                    "training:\n  embedding_l2: {low: 1e-5, high: 1e-1, log: true, zero: true}\n"
                    "policy_configs:\n  scoring_policy:\n"
                    "    learning_rate: {low: 1e-5, high: 1e-1, log: true}\n"
                    "    dropout: {type: tunable_float, min: 0, max: 5e-1}\n")
    assert yaml.safe_load(path.read_text())["policy_configs"]["scoring_policy"]["learning_rate"]["low"] == "1e-5"
    spec = load_study(path)
    assert spec.space["learning_rate"] == Range(1e-5, 1e-1, log=True)
    assert spec.space["dropout"] == Range(0, 0.5)
    assert spec.training_space["training.embedding_l2"] == Range(1e-5, 1e-1, log=True, zero=True)


@pytest.mark.parametrize("study, message", [
    ({"n_trials": 3, "sampler": "cmaes"}, "unknown sampler 'cmaes'"),
    ({"n_trials": 3, "pruner": {"type": "medain"}}, "did you mean 'median'"),
    ({"n_trials": 0}, "n_trials must be an integer >= 1"),
    ({"n_trials": 3, "metric": "auc"}, "unknown metric 'auc'"),
    ({"n_trials": 3, "trials": 4}, "unknown key 'trials'"),
    ({"n_trials": None}, "set n_trials, timeout, or both"),
])
def test_bad_study_settings_are_one_line_errors(study_file, study, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_study(study_file(BASE, "s.yaml", study=study))


def test_missing_data_block_says_what_to_write(study_file):
    path = study_file({"study": {"n_trials": 2}}, "s.yaml")
    with pytest.raises(ConfigError, match="missing 'data:' block"):
        load_study(path)


def test_promotion_and_warm_start_blocks_parse_with_defaults(study_file):
    from deepfm_tuner.tuner.spec.study import PromotionSpec, WarmStartSpec

    spec = load_study(study_file(BASE, "s.yaml"))
    assert spec.promotion == PromotionSpec("not_worse", 0.05) and spec.warm_start is None
    spec = load_study(study_file(BASE, "s.yaml", promotion={"require": "better", "alpha": 0.01},
                                 study={"n_trials": 3, "warm_start": {"from": "old", "top_k": 2}}))
    assert spec.promotion == PromotionSpec("better", 0.01)
    assert spec.warm_start == WarmStartSpec("old", 2, None)


@pytest.mark.parametrize("sections, message", [
    ({"promotion": {"require": "beter"}}, "unknown requirement 'beter' (did you mean 'better'?)"),
    ({"promotion": {"alpha": 1.5}}, "0 < alpha < 1"),
    ({"promotion": {"alpha": 0}}, "0 < alpha < 1"),
    ({"promotion": {"level": 0.1}}, "promotion: unknown key 'level'"),
    ({"study": {"n_trials": 3, "warm_start": {"top_k": 2}}}, "warm_start.from must name an earlier study"),
    ({"study": {"n_trials": 3, "warm_start": {"from": "old", "top_k": 0}}}, "top_k must be an integer >= 1"),
    ({"study": {"n_trials": 3, "warm_start": {"from": "old", "topk": 3}}}, "did you mean 'top_k'"),
])
def test_bad_promotion_and_warm_start_blocks_are_one_line_errors(study_file, sections, message):
    with pytest.raises(ConfigError) as info:
        load_study(study_file(BASE, "s.yaml", **sections))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_pruners_count_reports_hyperband_from_one_report_to_all_of_them(study_file):
    """With eval_every 0.25 a trial reports 4 times an epoch: hyperband's resource is one report, its maximum
    max_epochs x 4; the median pruner's warm-up counts reports and takes n_min_trials."""
    from deepfm_tuner.tuner.spec.study import PrunerSpec

    spec = load_study(study_file(BASE, "s.yaml", study={"n_trials": 3, "pruner": {"type": "hyperband"}},
                                 training={"max_epochs": 3, "eval_every": 0.25}))
    assert spec.training.evals_per_epoch == 4
    hyperband = spec.pruner.build(spec.training.max_epochs, spec.training.evals_per_epoch)
    assert (hyperband._min_resource, hyperband._max_resource) == (1, 12)
    assert PrunerSpec("hyperband").build(3)._max_resource == 3  # per-epoch reports: as before
    median = PrunerSpec("median", n_startup_trials=2, n_warmup_steps=4, n_min_trials=3).build(3, 4)
    assert (median._n_warmup_steps, median._n_min_trials, median._n_startup_trials) == (4, 3, 2)
    with pytest.raises(ConfigError, match="study.pruner.n_min_trials must be an integer >= 1"):
        load_study(study_file(BASE, "s.yaml", study={"n_trials": 3, "pruner": {"type": "median", "n_min_trials": 0}}))


@pytest.mark.parametrize("name", ["ctr", "deepfm-ctr", "a b", "team/ctr", "ctr:v1", "", "  ", ".", "..", "a/../b",
                                  "./ctr", "ctr.", "-x", "ctr@champion"])
def test_the_model_name_rule_is_mlflows(name):
    """Reading a study file checks the name without importing MLflow (seconds): the rule must stay MLflow's."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    from deepfm_tuner.tuner.spec.study import _mlflow_accepts

    try:
        _validate_model_name(name)
        mlflow_accepts = True
    except MlflowException:
        mlflow_accepts = False
    try:
        _mlflow_accepts(name)
        ours = True
    except (ConfigError, ValueError):
        ours = False
    assert ours == mlflow_accepts
