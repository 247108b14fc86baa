"""Where the Optuna study and the MLflow runs live: resolved once, at the edge, by one rule for every command.

    Optuna storage:     --storage  >  DEEPFM_STORAGE       >  study file's study.storage       >  sqlite:///mlruns/optuna.db
    MLflow tracking:    --tracking-uri > DEEPFM_TRACKING_URI > study file's study.tracking_uri > MLFLOW_TRACKING_URI
                        > sqlite:///mlruns/mlflow.db

`storage_option` / `tracking_uri_option` / `store_options` are the one definition of the flags (click reads the
DEEPFM_* variables into them and shows them in --help). Resolving has no side effects (no folder or database is
created); opening a store is the caller's step. MLflow's process-wide settings are not touched here: every
command passes the resolved URI to an explicit client (tuner.registry._using is the one place that points
MLflow's fluent API at a client's stores, and restores it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import click

from deepfm_tuner.tuner.stores.disks import DEFAULT_OPTUNA_STORAGE, DEFAULT_TRACKING_URI

ENV_STORAGE, ENV_TRACKING_URI, ENV_MLFLOW_TRACKING_URI = "DEEPFM_STORAGE", "DEEPFM_TRACKING_URI", "MLFLOW_TRACKING_URI"


@dataclass(frozen=True)
class Stores:
    storage_url: str
    tracking_uri: str


def pick_storage(flag: str | None, spec=None, environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return (flag or environ.get(ENV_STORAGE) or (spec.storage if spec is not None else None)
            or DEFAULT_OPTUNA_STORAGE)


def pick_tracking_uri(flag: str | None, spec=None, environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return (flag or environ.get(ENV_TRACKING_URI) or (spec.tracking_uri if spec is not None else None)
            or environ.get(ENV_MLFLOW_TRACKING_URI) or DEFAULT_TRACKING_URI)


def resolve_stores(flag_storage: str | None = None, flag_tracking: str | None = None, spec=None,
                   environ: Mapping[str, str] | None = None) -> Stores:
    """The study storage and tracking URI a command uses, in the one order (module docstring)."""
    return Stores(pick_storage(flag_storage, spec, environ), pick_tracking_uri(flag_tracking, spec, environ))


# -- the one definition of the store flags ---------------------------------------------------------
def storage_option(func):
    return click.option(
        "--storage", default=None, envvar=ENV_STORAGE, show_envvar=True, metavar="URL",
        help=f"Optuna storage URL (default: study file's study.storage, else {DEFAULT_OPTUNA_STORAGE}).")(func)


def tracking_uri_option(func):
    return click.option(
        "--tracking-uri", default=None, envvar=ENV_TRACKING_URI, show_envvar=True, metavar="URI",
        help=f"MLflow tracking/registry URI (default: study file's study.tracking_uri, else ${ENV_MLFLOW_TRACKING_URI}, "
             f"else {DEFAULT_TRACKING_URI}).")(func)


def store_options(func):
    """--storage / --tracking-uri: where the Optuna study and the MLflow runs live."""
    return storage_option(tracking_uri_option(func))
