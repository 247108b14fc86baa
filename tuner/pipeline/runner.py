"""Create-once study initialisation and the tuning loop of one worker.

The Optuna study, the MLflow experiment and the study's parent run are created exactly once, whoever gets
there first: `optuna.create_study(load_if_exists=False)` is the lock (the storage's unique study name), the
winner creates the parent run and records its id on the study, and every other worker waits for that id.
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna
from sqlalchemy.exc import SQLAlchemyError

from deepfm_tuner.model.config import TrainConfig
from deepfm_tuner.model.data.tensors import PreparedData
from deepfm_tuner.model.errors import ConfigError
from deepfm_tuner.model.train import EpochMetrics

from deepfm_tuner.tuner.stores.disks import redact  # noqa: F401 - redact is used from here by cli and workers
from deepfm_tuner.tuner.stores.locks import creation_lock
from deepfm_tuner.tuner.trials.objective import ATTR_RUN_ID, ATTR_SKIPPED, TAG_FAILURE, make_objective
from deepfm_tuner.tuner.trials.records import disk_failure
from deepfm_tuner.tuner.spec.space import space_to_dict
from deepfm_tuner.tuner.stores.locations import pick_storage, pick_tracking_uri
from deepfm_tuner.tuner.spec.study import StudySpec
from deepfm_tuner.tuner.stores.disks import check_writable
from deepfm_tuner.tuner.trials.names import ATTR_EXPERIMENT, ATTR_PARENT_RUN, ATTR_TRACKING_URI
from deepfm_tuner.tuner.stores.tracking import (CONNECT_TIMEOUT_SECONDS, StudyTracker, absolute_sqlite, check_database, check_reachable,
                       resolve_tracking_uri, retry)

HEARTBEAT_SECONDS, GRACE_SECONDS = 10, 30  # defaults; env DEEPFM_HEARTBEAT_SECONDS / DEEPFM_GRACE_SECONDS override
SQLITE_BUSY_SECONDS = 30  # several local workers share one SQLite file: wait for its lock instead of failing

optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress view reports trials


class _HideSkippedTrials(logging.Filter):
    """A trial claimed after the total was reached fails on purpose (TotalReached); no traceback for that."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        found = re.match(r"Trial (\d+) failed", message)
        if found and "TotalReached" in message:
            self.numbers.add(found.group(1))
            return False
        return not (found and found.group(1) in self.numbers and message.endswith("failed with value None."))


logging.getLogger("optuna.study._optimize").addFilter(_HideSkippedTrials())
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
MAX_CONSECUTIVE_FAILURES = 5


def resolve_storage(url: str | None, spec: StudySpec | None = None) -> str:
    url = pick_storage(url, spec)  # the one order: flag > DEEPFM_STORAGE > study file > default
    if url.startswith("sqlite:///"):
        url = absolute_sqlite(url)
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

    heartbeat, grace = heartbeat_settings()
    sqlite = url.startswith("sqlite")
    engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}} if sqlite else {"pool_pre_ping": True}
    if url.startswith("postgresql"):  # a host that drops packets: fail in seconds, not at the TCP timeout
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}

    def connect() -> optuna.storages.RDBStorage:
        with _schema_lock(url):  # first start: workers must not create Optuna's tables at the same time
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=grace,
                                              heartbeat_stale_trial_callback=on_stale, engine_kwargs=engine_kwargs)

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


@dataclass
class StudyHandle:
    spec: StudySpec
    study: optuna.Study
    tracker: StudyTracker
    parent_run_id: str
    storage_url: str
    tracking_uri: str
    notes: list[str] = field(default_factory=list)  # set at creation: baseline adjustments, warm-start skips


def _study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
        return True
    except KeyError:
        return False


def check_stores(spec: StudySpec, storage_url: str | None = None, tracking_uri: str | None = None) -> None:
    """Both stores answer (servers, databases) or can be created (a writable folder for SQLite), checked in
    seconds and creating nothing: run before the data step, so a wrong URI never waits behind an encoding."""
    storage_url, tracking_uri = pick_storage(storage_url, spec), pick_tracking_uri(tracking_uri, spec)
    for url, option in ((storage_url, "--storage"), (tracking_uri, "--tracking-uri")):
        if url.startswith("sqlite:///"):
            check_writable(Path(url.removeprefix("sqlite:///")).parent,
                           f"run from a writable directory, free some space, or pass {option} with a "
                           f"sqlite:///PATH on a writable disk")
    if not storage_url.startswith("sqlite:///"):
        check_database(resolve_storage(storage_url, spec), "Optuna storage", "--storage")
    if not tracking_uri.startswith("sqlite:///"):
        check_reachable(tracking_uri)


