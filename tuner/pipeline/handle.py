"""A study's handle: the Optuna study, its MLflow experiment and parent run, created exactly once or opened as
they are.

Created once, whoever gets there first: `optuna.create_study(load_if_exists=False)` is the lock (the storage's
unique study name), the winner creates the parent run and records its id on the study, and every other worker
waits for that id. Commands that read a study (status, report, promote) open it without creating anything: a wrong
name or store is one line that says how to start the study.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import optuna
from mlflow import MlflowClient

from deepfm_tuner.model.errors import ConfigError, UserInputError
from deepfm_tuner.tuner.spec.space import space_to_dict
from deepfm_tuner.tuner.spec.study import StudySpec
from deepfm_tuner.tuner.stores.locations import Stores, missing_sqlite_store, redact, resolve_stores
from deepfm_tuner.tuner.stores.optuna_storage import existing_study, open_storage, resolve_storage
from deepfm_tuner.tuner.stores.retry import retry
from deepfm_tuner.tuner.stores.tracking import StudyTracker, check_database, check_reachable, resolve_tracking_uri
from deepfm_tuner.tuner.trials.baseline import enqueue_baseline
from deepfm_tuner.tuner.trials.constraints import check_budget, record_budget
from deepfm_tuner.tuner.trials.names import ATTR_EXPERIMENT, ATTR_PARENT_RUN, ATTR_TRACKING_URI
from deepfm_tuner.tuner.trials.runs import close_dead_run
from deepfm_tuner.tuner.trials.warmstart import enqueue_warm_start, plan_warm_start


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


def init_study(spec: StudySpec, stores: Stores | None = None, wait_seconds: float = 60.0) -> StudyHandle:
    """Create (once) or load the study, its MLflow experiment and its parent run.

    A new study's first trials are queued at creation: the V1 baseline, then any warm-start configurations
    (read before anything is created, so a missing source study fails first)."""
    stores = stores or resolve_stores(spec=spec)
    storage_url = resolve_storage(stores.storage_url)
    check_database(storage_url, "Optuna storage", "--storage")  # unreachable: fail before any MLflow store exists
    tracking_uri = resolve_tracking_uri(stores.tracking_uri)
    warm = None
    if spec.warm_start is not None:
        probe = open_storage(storage_url)
        if not _study_exists(probe, spec.name):
            warm = plan_warm_start(spec, storage_url, probe)
    tracker = StudyTracker(tracking_uri, spec.experiment_name, spec.name)
    storage = open_storage(storage_url, on_stale=functools.partial(close_dead_run, tracker))
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
        record_budget(study, spec.constraints)  # fixed from now on: each trial is judged against it
        if spec.constraints is not None and spec.sampler.type in ("random", "qmc"):
            notes.append(f"study.constraints: the {spec.sampler.type} sampler does not steer away from trials over "
                         f"budget; they are only kept from becoming champion (tpe and gp learn the budget)")
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
        check_budget(study, spec.constraints)
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


def existing_handle(spec, stores: Stores, study_path: str) -> StudyHandle:
    """A StudyHandle over an existing study, its MLflow experiment and parent run (nothing is created)."""
    study, storage_url = existing_study(spec.name, stores.storage_url, study_path)
    parent = study.user_attrs.get(ATTR_PARENT_RUN)
    if not parent:
        raise UserInputError(f"study '{spec.name}' has no MLflow parent run (was it created by another tool?); "
                             f"use 'deepfm tune {study_path}' with a new study name")
    uri = stores.tracking_uri
    path = missing_sqlite_store(uri)
    if path is not None:
        raise UserInputError(f"no MLflow store at {path} for study '{spec.name}'; point at the study's store with "
                             f"--tracking-uri/DEEPFM_TRACKING_URI")
    uri = resolve_tracking_uri(uri)
    check_reachable(uri)
    if MlflowClient(tracking_uri=uri).get_experiment_by_name(spec.experiment_name) is None:
        raise UserInputError(f"no MLflow experiment '{spec.experiment_name}' in {uri} for study '{spec.name}'; point at "
                             f"the study's store with --tracking-uri/DEEPFM_TRACKING_URI")
    return StudyHandle(spec, study, StudyTracker(uri, spec.experiment_name, spec.name), parent, storage_url, uri)
