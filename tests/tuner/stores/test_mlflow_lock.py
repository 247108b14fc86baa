"""Issue #11 item 14: two processes that open a brand-new MLflow SQLite store at the same moment both succeed
(MLflow's schema creation and migrations run under a lock beside the database file, like Optuna's)."""

from __future__ import annotations

import multiprocessing

from deepfm_tuner.tuner.stores.tracking import StudyTracker, resolve_tracking_uri

from support import killed_at_exit


def _open_tracker(uri, barrier, results) -> None:
    try:
        barrier.wait()
        StudyTracker(uri, "exp", "s")
        results.put("ok")
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        results.put(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")


def test_two_processes_creating_the_mlflow_store_at_once_both_succeed(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for attempt in range(3):  # the race (duplicate column / alembic '0 found') needs no more than this to show
        uri = resolve_tracking_uri(f"sqlite:///{tmp_path}/{attempt}/mlflow.db")
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_open_tracker, args=(uri, barrier, results)) for _ in range(2)]
        with killed_at_exit(procs):
            for proc in procs:
                proc.start()
            for proc in procs:
                proc.join(120)
        assert [results.get(timeout=5) for _ in procs] == ["ok", "ok"]
