"""Issue #18.13: `deepfm status` reads one line per trial in an 80- or 100-column terminal: one narrow column per
tuned hyperparameter under a short name, numbers in a compact form, the fixed hyperparameters stated once above."""

from __future__ import annotations

import datetime
import re

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from rich.console import Console

from deepfm_tuner.tuner.cli.show import compact, compact_seconds, print_status
from deepfm_tuner.tuner.spec.study import load_study

STUDY = {  # studies/quick.yaml's space with a fixed embedding_dim, and a tuned training knob
    "study": {"name": "wide", "n_trials": 8},
    "data": {"synthetic": {"rows": 1000}},
    "training": {"max_epochs": 4, "embedding_l2": {"low": 1.0e-5, "high": 0.1, "log": True, "zero": True}},
    "policy_configs": {"scoring_policy": {
        "embedding_dim": 8,
        "deep_hidden_units": {"choices": [[64, 32], [128, 64, 32]]},
        "activation_fn": {"choices": ["relu", "gelu"]},
        "dropout": {"low": 0.0, "high": 0.4, "step": 0.1},
        "learning_rate": {"low": 3.0e-4, "high": 1.0e-2, "log": True},
    }},
}
DISTRIBUTIONS = {
    "deep_hidden_units": CategoricalDistribution(["64-32", "128-64-32"]),
    "activation_fn": CategoricalDistribution(["relu", "gelu"]),
    "dropout": FloatDistribution(0.0, 0.4, step=0.1),
    "learning_rate": FloatDistribution(3e-4, 1e-2, log=True),
    "training.embedding_l2": FloatDistribution(1e-5, 0.1, log=True),
    "training.embedding_l2.zero": CategoricalDistribution([False, True]),
}


def eight_trials(training_knob: bool = True) -> optuna.Study:
    """A baseline, a warm-started trial, two pruned ones; durations from seconds to hours."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize")
    start = datetime.datetime(2024, 1, 1)
    for i in range(8):
        params = {"deep_hidden_units": ["64-32", "128-64-32"][i % 2], "activation_fn": ["relu", "gelu"][i % 2],
                  "dropout": round(0.1 * (i % 4), 1), "learning_rate": 3.1623e-4 * 1.6 ** i}
        if training_knob:
            params.update({"training.embedding_l2": 1.3e-4 * 2 ** i, "training.embedding_l2.zero": i == 3})
        pruned = i in (2, 5)
        attrs = {"training": {"best_epoch": i % 3, **({"pruned_at_epoch": 1, "score": 0.7012} if pruned else {})}}
        attrs.update({"baseline": True} if i == 0 else {"warm_start_from": "old#2"} if i == 6 else {})
        trial = optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
            value=None if pruned else 0.7 + i / 100, params=params,
            distributions={k: DISTRIBUTIONS[k] for k in params}, user_attrs=attrs,
            intermediate_values={0: 0.69, 1: 0.7012} if pruned else {})
        trial.datetime_start, trial.datetime_complete = start, start + datetime.timedelta(seconds=7 * 3.3 ** i)
        study.add_trial(trial)
    return study


def study_spec(folder, training_knob: bool):
    document = yaml.safe_load(yaml.safe_dump(STUDY))
    if not training_knob:
        del document["training"]["embedding_l2"]
    (folder / "wide.yaml").write_text(yaml.safe_dump(document))
    return load_study(folder / "wide.yaml")


@pytest.fixture()
def spec(tmp_path):
    return study_spec(tmp_path, training_knob=True)


def rendered(study, spec, width: int) -> list[str]:
    console = Console(width=width, record=True)
    print_status(console, study, spec)
    return console.export_text().splitlines()


def trial_rows(lines: list[str]) -> list[str]:
    header = next(i for i, line in enumerate(lines) if line.startswith("#"))
    return [line for line in lines[header + 1:] if re.match(r"\d+ ", line)][:8]


@pytest.mark.parametrize("width", [80, 100])
def test_eight_trials_read_as_eight_lines(tmp_path, width):
    """studies/quick.yaml's five tuned hyperparameters fit 80 columns whole."""
    lines = rendered(eight_trials(training_knob=False), study_spec(tmp_path, training_knob=False), width)
    header = next(line for line in lines if line.startswith("#"))
    assert header.split() == ["#", "state", "score_val_auc", "best", "epoch", "time", "mlp", "act", "drop", "lr"]
    start = lines.index(header)
    table = lines[start + 1: start + 9]
    assert [line.split()[0] for line in table] == [str(n) for n in range(8)]  # one line each, nothing wrapped
    assert all(len(line) <= width for line in lines[start: start + 9])
    assert table[0].split()[1:] == ["complete", "0.7000", "1", "7s", "64-32", "relu", "0", "3.2e-4"]
    assert table[2].split()[1:5] == ["pruned", "at", "epoch", "2"] and "0.7012" in table[2]
    assert table[7].split()[-5:] == ["8.3h", "128-64-32", "gelu", "0.3", "8.5e-3"]
    assert lines[:3] == ["study 'wide'", "fixed: embedding_dim 8",
                         "tuned: mlp=deep_hidden_units, act=activation_fn, drop=dropout, lr=learning_rate"]
    assert lines.count("seeded trials: trial 0 (V1 baseline), trial 6 (from old#2)") == 1


