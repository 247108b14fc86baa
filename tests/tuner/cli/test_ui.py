"""`deepfm ui` and `deepfm dashboard`: no store or a taken port is one line and exit 2; the link to the study."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from support import assert_one_line_error, run

STUDY = {"study": {"name": "t", "n_trials": 1}, "data": {"synthetic": {"rows": 600}}}


@pytest.fixture()
def ui_study(in_tmp, study_file) -> Path:
    return study_file(STUDY, "t.yaml")


@pytest.fixture()
def taken_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def no_exec(monkeypatch):
    """os.execvp would replace the test process: record the command instead."""
    calls = []
    monkeypatch.setattr(os, "execvp", lambda exe, args: calls.append(args))
    return calls


def test_ui_without_a_store_says_so_and_creates_nothing(in_tmp, no_exec):
    assert_one_line_error(run("ui"), "no MLflow store at mlruns/mlflow.db", "deepfm tune")
    assert not (in_tmp / "mlruns").exists() and not no_exec


def test_ui_on_a_taken_port_is_one_line(in_tmp, taken_port, no_exec):
    (in_tmp / "mlruns").mkdir()
    (in_tmp / "mlruns" / "mlflow.db").touch()
    assert_one_line_error(run("ui", "--port", taken_port), f"port {taken_port} on 127.0.0.1 is already in use",
                          "--port")
    assert not no_exec


def test_ui_prints_the_direct_link_to_the_study_runs(ui_study, no_exec):
    from mlflow import MlflowClient

    from deepfm_tuner.tuner.stores.locations import resolve_stores
    from deepfm_tuner.tuner.stores.tracking import resolve_tracking_uri

    experiment_id = MlflowClient(resolve_tracking_uri(resolve_stores().tracking_uri)).create_experiment("deepfm-t")
    port = free_port()
    result = run("ui", ui_study, "--port", port)
    assert result.exit_code == 0, result.output
    assert f"MLflow UI on http://127.0.0.1:{port}/#/experiments/{experiment_id} " in result.output
    assert "'Model training'" in result.output
    assert no_exec and no_exec[0][1:3] == ["ui", "--backend-store-uri"]


def test_dashboard_without_the_extra_names_the_install_command(ui_study, monkeypatch, no_exec):
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import fails as if not installed
    assert_one_line_error(run("dashboard", ui_study), "optuna-dashboard is not installed",
                          "pip install 'deepfm-tuner[dashboard]'")


def test_dashboard_without_a_storage_or_on_a_taken_port_is_one_line(ui_study, taken_port, no_exec):
    pytest.importorskip("optuna_dashboard")
    assert_one_line_error(run("dashboard", ui_study), "no Optuna storage at mlruns/optuna.db")
    (ui_study.parent / "mlruns").mkdir()
    (ui_study.parent / "mlruns" / "optuna.db").touch()
    assert_one_line_error(run("dashboard", ui_study, "--port", taken_port), f"port {taken_port}", "already in use")
    assert not no_exec


@pytest.mark.slow
def test_dashboard_serves_the_study_on_localhost(ui_study):
    pytest.importorskip("optuna_dashboard")
    from deepfm_tuner.tuner.stores.locations import resolve_stores
    from deepfm_tuner.tuner.stores.optuna_storage import resolve_storage

    optuna.create_study(storage=resolve_storage(resolve_stores().storage_url), study_name="t")
    port = free_port()
    deepfm = str(Path(sys.executable).with_name("deepfm"))
    server = subprocess.Popen([deepfm, "dashboard", str(ui_study), "--port", str(port)], cwd=ui_study.parent,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard/studies/1", timeout=2) as response:
                    status = response.status
                    break
            except OSError:
                time.sleep(0.5)
        assert status == 200, server.stderr.read() if server.poll() is not None else "no answer in 60 s"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)
        server.stderr.close()
        server.stdout.close()
