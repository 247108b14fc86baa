"""Where the Optuna study and the MLflow runs live: resolved once, at the edge, by one rule for every command.

    Optuna storage:     --storage  >  DEEPFM_STORAGE       >  study file's study.storage       >  sqlite:///mlruns/optuna.db
    MLflow tracking:    --tracking-uri > DEEPFM_TRACKING_URI > study file's study.tracking_uri > MLFLOW_TRACKING_URI
                        > sqlite:///mlruns/mlflow.db

The CLI's `--storage` / `--tracking-uri` options (tuner.cli.options) read the DEEPFM_* variables and show them in
--help. Resolving has no side effects (no folder or database is
created); opening a store is the caller's step. MLflow's process-wide settings are not touched here: every
command passes the resolved URI to an explicit client (tuner.registry.refs.using_client is the one place that points
MLflow's fluent API at a client's stores, and restores it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

DEFAULT_OPTUNA_STORAGE = "sqlite:///mlruns/optuna.db"
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
CONNECT_TIMEOUT_SECONDS = 10  # one attempt to reach a server or database before saying it is unreachable
ENV_STORAGE, ENV_TRACKING_URI, ENV_MLFLOW_TRACKING_URI = "DEEPFM_STORAGE", "DEEPFM_TRACKING_URI", "MLFLOW_TRACKING_URI"


@dataclass(frozen=True)
class Stores:
    """Where one command's study and runs live, as picked (not yet made absolute or opened)."""

    storage_url: str
    tracking_uri: str


def _pick_storage(flag: str | None, spec=None, environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return (flag or environ.get(ENV_STORAGE) or (spec.storage if spec is not None else None)
            or DEFAULT_OPTUNA_STORAGE)


def _pick_tracking_uri(flag: str | None, spec=None, environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return (flag or environ.get(ENV_TRACKING_URI) or (spec.tracking_uri if spec is not None else None)
            or environ.get(ENV_MLFLOW_TRACKING_URI) or DEFAULT_TRACKING_URI)


def resolve_stores(flag_storage: str | None = None, flag_tracking: str | None = None, spec=None,
                   environ: Mapping[str, str] | None = None) -> Stores:
    """The study storage and tracking URI a command uses, in the one order (module docstring)."""
    return Stores(_pick_storage(flag_storage, spec, environ), _pick_tracking_uri(flag_tracking, spec, environ))


def redact(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db (never log passwords)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        return f"{scheme}://{creds}@{host}"
    return url


def missing_sqlite_store(uri: str) -> Path | None:
    """The file of a sqlite:/// URI that does not exist yet (opening it would create an empty store), else None."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        return None if path.is_file() else path
    return None
