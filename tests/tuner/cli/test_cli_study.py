"""`deepfm tune/status/report/ui` on a real embedded store, as a user runs them."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from support import assert_one_line_error, run, stored_policy_dir, truncate

pytestmark = pytest.mark.slow

STUDY = {
    "study": {"name": "clitiny", "n_trials": 3, "sampler": {"type": "tpe", "seed": 1, "n_startup_trials": 2},
              "promote": False},
    "data": {"synthetic": {"rows": 2000, "seed": 2, "max_cardinality": 100}},
    "training": {"batch_size": 256, "max_epochs": 2, "device": "cpu", "threads": 1},
    "policy_configs": {"scoring_policy": {"embedding_dim": 4, "deep_hidden_units": [16], "dropout": 0.0}},
}


@pytest.fixture()
def tuned(in_tmp, study_file) -> Path:
    path = study_file(STUDY)
    result = run("tune", path)
    assert result.exit_code == 0, result.output
    assert "best trial" in result.output and "policy_configs:" in result.output
    assert "V1 baseline trial 0: score_val_auc" in result.output and "lift of the best over it: +" in result.output
    return path


def test_tune_then_status_and_report(tuned, in_tmp):
    result = run("status", tuned)
    assert result.exit_code == 0
    assert "3 complete" in result.output and "best trial" in result.output
    assert "(V1 baseline)" in result.output and "lift of the best over it: +" in result.output
    result = run("report", tuned, "--out", "r.html")
    assert result.exit_code == 0
    page = (in_tmp / "r.html").read_text()
    assert "Optimization history" in page and "plotly" in page.lower()


def test_rerunning_a_finished_study_adds_nothing(tuned):
    result = run("tune", tuned)
    assert result.exit_code == 0 and "3 complete" in result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_embedded_store_on_loopback(tuned, in_tmp):
    port = free_port()
    deepfm = Path(sys.executable).with_name("deepfm")
    proc = subprocess.Popen([str(deepfm), "ui", "--port", str(port)], cwd=in_tmp, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "MLflow UI did not start"
                time.sleep(0.5)
        body = urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=deepfm-clitiny",
            timeout=5).read().decode()
        assert "deepfm-clitiny" in body
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_promote_registers_the_best_trial_as_champion(tuned, in_tmp):
    result = run("promote", tuned, "--name", "ctr")
    assert result.exit_code == 0, result.output
    assert "alias 'champion'" in result.output and "models:/ctr@champion" in result.output
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{(in_tmp / 'mlruns' / 'mlflow.db').resolve()}")
    version = client.get_model_version_by_alias("ctr", "champion")
    assert version.tags["study"] == "clitiny" and "policy_configs:" in version.tags["policy_yaml"]
    assert "V1 baseline" in result.output  # "tuning helped: ..." or "no significant gain over the V1 baseline ..."
    assert version.tags["baseline.trial_number"] == "0" and "baseline.p_value" in version.tags
    result = run("pull", "ctr@champion", "--out", "pulled")
    assert result.exit_code == 0, result.output
    assert (in_tmp / "pulled" / "policy.yaml").read_text().startswith("policy_configs:")


def test_promote_again_registers_nothing_and_a_refused_candidate_leaves_no_version(tuned, in_tmp):
    """Issue #18 item 10: re-running `deepfm promote` registers the same run once; a candidate refused because the
    champion cannot be compared leaves no version, and the line says so."""
    from mlflow import MlflowClient

    from deepfm_tuner.model.data.synth import SynthSpec, generate
    from deepfm_tuner.tuner.registry.promotion import promote_policy

    assert run("promote", tuned, "--name", "ctr").exit_code == 0
    again = run("promote", tuned, "--name", "ctr")
    assert again.exit_code == 0, again.output
    assert "ctr version 1 already holds this checkpoint, not registered again" in again.output
    assert "already the champion" in again.output
    client = MlflowClient(f"sqlite:///{(in_tmp / 'mlruns' / 'mlflow.db').resolve()}")
    assert [int(v.version) for v in client.search_model_versions("name = 'ctr'")] == [1]

    # 'other' has a champion (another run) whose stored files are damaged: the study's candidate is refused
    assert run("pull", "ctr", "--out", "pulled").exit_code == 0
    run_id = client.create_run(client.get_experiment_by_name("deepfm-clitiny").experiment_id).info.run_id
    client.set_terminated(run_id)
    frame, _ = generate(SynthSpec(**STUDY["data"]["synthetic"]))
    promote_policy(run_id=run_id, policy_dir=in_tmp / "pulled" / "policy", test_frame=frame.head(500),
                   registered_name="other", tags={}, client=client)
    truncate(stored_policy_dir(client, "other", 1) / "weights.pt")
    refused = run("promote", tuned, "--name", "other")
    assert_one_line_error(refused, "the current champion (version 1 of 'other') cannot score",
                          "no new version was kept")
    assert [int(v.version) for v in client.search_model_versions("name = 'other'")] == [1]
