"""REST serving: `mlflow models serve` on the registered champion returns the in-memory policy's scores."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient  # noqa: E402  (after tuner: quiet defaults)

from deepfm_tuner.model.data.frames import split_rows
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.model.train import train
from deepfm_tuner.tuner.registry.promotion import promote_policy

from conftest import TINY_POLICY, TINY_TRAINING

STARTUP_SECONDS = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(url: str, payload: dict | None = None, timeout: float = 30) -> tuple[int, str]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def served(tiny_frame, tiny_prepared, tmp_path_factory):
    """Promote the tiny policy as 'ctr_served', start `mlflow models serve` on it; always stop the server."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("serve", artifact_location=str(root / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    client.set_terminated(run_id, "FINISHED")
    result = train(tiny_prepared, TINY_POLICY, TINY_TRAINING)
    policy = ScoringPolicy(TINY_POLICY, TINY_TRAINING, tiny_prepared.encoder, result.model, {})
    policy_dir = policy.save(root / "policy")
    test_frame = tiny_frame.iloc[split_rows(len(tiny_frame), seed=0).test].reset_index(drop=True)
    promote_policy(run_id=run_id, policy_dir=policy_dir, test_frame=test_frame, registered_name="ctr_served",
                   tags={"study": "serve"}, client=client)

    port = free_port()
    venv_bin = str(Path(sys.executable).parent)  # `mlflow models serve` execs uvicorn by name
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/ctr_served@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow models serve exited with {server.returncode}: "
                            f"{(root / 'server.log').read_text()[-2000:]}")
            try:
                if http(f"{base}/ping", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not up after {STARTUP_SECONDS}s: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield base, policy, test_frame
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started
            server.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def dataframe_split(frame) -> dict:
    """The JSON body MLflow's scoring server takes: nulls for missing values, extra columns allowed."""
    rows = frame.astype(object).where(frame.notna(), None)
    return {"dataframe_split": {"columns": list(rows.columns), "data": rows.to_numpy().tolist()}}


@pytest.mark.slow
def test_served_scores_equal_the_in_memory_policy_including_missing_values(served):
    base, policy, test_frame = served
    rows = test_frame.head(50).copy()
    rows.loc[0:4, "C1"] = None
    rows.loc[5:9, "I1"] = None
    rows.loc[10, "C2"] = "never-seen-token"
    rows["request_id"] = [f"r{i}" for i in range(len(rows))]  # extra column: ignored
    status, body = http(f"{base}/invocations", dataframe_split(rows))
    assert status == 200, body
    predictions = json.loads(body)["predictions"]  # one {"probability": p} per row
    served_scores = np.array([p["probability"] for p in predictions], dtype=np.float64)
    np.testing.assert_allclose(served_scores, policy.predict(rows), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_served_request_missing_a_column_is_a_400_naming_it(served):
    base, _, test_frame = served
    status, body = http(f"{base}/invocations", dataframe_split(test_frame.head(3).drop(columns=["C5"])))
    assert status == 400 and json.loads(body)["message"].startswith("missing input column(s) C5;")
    assert len(body) < 300, body  # not the request and the whole schema echoed back
