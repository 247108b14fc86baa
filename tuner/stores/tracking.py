"""MLflow bookkeeping for a study: one experiment, one parent run, one nested run per trial.

Everything goes through an explicit `MlflowClient` and explicit run ids (`mlflow.parentRunId` set by hand), so
nesting holds across threads, processes and machines, unlike the fluent API's thread-local active run.
Transient store errors (SQLite busy, a 503 from a server on a PostgreSQL deadlock) are retried with backoff.
"""

from __future__ import annotations

import contextlib
import functools
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from mlflow.entities import Metric, Param, RunTag
from sqlalchemy import event
from sqlalchemy.engine import Engine
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from deepfm_tuner.model.errors import ConfigError

from deepfm_tuner.tuner.trials.names import TAG_FINALIST_OF_TRIAL, TAG_FINALIST_SEED, TAG_ROLE, TAG_STUDY, TAG_TRIAL  # noqa: F401
from deepfm_tuner.tuner.stores.disks import DISK_ERRNOS, check_writable, is_disk_error, quiet_defaults, redact

from deepfm_tuner.tuner.stores.locks import mlflow_schema_lock  # noqa: E402
from deepfm_tuner.tuner.stores.locations import pick_tracking_uri  # noqa: E402

quiet_defaults()

T = TypeVar("T")
TRANSIENT_MARKERS = ("database is locked", "deadlock", "503", "502", "504", "timed out", "connection reset",
                     "connection refused", "temporarily unavailable", "server closed the connection",
                     "could not serialize", "too many requests", "429")
MAX_PARAM_LENGTH = 6000
CONNECT_TIMEOUT_SECONDS = 10  # one attempt to reach a server or database before saying it is unreachable



