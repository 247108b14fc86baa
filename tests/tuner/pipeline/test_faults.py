"""Issue #11 items 13 and 16: a full artifact disk during a study, `deepfm promote` with a wrong study name, and
trials that record exactly what they trained."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from support import assert_one_line_error, run, write_study

STUDY = {"study": {"name": "t", "n_trials": 1, "promote": False}, "data": {"synthetic": {"rows": 600}},
         "training": {"batch_size": 256, "max_epochs": 1, "device": "cpu", "threads": 1},
         "policy_configs": {"scoring_policy": {"embedding_dim": 4, "deep_hidden_units": [8], "dropout": 0.0}}}


def local_client(directory) -> MlflowClient:
    uri = f"sqlite:///{directory}/mlruns/mlflow.db"
    return MlflowClient(tracking_uri=uri)


# -- 13: the artifact disk fills up during a study --------------------------------------------------
@pytest.fixture()
def full_artifact_root(in_tmp):
    """mlruns/artifacts on a 256 KiB tmpfs, filled up: every artifact upload fails with ENOSPC."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    root = in_tmp / "mlruns" / "artifacts"
    root.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(root)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        with open(root / "filler", "wb") as handle:
            while True:
                handle.write(bytes(4096))
                handle.flush()
    except OSError:
        pass
    yield root
    subprocess.run(["umount", str(root)], check=True)


@pytest.mark.slow
def test_a_full_artifact_disk_fails_the_trials_and_the_parent_run_with_the_reason(in_tmp, full_artifact_root,
                                                                                  study_file):
    study_file(STUDY, "s.yaml", sort_keys=False)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-m", "deepfm_tuner.tuner.cli", "tune", "s.yaml"], cwd=in_tmp, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and done.stderr.strip().splitlines()[-1] == errors[0], done.stderr
    for fragment in ("study 't' stopped on a disk error", "No space left on device", "free some space"):
        assert fragment in errors[0]
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    client = local_client(in_tmp)
    experiment = client.get_experiment_by_name("deepfm-t")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.data.tags.get("deepfm.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("deepfm.role") == "trial"]
    assert len(parent) == 1 and parent[0].info.status == "FAILED"
    assert "No space left on device" in parent[0].data.tags["deepfm.failure_reason"]
    assert trials and all(r.info.status == "FAILED" for r in trials)
    assert all("No space left on device" in r.data.tags["deepfm.failure_reason"] for r in trials)
    assert len(trials) == 1  # a full disk stays full: the study stops at the first such failure
    assert "trials_fail" in parent[0].data.metrics  # the summary completed
    left = [p.name for p in full_artifact_root.rglob("*") if p.is_file() and p.name != "filler"]
    assert left == []  # no partial checkpoint or report copy is left on the full disk


# -- 16: promote with a wrong name; status prints what was trained ----------------------------------
@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A finished one-trial study 't' in its own folder (embedding_dim fixed at 4)."""
    folder = tmp_path_factory.mktemp("tuned")
    with contextlib.chdir(folder):  # the study's relative stores (mlruns/) land in its folder
        write_study(folder, STUDY, "s.yaml", sort_keys=False)
        result = run("tune", "s.yaml")
        assert result.exit_code == 0, result.output
    return folder


@pytest.fixture()
def in_tuned(tuned, monkeypatch):
    monkeypatch.chdir(tuned)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tuned


@pytest.mark.slow
def test_promote_with_a_wrong_study_name_creates_nothing(in_tuned):
    write_study(in_tuned, STUDY, "other.yaml", sort_keys=False, study__name="tt")
    client = local_client(in_tuned)
    runs_before = len(client.search_runs([client.get_experiment_by_name("deepfm-t").experiment_id]))
    encoded_before = sorted(p.name for p in (in_tuned / "data").rglob("*"))
    result = run("promote", "other.yaml")
    assert_one_line_error(result, "no study named 'tt'", "did you mean 't'", "studies there: t")
    storage = optuna.storages.RDBStorage(f"sqlite:///{in_tuned}/mlruns/optuna.db")
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["t"]
    assert client.get_experiment_by_name("deepfm-tt") is None
    assert len(client.search_runs([client.get_experiment_by_name("deepfm-t").experiment_id])) == runs_before
    assert sorted(p.name for p in (in_tuned / "data").rglob("*")) == encoded_before
    assert client.search_registered_models() == []


@pytest.mark.slow
def test_status_prints_what_the_best_trial_trained_not_the_edited_study_file(in_tuned):
    edited = yaml.safe_load((in_tuned / "s.yaml").read_text())
    edited["policy_configs"]["scoring_policy"]["embedding_dim"] = 8
    edited["training"]["batch_size"] = 512
    write_study(in_tuned, edited, "edited.yaml", sort_keys=False)
    result = run("status", "edited.yaml")
    assert result.exit_code == 0, result.output
    assert "best trial 0 trained:" in result.output
    assert "embedding_dim: 4" in result.output and "embedding_dim: 8" not in result.output
    assert "batch_size: 256" in result.output and "deep_hidden_units: [8]" in result.output
    trial = optuna.load_study(study_name="t", storage=f"sqlite:///{in_tuned}/mlruns/optuna.db").trials[0]
    assert trial.user_attrs["trained"]["policy"]["embedding_dim"] == 4
    assert trial.user_attrs["trained"]["training"]["batch_size"] == 256
