"""Open a study that must already exist (status, report, dashboard, promote): never create a store, a study, an
experiment or a parent run; a wrong name or store is one line that says how to start the study."""

from __future__ import annotations

import optuna

from deepfm_tuner.model.errors import UserInputError, did_you_mean

from deepfm_tuner.tuner.stores.disks import missing_sqlite_store
from deepfm_tuner.tuner.stores.locations import resolve_stores


def existing_study(spec, storage: str | None, study_path: str) -> tuple[optuna.Study, str]:
    """(the stored study, its storage URL); a missing store or study is a one-line UserInputError."""
    from deepfm_tuner.tuner.pipeline.runner import open_storage, redact, resolve_storage

    url = resolve_stores(storage, None, spec).storage_url
    path = missing_sqlite_store(url)
    if path is not None:
        raise UserInputError(f"no study named '{spec.name}': no Optuna storage at {path}; start it with "
                             f"'deepfm tune {study_path}', or point at its store with --storage/DEEPFM_STORAGE")
    url = resolve_storage(url)
    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=spec.name, storage=storage), url
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        known = f"; studies there: {', '.join(sorted(names)[:10])}" if names else "; it holds no study"
        raise UserInputError(f"no study named '{spec.name}' in {redact(url)}{did_you_mean(spec.name, names)}{known}; "
                             f"check study.name in {study_path} or start it with 'deepfm tune {study_path}'") from None


def existing_handle(spec, storage: str | None, tracking_uri: str | None, study_path: str):
    """A StudyHandle over an existing study, its MLflow experiment and parent run (nothing is created)."""
    from mlflow import MlflowClient

    from deepfm_tuner.tuner.pipeline.runner import ATTR_PARENT_RUN, StudyHandle
    from deepfm_tuner.tuner.stores.tracking import StudyTracker, check_reachable, resolve_tracking_uri

    study, storage_url = existing_study(spec, storage, study_path)
    parent = study.user_attrs.get(ATTR_PARENT_RUN)
    if not parent:
        raise UserInputError(f"study '{spec.name}' has no MLflow parent run (was it created by another tool?); "
                             f"use 'deepfm tune {study_path}' with a new study name")
    uri = resolve_stores(storage, tracking_uri, spec).tracking_uri
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