def test_a_tuned_training_knob_is_a_column_too_and_the_rows_stay_one_line(spec):
    for width in (80, 100):
        lines = rendered(eight_trials(), spec, width)
        rows = trial_rows(lines)
        assert [row.split()[0] for row in rows] == [str(n) for n in range(8)]
        assert all(len(row) <= width for row in rows)
    header = next(line for line in lines if line.startswith("#"))
    assert header.split()[-1] == "emb_l2" and "score_val_auc" in header and "best epoch" in header
    assert rows[3].split()[-1] == "0"  # its `.zero` companion said yes: no penalty was applied
    assert rows[0].split()[-1] == "1.3e-4"
    assert "emb_l2=training.embedding_l2" in " ".join(lines[:4])


def test_a_terminal_too_narrow_cuts_cells_short_not_into_more_lines(spec):
    lines = rendered(eight_trials(), spec, 60)
    rows = trial_rows(lines)
    assert [row.split()[0] for row in rows] == [str(n) for n in range(8)] and all(len(r) <= 60 for r in rows)


@pytest.mark.parametrize("value, shown", [(0.1, "0.1"), (0.25, "0.25"), (0.0, "0"), (3.1623e-4, "3.2e-4"),
                                          (0.001, "1e-3"), (0.0166, "0.0166"), (1024, "1024"), (4096.0, "4096"),
                                          ((128, 64, 32), "128-64-32"), ("relu", "relu"), (True, "true")])
def test_numbers_are_compact(value, shown):
    assert compact(value) == shown


@pytest.mark.parametrize("seconds, shown", [(7.2, "7s"), (99.4, "99s"), (100, "2m"), (1500, "25m"),
                                            (6000, "1.7h"), (40000, "11h")])
def test_durations_are_compact(seconds, shown):
    assert compact_seconds(seconds) == shown


def test_a_trial_over_the_serving_budget_reads_over_budget_and_the_rows_stay_one_line(spec):
    """study.constraints: trial 7 (the best score) is over budget; trial 6 is the best trial within it."""
    source = eight_trials()
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("serving_budget", {"max_parameters": 12000})
    for trial in source.trials:
        over = trial.number == 7
        trial.system_attrs["constraints:max_parameters"] = 0.46 if over else -0.2
        trial.user_attrs["parameter_count"] = 17491 if over else 9583
        study.add_trial(trial)
    for width in (80, 100):
        lines = rendered(study, spec, width)
        rows = trial_rows(lines)
        assert [row.split()[0] for row in rows] == [str(n) for n in range(8)] and all(len(r) <= width for r in rows)
        assert rows[7].split()[1:3] == ["over", "budget"] and rows[6].split()[1] == "complete"
    assert "6 complete, 2 pruned; best trial 6: score_val_auc 0.7600" in lines
    assert "serving budget {max_parameters: 12000}: 1 complete trial over it, never champion (trial 7)" in lines
    assert "best trial 6 within budget: 9,583 parameters" in lines
    assert "best overall trial 7 (over budget): score_val_auc 0.7700, 17,491 parameters (max 12,000)" in lines
