"""The `deepfm` CLI, in-process with CliRunner: happy paths print results, bad input is one line and exit 2."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from deepfm_tuner.tuner.cli import main

from support import POLICY, assert_one_line_error, run


@pytest.fixture()
def policy_file(in_tmp) -> Path:
    path = in_tmp / "policy.yaml"
    path.write_text(POLICY)
    return path


def test_synth_train_evaluate_round_trip(policy_file, in_tmp):
    result = run("data", "synth", "--rows", 3000, "--max-cardinality", 200, "--out", "d")
    assert result.exit_code == 0 and "best achievable test AUC" in result.output
    result = run("train", "--policy", policy_file, "--data", "d/train.tsv", "--test", "d/test.tsv",
                 "--format", "criteo", "--out", "p")
    assert result.exit_code == 0, result.output
    assert "test AUC" in result.output and "epoch 1:" in result.output
    assert {"policy.yaml", "training.yaml", "encoder.json", "weights.pt", "metrics.json"} <= {
        f.name for f in (in_tmp / "p").iterdir()}
    assert (in_tmp / "p" / "policy.yaml").read_text() == POLICY.split("training:")[0]
    result = run("evaluate", "--model", "p", "--data", "d/test.tsv", "--format", "criteo", "--json")
    assert result.exit_code == 0 and '"auc"' in result.output


def test_train_on_a_csv_with_an_inferred_schema(policy_file, in_tmp, tiny_frame):
    tiny_frame.rename(columns={"label": "clicked"}).to_csv(in_tmp / "clicks.csv", index=False)
    result = run("train", "--policy", policy_file, "--data", "clicks.csv", "--label", "clicked", "--out", "p")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, fragments", [
    (["train", "--policy", "missing.yaml", "--synthetic", 500], ["missing.yaml does not exist"]),
    (["train", "--policy", "policy.yaml", "--data", "nope.csv"], ["nope.csv does not exist"]),
    (["train", "--policy", "policy.yaml"], ["--data FILE or --synthetic ROWS"]),
    (["train", "--policy", "policy.yaml", "--data", "bad_labels.csv"], ["column 'label' must hold labels 0 or 1"]),
    (["train", "--policy", "policy.yaml", "--data", "bad_labels.csv", "--label", "lable"], ["label column 'lable'"]),
    (["train", "--policy", "policy.yaml", "--data", "empty.csv"], ["empty.csv", "empty"]),
    (["evaluate", "--model", ".", "--data", "bad_labels.csv"], ["not a scoring-policy directory"]),
    (["tune", "missing.yaml"], ["missing.yaml does not exist"]),
    (["status", "study.yaml"], ["no study named 'study'"]),
])
def test_bad_input_is_one_line_and_exit_code_2(policy_file, in_tmp, study_file, args, fragments):
    (in_tmp / "bad_labels.csv").write_text("label,city\n0,a\n3,b\n")
    (in_tmp / "empty.csv").write_text("")
    study_file({"study": {"n_trials": 1}, "data": {"synthetic": {"rows": 500}}}, "study.yaml")
    assert_one_line_error(run(*args), *fragments)


def test_bad_policy_value_is_one_line(policy_file, in_tmp):
    policy_file.write_text(POLICY.replace("dropout: 0.0", "dropout: 1.5"))
    assert_one_line_error(run("train", "--policy", policy_file, "--synthetic", 500),
                          "scoring_policy.dropout must be in [0, 1), got 1.5")


def test_tune_with_missing_data_leaves_no_study_or_run(in_tmp, study_file):
    study_file({"study": {"n_trials": 1}, "data": {"train": "gone.csv"}}, "s.yaml")
    assert_one_line_error(run("tune", "s.yaml"), "gone.csv does not exist")
    assert not (in_tmp / "mlruns" / "optuna.db").exists() and not (in_tmp / "mlruns" / "mlflow.db").exists()


def test_every_command_has_help_with_an_example():
    def walk(group, prefix=()):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from walk(command, prefix + (name,))
            else:
                yield prefix + (name,), command

    for path, command in walk(main):
        result = run(*path, "--help")
        assert result.exit_code == 0
        assert "Example:" in (command.help or ""), f"deepfm {' '.join(path)} has no example"


def test_cli_reuses_a_complete_folder_and_regenerates_with_force(in_tmp):
    def synth(*args):
        return CliRunner().invoke(main, ["data", "synth", "--max-cardinality", "100", "--out", "d", *args])

    assert synth("--rows", "1000").output.startswith("wrote 900 train + 100 test rows to d/")
    result = synth("--rows", "1000")
    assert result.exit_code == 0 and result.output.startswith("reusing the 900 train + 100 test rows in d/")
    result = synth("--rows", "2000")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "rows 1000 there, 2000 asked" in result.output and "--out" in result.output and "--force" in result.output
    result = synth("--rows", "2000", "--force")
    assert result.exit_code == 0 and result.output.startswith("wrote 1,800 train + 200 test rows to d/")
