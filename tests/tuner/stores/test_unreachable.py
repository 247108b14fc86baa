"""An MLflow server or database that does not answer: one line naming the URI (password hidden) within 30 s."""

from __future__ import annotations

import time

import pytest
import yaml

from support import assert_one_line_error, run

DEAD_MLFLOW = "http://127.0.0.1:9"  # discard port: nothing listens, connections are refused
DEAD_POSTGRES = "postgresql+psycopg2://u:secret@127.0.0.1:9/db"


@pytest.fixture()
def study(in_tmp):
    document = {"study": {"name": "t", "n_trials": 1}, "data": {"synthetic": {"rows": 600}},
                "training": {"batch_size": 256, "max_epochs": 1, "device": "cpu", "threads": 1}}
    (in_tmp / "s.yaml").write_text(yaml.safe_dump(document))
    return in_tmp


def timed(*args):
    started = time.monotonic()
    result = run(*args)
    assert time.monotonic() - started < 30
    return result


def test_tune_with_an_unreachable_mlflow_server(study):
    assert_one_line_error(timed("tune", "s.yaml", "--tracking-uri", DEAD_MLFLOW),
                          f"cannot reach the MLflow server at {DEAD_MLFLOW}", "--tracking-uri")
    # nothing half-made: no study was created in the (local) storage
    assert_one_line_error(run("status", "s.yaml"), "no study named 't'")


def test_tune_with_an_unreachable_postgres_storage(study):
    result = timed("tune", "s.yaml", "--storage", DEAD_POSTGRES)
    assert_one_line_error(result, "cannot connect to the Optuna storage at postgresql+psycopg2://u:***@127.0.0.1:9/db",
                          "--storage")
    assert "secret" not in result.output
    assert not (study / "mlruns").exists()  # failed before any MLflow store or experiment was made


def test_status_and_pull_with_unreachable_stores(study):
    result = timed("status", "s.yaml", "--storage", DEAD_POSTGRES)
    assert_one_line_error(result, "postgresql+psycopg2://u:***@127.0.0.1:9/db")
    assert "secret" not in result.output
    assert_one_line_error(timed("pull", "m@champion", "--out", "o", "--tracking-uri", DEAD_MLFLOW), DEAD_MLFLOW)


def test_an_unreachable_postgres_tracking_store(study):
    result = timed("tune", "s.yaml", "--tracking-uri", DEAD_POSTGRES)
    assert_one_line_error(result, "cannot connect to the MLflow tracking store at postgresql+psycopg2://u:***@")
