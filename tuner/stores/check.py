"""Both stores checked before any work: answering (servers, databases) or creatable (a writable folder for SQLite),
in seconds, creating nothing, so a wrong URI never waits behind a data step."""

from __future__ import annotations

from pathlib import Path

from deepfm_tuner.tuner.stores.disks import check_writable
from deepfm_tuner.tuner.stores.locations import Stores
from deepfm_tuner.tuner.stores.optuna_storage import resolve_storage
from deepfm_tuner.tuner.stores.tracking import check_database, check_reachable


def check_stores(stores: Stores) -> None:
    """Both stores answer (servers, databases) or can be created (a writable folder for SQLite), checked in
    seconds and creating nothing: run before the data step, so a wrong URI never waits behind an encoding."""
    storage_url, tracking_uri = stores.storage_url, stores.tracking_uri
    for url, option in ((storage_url, "--storage"), (tracking_uri, "--tracking-uri")):
        if url.startswith("sqlite:///"):
            check_writable(Path(url.removeprefix("sqlite:///")).parent,
                           f"run from a writable directory, free some space, or pass {option} with a "
                           f"sqlite:///PATH on a writable disk")
    if not storage_url.startswith("sqlite:///"):
        check_database(resolve_storage(storage_url), "Optuna storage", "--storage")
    if not tracking_uri.startswith("sqlite:///"):
        check_reachable(tracking_uri)
