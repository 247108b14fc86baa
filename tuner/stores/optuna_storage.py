"""The Optuna storage: one URL form per database (absolute SQLite, psycopg2 for PostgreSQL), opened with heartbeats
so a dead worker's trial is failed and re-run, and with Optuna's tables created once however many workers start."""

from __future__ import annotations

import os
from typing import Callable

import optuna
from sqlalchemy.exc import SQLAlchemyError

from deepfm_tuner.model.errors import ConfigError, UserInputError, did_you_mean
from deepfm_tuner.tuner.stores.locations import CONNECT_TIMEOUT_SECONDS, missing_sqlite_store, redact
from deepfm_tuner.tuner.stores.locks import creation_lock
from deepfm_tuner.tuner.stores.retry import retry
from deepfm_tuner.tuner.stores.sqlite import absolute_sqlite

HEARTBEAT_SECONDS, GRACE_SECONDS = 10, 30  # defaults; env DEEPFM_HEARTBEAT_SECONDS / DEEPFM_GRACE_SECONDS override
SQLITE_BUSY_SECONDS = 30  # several local workers share one SQLite file: wait for its lock instead of failing
StaleTrial = Callable[[optuna.trial.FrozenTrial], None]


def resolve_storage(url: str) -> str:
    """A picked storage URL (tuner.stores.locations) in the one form every process opens: SQLite made absolute
    (folder created, WAL), PostgreSQL through psycopg2; anything else is a one-line ConfigError."""
    if url.startswith("sqlite:///"):
        url = absolute_sqlite(url)
    elif url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")  # SQLAlchemy 2.1 would pick psycopg 3
    elif not url.startswith(("postgresql+", "mysql")):
        raise ConfigError(f"storage {url!r} is not supported; use sqlite:///PATH or postgresql+psycopg2://USER:PASS@HOST/DB")
    return url



MAX_STALE_RETRIES = 3  # a configuration whose workers keep dying (e.g. out of memory) is given up after 3 retries
RETRY_QUEUED_SECONDS = 30.0  # a dead worker's trial failed longer ago than this with no retry: none is coming


def open_storage(url: str, on_stale: StaleTrial | None = None) -> optuna.storages.RDBStorage:
    """RDB storage with heartbeats: a trial whose worker died is failed and re-run, and `on_stale` is told (its
    MLflow run is closed there).

    The retry is queued first: between the dead trial's FAIL and its retry's appearance, a new trial of another
    worker sees the dead trial's slot free (tuner.trials.objective counts slots against study.n_trials) and the
    study overshoots by one; closing the MLflow run first (server round trips) made that window ~100x wider. The
    objective closes the rest of it: such a trial holds its slot for RETRY_QUEUED_SECONDS or until its retry is
    there (tuner.trials.objective)."""
    retry_stale = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_STALE_RETRIES)

    def stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retry_stale(study, trial)
        if on_stale is not None:
            try:
                on_stale(trial)
            except Exception:  # noqa: BLE001 - bookkeeping: the retry is already queued
                pass

    heartbeat, grace = heartbeat_settings()
    sqlite = url.startswith("sqlite")
    engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}} if sqlite else {"pool_pre_ping": True}
    if url.startswith("postgresql"):  # a host that drops packets: fail in seconds, not at the TCP timeout
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}

    def connect() -> optuna.storages.RDBStorage:
        with _schema_lock(url):  # first start: workers must not create Optuna's tables at the same time
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=grace,
                                              heartbeat_stale_trial_callback=stale, engine_kwargs=engine_kwargs)

    try:
        return retry(connect, attempts=5)  # a refused connection is retried for a few seconds, not minutes
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise ConfigError(f"cannot open Optuna storage {redact(url)}: {str(exc).splitlines()[0]}; check the URL and "
                          f"that the database is up") from None


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds: a trial with no heartbeat for `grace` is failed and retried."""
    values = []
    for name, default in (("DEEPFM_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS), ("DEEPFM_GRACE_SECONDS", GRACE_SECONDS)):
        raw = os.environ.get(name, "").strip()
        try:
            value = int(raw) if raw else default
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(f"{name}={raw!r} must be a whole number of seconds >= 1 (default {default})")
        values.append(value)
    if values[1] <= values[0]:
        raise ConfigError(f"DEEPFM_GRACE_SECONDS ({values[1]}) must be larger than DEEPFM_HEARTBEAT_SECONDS "
                          f"({values[0]}), or live trials would be failed as stale")
    return values[0], values[1]


def _schema_lock(url: str):
    """Serialise Optuna's table creation across processes on a brand-new database.

    `RDBStorage()` runs CREATE TABLE / inserts its version row / stamps alembic; two workers doing that at once
    on an empty PostgreSQL database fail ("duplicate key value violates unique constraint pg_type_...") or leave
    two version rows. PostgreSQL: a session advisory lock; SQLite: an flock on a file beside the database.
    """
    return creation_lock(url, "deepfm-optuna-schema", ".init-lock")


def existing_study(name: str, url: str, study_path: str) -> tuple[optuna.Study, str]:
    """A study that must already exist (status, report, dashboard, promote), opened without creating a store or a
    study: (the study, its storage URL); a missing store or study is one line saying how to start it."""
    path = missing_sqlite_store(url)
    if path is not None:
        raise UserInputError(f"no study named '{name}': no Optuna storage at {path}; start it with "
                             f"'deepfm tune {study_path}', or point at its store with --storage/DEEPFM_STORAGE")
    url = resolve_storage(url)
    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage), url
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        known = f"; studies there: {', '.join(sorted(names)[:10])}" if names else "; it holds no study"
        raise UserInputError(f"no study named '{name}' in {redact(url)}{did_you_mean(name, names)}{known}; "
                             f"check study.name in {study_path} or start it with 'deepfm tune {study_path}'") from None
