"""MLflow bookkeeping for a study: one experiment, one parent run, one nested run per trial.

Everything goes through an explicit `MlflowClient` and explicit run ids (`mlflow.parentRunId` set by hand), so
nesting holds across threads, processes and machines, unlike the fluent API's thread-local active run.
Transient store errors (SQLite busy, a 503 from a server on a PostgreSQL deadlock) are retried with backoff.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from mlflow.entities import DatasetInput, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from deepfm_tuner.model.errors import ConfigError
from deepfm_tuner.tuner.stores.disks import is_disk_error
from deepfm_tuner.tuner.stores.locations import CONNECT_TIMEOUT_SECONDS, redact
from deepfm_tuner.tuner.stores.locks import mlflow_schema_lock
from deepfm_tuner.tuner.stores.retry import retry
from deepfm_tuner.tuner.stores.sqlite import absolute_sqlite, artifact_location_for, relocate_artifacts

MAX_PARAM_LENGTH = 6000
TAG_STUDY, TAG_ROLE = "deepfm.study", "deepfm.role"


def resolve_tracking_uri(uri: str) -> str:
    """A picked tracking URI (tuner.stores.locations) made absolute (SQLite: a moved store relocated) and checked."""
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

    # -- nested runs (trials, finalist retrains) -----------------------------------------------------------
    def start_child_run(self, parent_run_id: str, run_name: str, role: str, params: Mapping[str, Any],
                        tags: Mapping[str, str]) -> str:
        """A run nested under the study's parent run (`mlflow.parentRunId` set by hand), with its role tag."""
        all_tags = {MLFLOW_PARENT_RUN_ID: parent_run_id, TAG_STUDY: self.study_name, TAG_ROLE: role, **tags}
        run = retry(self.client.create_run, self.experiment_id, run_name=run_name, tags=all_tags)
        retry(self.client.log_batch, run.info.run_id, params=_params(params))
        return run.info.run_id

    def log_datasets(self, run_id: str, datasets: Sequence[DatasetInput]) -> None:
        """The data a run used, as MLflow dataset inputs (tuner.stores.datasets), in one call."""
        retry(self.client.log_inputs, run_id, datasets=list(datasets))

    def log_epoch(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        retry(self.client.log_batch, run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        retry(self.client.log_batch, run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def child_runs(self, parent_run_id: str, role: str, status: str | None = None) -> list:
        """The runs nested under `parent_run_id` with this role (and status), oldest first."""
        query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and tags.`{TAG_ROLE}` = '{role}'"
        if status is not None:
            query += f" and attributes.status = '{status}'"
        runs, token = [], None
        while True:
            page = retry(self.client.search_runs, [self.experiment_id], filter_string=query, max_results=1000,
                         page_token=token, order_by=["attributes.start_time ASC"])
            runs.extend(page)
            token = page.token
            if not token:
                return runs