def init_study(spec: StudySpec, storage_url: str | None = None, tracking_uri: str | None = None,
               wait_seconds: float = 60.0) -> StudyHandle:
    """Create (once) or load the study, its MLflow experiment and its parent run.

    A new study's first trials are queued at creation: the V1 baseline, then any warm-start configurations
    (read before anything is created, so a missing source study fails first)."""
    from deepfm_tuner.tuner.trials.baseline import enqueue_baseline
    from deepfm_tuner.tuner.trials.warmstart import enqueue_warm_start, plan_warm_start

    storage_url = resolve_storage(storage_url, spec)
    check_database(storage_url, "Optuna storage", "--storage")  # unreachable: fail before any MLflow store exists
    tracking_uri = resolve_tracking_uri(pick_tracking_uri(tracking_uri, spec))
    warm = None
    if spec.warm_start is not None:
        probe = open_storage(storage_url)
        if not _study_exists(probe, spec.name):
            warm = plan_warm_start(spec, storage_url, probe)
    tracker = StudyTracker(tracking_uri, spec.experiment_name, spec.name)
    storage = open_storage(storage_url, tracker)
    sampler, pruner = spec.sampler.build(), spec.pruner.build(spec.training.max_epochs, spec.training.evals_per_epoch)
    try:
        study = retry(optuna.create_study, storage=storage, study_name=spec.name, direction=spec.direction,
                      sampler=sampler, pruner=pruner, load_if_exists=False)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        # a joining (or resuming) worker: with the study's fixed seed it would replay the creator's random
        # start-up trials, so every worker of a team would try the same parameters
        sampler.reseed_rng()
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
        created = False
    if study.direction.name.lower() != spec.direction:
        raise ConfigError(f"study '{spec.name}' exists with direction {study.direction.name.lower()}, but metric "
                          f"{spec.metric} needs {spec.direction}; use a new study name")
    notes: list[str] = []
    parent_tags = {"deepfm.storage": redact(storage_url)}
    if created:  # queued before the parent run id is published, so joining workers find them queued
        adjusted = enqueue_baseline(study, spec.space, spec.training_space)
        notes += [f"V1 baseline trial: {note}" for note in adjusted]
        if adjusted:
            parent_tags["deepfm.baseline_adjusted"] = "; ".join(adjusted)
        if spec.warm_start is not None:
            if warm is None:  # created between our check and create_study: read the source now
                warm = plan_warm_start(spec, storage_url, storage)
            queued = enqueue_warm_start(study, warm)
            notes += warm.notes + [f"warm start: queued {queued} configuration{'s' if queued != 1 else ''} of "
                                   f"study '{warm.source}'"]
            parent_tags.update({"deepfm.warm_start.from": warm.source, "deepfm.warm_start.queued": str(queued)})
            if spec.n_trials is not None and queued + 1 > spec.n_trials:
                notes.append(f"warm start: n_trials {spec.n_trials} is less than the baseline plus {queued} queued "
                             f"configurations; only the first {spec.n_trials} run (raise n_trials to run them all)")
        parent = tracker.create_parent_run(
            params={"study_name": spec.name, "metric": spec.metric, "direction": spec.direction,
                    "sampler": spec.sampler.type, "sampler_seed": spec.sampler.seed, "pruner": spec.pruner.type,
                    "n_trials": spec.n_trials, "timeout": spec.timeout, "search_space": space_to_dict({**spec.space, **spec.training_space}),
                    "data": spec.data.to_dict(), **{f"training.{k}": v for k, v in spec.training.to_dict().items()
                                                         if f"training.{k}" not in spec.training_space}},
            tags=parent_tags)
        study.set_user_attr(ATTR_PARENT_RUN, parent)
        study.set_user_attr(ATTR_EXPERIMENT, tracker.experiment_id)
        study.set_user_attr(ATTR_TRACKING_URI, redact(tracking_uri))
    else:
        parent = _wait_for_parent(study, wait_seconds)
    return StudyHandle(spec, study, tracker, parent, storage_url, tracking_uri, notes)


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
    if spec.n_trials is not None:  # stop taking trials once the rest are finished or held by other workers
        callbacks.append(optuna.study.MaxTrialsCallback(spec.n_trials, states=(
            optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)))
    consecutive = {"failures": 0, "stopped": False}

    def stop_on_failures(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.user_attrs.get(ATTR_SKIPPED):  # not run: the total was reached first
            return
        failed = trial.state == optuna.trial.TrialState.FAIL
        consecutive["failures"] = consecutive["failures"] + 1 if failed else 0
        if consecutive["failures"] >= MAX_CONSECUTIVE_FAILURES or (failed and disk_failure(trial)):  # a full disk stays full
            consecutive["stopped"] = True
            study.stop()

    callbacks.append(stop_on_failures)
    if on_trial is not None:
        callbacks.append(lambda study, trial: None if trial.user_attrs.get(ATTR_SKIPPED) else on_trial(study, trial))
    if spec.n_trials is not None and finished_count(study) >= spec.n_trials:
        return
    retry(handle.tracker.set_status, handle.parent_run_id, "RUNNING")
    deadline = None if spec.timeout is None else time.monotonic() + spec.timeout
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        study.optimize(objective, n_trials=None, timeout=remaining, callbacks=callbacks,
                       catch=(Exception,), gc_after_trial=False, show_progress_bar=False)
        if consecutive["stopped"] or spec.n_trials is None or not _wait_for_others(study, spec.n_trials, deadline):
            return


def _wait_for_others(study: optuna.Study, total: int, deadline: float | None) -> bool:
    """The rest of the total is held by other workers: wait until they finish (False) or a trial needs running
    again (True): one failed, or its worker died and the heartbeat check turned it into a WAITING retry.

    Optuna fails stale trials only when a worker starts a new trial, so a worker that simply exited here could
    leave a dead worker's trial RUNNING for ever and the study one trial short."""
    heartbeat, _ = heartbeat_settings()
    states = optuna.trial.TrialState
    while True:
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in (states.COMPLETE, states.PRUNED) for t in trials)
        running = sum(t.state == states.RUNNING for t in trials)
        if finished >= total:
            return False
        if any(t.state == states.WAITING for t in trials) or finished + running < total:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(min(heartbeat, 5))
        optuna.storages.fail_stale_trials(study)