PERMANENT_MARKERS = ("readonly database", "read-only file system", "disk is full", "no space left", "disk quota",
                     "permission denied", "unable to open database file")


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: a busy or briefly unavailable store; never a read-only, full or forbidden disk."""
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return False
    text = str(exc).lower()
    return not any(marker in text for marker in PERMANENT_MARKERS) and any(marker in text for marker in TRANSIENT_MARKERS)


def retry(func: Callable[..., T], *args: Any, attempts: int = 6, base_delay: float = 0.2, **kwargs: Any) -> T:
    """Call `func`, retrying transient store/HTTP errors with jittered exponential backoff."""
    for attempt in range(attempts):
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified below
            if attempt == attempts - 1 or not is_transient(exc):
                raise
            time.sleep(base_delay * (2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def resolve_tracking_uri(uri: str | None) -> str:
    """`uri` (already picked in tuner.stores' order), else DEEPFM_TRACKING_URI / MLFLOW_TRACKING_URI / the embedded
    SQLite store; made absolute and checked."""
    uri = pick_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        uri = absolute_sqlite(uri)
        relocate_artifacts(uri)
    elif not uri.startswith(("http://", "https://", "postgresql", "mysql", "databricks", "file:")):
        raise ConfigError(f"tracking URI {uri!r} is not supported; use sqlite:///PATH, postgresql+psycopg2://..., "
                          f"or http://HOST:PORT of an MLflow server")
    return uri


def check_reachable(uri: str) -> None:
    """An MLflow server or database that does not answer is a one-line ConfigError within seconds (MLflow's own
    HTTP client and SQL store would retry for many minutes, silently)."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=CONNECT_TIMEOUT_SECONDS).close()
        except urllib.error.HTTPError:
            pass  # it answered (a proxy without /health, an auth wall): the client reports what is wrong
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(f"cannot reach the MLflow server at {redact(uri)} ({reason}); start it, or fix "
                              f"--tracking-uri / MLFLOW_TRACKING_URI") from None
    else:
        check_database(uri, "MLflow tracking store", "--tracking-uri")


def check_database(url: str, what: str, option: str) -> None:
    """Connect once to a PostgreSQL/MySQL URL with a timeout; refused or silent is a one-line ConfigError."""
    if not url.startswith(("postgresql", "mysql")):
        return
    import sqlalchemy
    from sqlalchemy.exc import SQLAlchemyError

    connect_args = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except (SQLAlchemyError, ImportError) as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ConfigError(f"cannot connect to the {what} at {redact(url)} ({detail}); check {option} and that the "
                          f"database is up") from None


def absolute_sqlite(uri: str) -> str:
    """sqlite:///mlruns/x.db -> sqlite:////abs/mlruns/x.db, folder created and in WAL mode: stores are cached by
    URI, so a relative one would follow a process into another directory."""
    path = Path(uri.removeprefix("sqlite:///")).resolve()
    check_writable(path.parent, "run from a writable directory, free some space, or pass --storage/--tracking-uri "
                                "with a sqlite:///PATH on a writable disk")
    path.parent.mkdir(parents=True, exist_ok=True)
    _use_wal(path)
    return f"sqlite:///{path}"


def _use_wal(path: Path) -> None:
    """Write-ahead logging (a persistent property of the file): readers never block the writer, so local workers
    share the file, and each commit costs an append instead of a journal rewrite."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass  # e.g. a read-only location: SQLite's default journal still works


@event.listens_for(Engine, "connect")
def _sqlite_synchronous_normal(dbapi_connection, _record) -> None:
    """With WAL, synchronous=NORMAL stays corruption-safe and makes commits ~100x cheaper (a power cut may lose
    the last transactions, never the database). Only SQLite connections are touched."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def artifact_location_for(uri: str) -> str | None:
    """For a local SQLite store, artifacts live beside it (mlruns/artifacts); servers choose their own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "artifacts").as_uri()
    return None


# (table, column) pairs of an MLflow SQL store that hold absolute artifact locations
_LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("logged_models", "artifact_location"), ("model_versions", "storage_location"),
                     ("model_versions", "source"))


def _local_dir(location: str) -> Path | None:
    if location.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(location).path))
    return Path(location) if location.startswith("/") else None


def relocate_artifacts(uri: str, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> int:
    """Make a moved or copied embedded store work where it is now.

    MLflow stores artifact locations as absolute paths (experiments, runs, logged models, model versions), so after
    `mv project/ elsewhere/` every download (`models:/NAME@champion` included) looks in the old folder. The
    embedded store keeps its artifacts beside itself (`artifact_location_for`): a location `X/artifacts` of
    an experiment, with X not this store's folder while this folder has `artifacts/`, was written where the store
    used to be. Every stored location under X is rewritten to the same path under this folder, in one SQLite
    transaction (idempotent: concurrent workers rewrite once). Returns how many values changed."""
    if not uri.startswith("sqlite:///"):
        return 0
    db = Path(uri.removeprefix("sqlite:///"))
    here = db.resolve().parent
    if not db.is_file() or not (here / "artifacts").is_dir():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=30, isolation_level=None)) as conn:
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "experiments" not in tables:
                return 0
            old_roots = set()
            for (location,) in conn.execute("SELECT artifact_location FROM experiments"):
                path = _local_dir(location or "")
                if path is not None and path.name == "artifacts" and path.parent.resolve() != here:
                    old_roots.add(path.parent)
            if not old_roots:
                return 0
            changed = 0
            conn.execute("BEGIN IMMEDIATE")
            try:
                for old in old_roots:
                    for before, after in ((old.as_uri(), here.as_uri()), (str(old), str(here))):
                        for table, column in _LOCATION_COLUMNS:
                            if table not in tables:
                                continue
                            changed += conn.execute(
                                f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                                f"WHERE substr({column}, 1, ?) = ?",
                                (after, len(before) + 1, len(before) + 1, before + "/")).rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
    except sqlite3.Error:
        return 0  # e.g. a read-only copy: MLflow itself reports what it cannot read
    if changed:
        log(f"the MLflow store moved: {changed} artifact locations now point into {here}")
    return changed


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _params(values: Mapping[str, Any]) -> list[Param]:
    return [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in values.items()]


class StudyTracker:
    """The MLflow side of one study: its experiment and parent run, and the trial runs under it."""

    def __init__(self, tracking_uri: str, experiment_name: str, study_name: str):
        self.uri = tracking_uri
        check_reachable(tracking_uri)
        with mlflow_schema_lock(tracking_uri):  # two processes on a new database: one creates MLflow's tables
            self.client = MlflowClient(tracking_uri=tracking_uri)
            try:
                retry(lambda: self.client._tracking_client.store)  # the store (and its migrations) is made here
            except MlflowException as exc:
                raise ConfigError(f"cannot open the MLflow tracking store at {redact(tracking_uri)}: "
                                  f"{str(exc).splitlines()[0]}; check --tracking-uri") from None
        self.study_name = study_name
        self.experiment_id = self._experiment(experiment_name)

    def _experiment(self, name: str) -> str:
        try:
            found = retry(self.client.get_experiment_by_name, name)
        except MlflowException as exc:
            raise ConfigError(f"cannot reach the MLflow tracking store at {self.uri}: {str(exc).splitlines()[0]}; "
                              f"check --tracking-uri and that the server is up") from None
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise ConfigError(f"MLflow experiment '{name}' is deleted; restore it in the UI or set study.experiment")
            return found.experiment_id
        try:
            return retry(self.client.create_experiment, name, artifact_location=artifact_location_for(self.uri),
                         tags={TAG_STUDY: self.study_name})
        except MlflowException as exc:  # created by another worker at the same moment
            if "already exists" in str(exc).lower() or "unique" in str(exc).lower():
                return retry(self.client.get_experiment_by_name, name).experiment_id
            raise

    # -- parent run ----------------------------------------------------------------------------------
    def create_parent_run(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        run = retry(self.client.create_run, self.experiment_id, run_name=f"study-{self.study_name}",
                    tags={TAG_STUDY: self.study_name, TAG_ROLE: "study", **tags})
        retry(self.client.log_batch, run.info.run_id, params=_params(params))
        return run.info.run_id

    def set_status(self, run_id: str, status: str) -> None:
        retry(self.client.update_run, run_id, status=status)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        retry(self.client.set_terminated, run_id, status=status)

    def log_summary(self, run_id: str, metrics: Mapping[str, float], params: Mapping[str, Any] = (),
                    tags: Mapping[str, str] = ()) -> None:
        now = int(time.time() * 1000)
        retry(self.client.log_batch, run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
              tags=[RunTag(k, str(v)) for k, v in dict(tags).items()])
        # params are immutable in MLflow: the best trial's values are tags on the parent
        if params:
            retry(self.client.log_batch, run_id, tags=[RunTag(f"best.{k}", str(v)) for k, v in dict(params).items()])

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or folder; a disk that fills up half-way leaves no partial copy behind."""
        try:
            retry(self.client.log_artifact, run_id, str(path), artifact_path)
        except Exception as exc:
            if is_disk_error(exc):
                self._remove_partial(run_id, "/".join(filter(None, [artifact_path, Path(path).name])))
            raise

    def _remove_partial(self, run_id: str, artifact: str) -> None:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            get_artifact_repository(self.client.get_run(run_id).info.artifact_uri).delete_artifacts(artifact)
        except Exception:  # noqa: BLE001 - best effort: the disk error is what the caller reports
            pass

    # -- trial runs ----------------------------------------------------------------------------------
    def start_trial_run(self, parent_run_id: str, trial_number: int, params: Mapping[str, Any],
                        tags: Mapping[str, str]) -> str:
        all_tags = {MLFLOW_PARENT_RUN_ID: parent_run_id, TAG_STUDY: self.study_name, TAG_ROLE: "trial",
                    TAG_TRIAL: str(trial_number), **tags}
        run = retry(self.client.create_run, self.experiment_id, run_name=f"trial-{trial_number}", tags=all_tags)
        retry(self.client.log_batch, run.info.run_id, params=_params(params))
        return run.info.run_id

    def start_finalist_run(self, parent_run_id: str, trial_number: int, seed: int, params: Mapping[str, Any],
                           tags: Mapping[str, str]) -> str:
        """A finalist retrain: role `finalist` (never counted among the trial runs), tagged with its trial and seed."""
        all_tags = {MLFLOW_PARENT_RUN_ID: parent_run_id, TAG_STUDY: self.study_name, TAG_ROLE: "finalist",
                    TAG_FINALIST_OF_TRIAL: str(trial_number), TAG_FINALIST_SEED: str(seed), **tags}
        run = retry(self.client.create_run, self.experiment_id, run_name=f"finalist-{trial_number}-seed-{seed}",
                    tags=all_tags)
        retry(self.client.log_batch, run.info.run_id, params=_params(params))
        return run.info.run_id

    def log_epoch(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        retry(self.client.log_batch, run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        retry(self.client.log_batch, run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def trial_runs(self) -> list:
        """All trial runs of this study (any status), oldest first."""
        runs, token = [], None
        while True:
            page = retry(self.client.search_runs, [self.experiment_id],
                         filter_string=f"tags.`{TAG_STUDY}` = '{self.study_name}' and tags.`{TAG_ROLE}` = 'trial'",
                         max_results=1000, page_token=token, order_by=["attributes.start_time ASC"])
            runs.extend(page)
            token = page.token
            if not token:
                return runs
