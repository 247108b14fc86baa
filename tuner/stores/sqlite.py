"""The embedded stores: SQLite files under mlruns/ (WAL, absolute paths) with their artifacts beside them, and a
moved or copied mlruns/ made to work where it is now."""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from pathlib import Path
from typing import Callable

from sqlalchemy import event
from sqlalchemy.engine import Engine

from deepfm_tuner.tuner.stores.disks import check_writable


def absolute_sqlite(uri: str) -> str:
    """sqlite:///mlruns/x.db -> sqlite:////abs/mlruns/x.db, folder created and in WAL mode: stores are cached by
    URI, so a relative one would follow a process into another directory."""
    path = Path(uri.removeprefix("sqlite:///")).resolve()
    check_writable(path.parent, "run from a writable directory, free some space, or pass --storage/--tracking-uri "
                                "with a sqlite:///PATH on a writable disk")
    path.parent.mkdir(parents=True, exist_ok=True)
    _use_wal(path)
    _tune_connections(path)
    return f"sqlite:///{path}"


def _use_wal(path: Path) -> None:
    """Write-ahead logging (a persistent property of the file): readers never block the writer, so local workers
    share the file, and each commit costs an append instead of a journal rewrite."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass  # e.g. a read-only location: SQLite's default journal still works


_STORE_FILES: set[str] = set()  # the SQLite stores this process opened through absolute_sqlite


def _synchronous_normal(dbapi_connection, _record) -> None:
    """With WAL, synchronous=NORMAL stays corruption-safe and makes commits ~100x cheaper (a power cut may lose
    the last transactions, never the database). Only connections to our own stores are touched."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        files = {row[2] for row in dbapi_connection.execute("PRAGMA database_list")}
        if files & _STORE_FILES:
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _tune_connections(path: Path) -> None:
    """Listen for new SQLAlchemy connections once a store is opened (not at import): Optuna and MLflow create
    their engines themselves, so the listener is on the Engine class, and acts on our store files only."""
    if not _STORE_FILES:
        event.listen(Engine, "connect", _synchronous_normal)
    _STORE_FILES.add(str(path))


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
