"""Ctrl-C during `deepfm tune`: the project's one line only (no Optuna traceback), exit 130, no RUNNING run."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import ROOT


def _running_trials(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=1)) as conn:
            return conn.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
    except sqlite3.Error:  # tables not created yet
        return 0


@pytest.mark.slow
def test_ctrl_c_during_a_trial_is_one_line_and_closes_every_run(tmp_path, study_file):
    document = {"study": {"name": "t", "n_trials": 2, "pruner": "none"}, "data": {"synthetic": {"rows": 20000}},
                "training": {"batch_size": 256, "max_epochs": 50, "patience": 0, "device": "cpu", "threads": 1}}
    study_file(document, "s.yaml")
    deepfm = str(Path(sys.executable).with_name("deepfm"))
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
    proc = subprocess.Popen([deepfm, "tune", "s.yaml", "--no-promote"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while _running_trials(tmp_path / "mlruns" / "optuna.db") == 0:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no trial started in 90 s"
            time.sleep(0.2)
        time.sleep(1.0)  # inside the training loop
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Trial 0 failed" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: the running trial was marked failed"), stderr
    with contextlib.closing(sqlite3.connect(tmp_path / "mlruns" / "mlflow.db")) as conn:
        statuses = [row[0] for row in conn.execute("SELECT status FROM runs")]
    assert statuses and "RUNNING" not in statuses, statuses


def test_an_interrupt_lost_in_a_callback_is_delivered_again_without_a_traceback():
    """Python swallows an exception raised inside a weakref callback ('Exception ignored ...'): a Ctrl-C that
    lands there must still stop the run, and print nothing of its own."""
    code = """
import os, signal, time, weakref
from deepfm_tuner.tuner.trials import interrupts
interrupts.install()
class Thing: pass
def callback(ref):
    os.kill(os.getpid(), signal.SIGINT)  # the handler runs inside this callback: the exception is swallowed
    for _ in range(1000): pass
thing = Thing(); ref = weakref.ref(thing, callback)
try:
    del thing
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.01)
    print("not interrupted")
except KeyboardInterrupt:
    interrupts.handled()
    print("interrupted")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert done.stdout.strip() == "interrupted", done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
