"""Create-once study initialisation and the tuning loop of one worker.

The Optuna study, the MLflow experiment and the study's parent run are created exactly once, whoever gets
there first: `optuna.create_study(load_if_exists=False)` is the lock (the storage's unique study name), the
winner creates the parent run and records its id on the study, and every other worker waits for that id.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from sqlalchemy.exc import SQLAlchemyError

from model.config import TrainConfig
from model.dataset import PreparedData
from model.errors import ConfigError
from model.train import EpochMetrics

from .env import DEFAULT_OPTUNA_STORAGE
from .objective import ATTR_RUN_ID, TAG_FAILURE, TotalReached, make_objective
from .space import space_to_dict
from .study import StudySpec
from .tracking import StudyTracker, is_transient, resolve_tracking_uri, retry

ATTR_PARENT_RUN, ATTR_EXPERIMENT, ATTR_TRACKING_URI = "mlflow_parent_run_id", "mlflow_experiment_id", "mlflow_tracking_uri"
HEARTBEAT_SECONDS, GRACE_SECONDS = 10, 30

optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress view reports trials
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
MAX_CONSECUTIVE_FAILURES = 5


def resolve_storage(url: str | None, spec: StudySpec | None = None) -> str:
    url = url or (spec.storage if spec else None) or DEFAULT_OPTUNA_STORAGE
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")  # SQLAlchemy 2.1 would pick psycopg 3
    elif not url.startswith(("postgresql+", "mysql")):
        raise ConfigError(f"storage {url!r} is not supported; use sqlite:///PATH or postgresql+psycopg2://USER:PASS@HOST/DB")
    return url


def open_storage(url: str, tracker: StudyTracker | None = None) -> optuna.storages.RDBStorage:
    """RDB storage with heartbeats: a trial whose worker died is failed, its MLflow run closed, and re-run."""
    retry_stale = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)

    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get(ATTR_RUN_ID)
        if tracker is not None and run_id:
            try:
                tracker.set_tags(run_id, {TAG_FAILURE: "worker died (no heartbeat); retried", "deepfm.trial_state": "FAIL"})
                tracker.end_run(run_id, "FAILED")
            except Exception:  # noqa: BLE001 - the retry matters more than the bookkeeping
                pass
        retry_stale(study, trial)

    def connect() -> optuna.storages.RDBStorage:
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                                          heartbeat_stale_trial_callback=on_stale,
                                          engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None)

    try:
        return retry(connect, attempts=8)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise ConfigError(f"cannot open Optuna storage {url}: {str(exc).splitlines()[0]}; check the URL and "
                          f"that the database is up") from None


@dataclass
class StudyHandle:
    spec: StudySpec
    study: optuna.Study
    tracker: StudyTracker
    parent_run_id: str
    storage_url: str
    tracking_uri: str


def init_study(spec: StudySpec, storage_url: str | None = None, tracking_uri: str | None = None,
               wait_seconds: float = 60.0) -> StudyHandle:
    """Create (once) or load the study, its MLflow experiment and its parent run."""
    storage_url = resolve_storage(storage_url, spec)
    tracking_uri = resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    tracker = StudyTracker(tracking_uri, spec.experiment_name, spec.name)
    storage = open_storage(storage_url, tracker)
    sampler, pruner = spec.sampler.build(), spec.pruner.build(spec.training.max_epochs)
    try:
        study = retry(optuna.create_study, storage=storage, study_name=spec.name, direction=spec.direction,
                      sampler=sampler, pruner=pruner, load_if_exists=False)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
        created = False
    if study.direction.name.lower() != spec.direction:
        raise ConfigError(f"study '{spec.name}' exists with direction {study.direction.name.lower()}, but metric "
                          f"{spec.metric} needs {spec.direction}; use a new study name")
    if created:
        parent = tracker.create_parent_run(
            params={"study_name": spec.name, "metric": spec.metric, "direction": spec.direction,
                    "sampler": spec.sampler.type, "sampler_seed": spec.sampler.seed, "pruner": spec.pruner.type,
                    "n_trials": spec.n_trials, "timeout": spec.timeout, "search_space": space_to_dict(spec.space),
                    "data": spec.data.to_dict(), **{f"training.{k}": v for k, v in spec.training.to_dict().items()}},
            tags={"deepfm.storage": _redact(storage_url)})
        study.set_user_attr(ATTR_PARENT_RUN, parent)
        study.set_user_attr(ATTR_EXPERIMENT, tracker.experiment_id)
        study.set_user_attr(ATTR_TRACKING_URI, _redact(tracking_uri))
    else:
        parent = _wait_for_parent(study, wait_seconds)
    return StudyHandle(spec, study, tracker, parent, storage_url, tracking_uri)


def _wait_for_parent(study: optuna.Study, wait_seconds: float) -> str:
    deadline = time.monotonic() + wait_seconds
    while True:
        parent = study.user_attrs.get(ATTR_PARENT_RUN)
        if parent:
            return parent
        if time.monotonic() > deadline:
            raise ConfigError(f"study '{study.study_name}' has no MLflow parent run after {wait_seconds:.0f}s; "
                              f"was it created by another tool? Use a new study name")
        time.sleep(0.5)


def _redact(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db (never log passwords)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        return f"{scheme}://{creds}@{host}"
    return url


def finished_count(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def run_trials(
    handle: StudyHandle,
    prepared: PreparedData,
    control: TrainConfig,
    on_epoch: Callable[[optuna.Trial, EpochMetrics], None] | None = None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    failure_injector=None,
) -> None:
    """Run trials until the study's total (over all workers) is reached, the timeout passes, or too many fail."""
    spec, study = handle.spec, handle.study
    objective = make_objective(spec, prepared, handle.tracker, handle.parent_run_id, control, on_epoch, failure_injector)
    callbacks = []
    if spec.n_trials is not None:
        callbacks.append(optuna.study.MaxTrialsCallback(spec.n_trials, states=(
            optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)))
    consecutive = {"failures": 0}

    def stop_on_failures(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        failed = trial.state == optuna.trial.TrialState.FAIL
        consecutive["failures"] = consecutive["failures"] + 1 if failed else 0
        if consecutive["failures"] >= MAX_CONSECUTIVE_FAILURES:
            study.stop()

    callbacks.append(stop_on_failures)
    if on_trial is not None:
        callbacks.append(on_trial)
    if spec.n_trials is not None and finished_count(study) >= spec.n_trials:
        return
    retry(handle.tracker.set_status, handle.parent_run_id, "RUNNING")
    study.optimize(objective, n_trials=None, timeout=spec.timeout, callbacks=callbacks,
                   catch=(Exception,), gc_after_trial=False, show_progress_bar=False)


__all__ = ["init_study", "run_trials", "resolve_storage", "open_storage", "StudyHandle", "finished_count",
           "TotalReached", "is_transient"]
