"""Cross-process locks around creating a store's tables on a brand-new database (Optuna's and MLflow's).

Two processes that open a new database at once would both run CREATE TABLE / alembic migrations and one fails
("duplicate column name", alembic's "0 found", PostgreSQL's "duplicate key ... pg_type"). SQLite: an flock on a
file beside the database (`<db>.init-lock`, or `<db>.<name>-lock`); PostgreSQL: a session advisory lock keyed
by `name`; anything else (an MLflow server, MySQL): no lock (a server migrates its own database once).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from deepfm_tuner.model.filelock import file_lock
from deepfm_tuner.tuner.stores.locations import CONNECT_TIMEOUT_SECONDS


@contextlib.contextmanager
def creation_lock(url: str, name: str, lock_suffix: str) -> Iterator[None]:
    if url.startswith("sqlite:///"):
        with file_lock(Path(url.removeprefix("sqlite:///") + lock_suffix)):
            yield
        return
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS})
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f"SELECT pg_advisory_lock(hashtext('{name}'))"))
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text(f"SELECT pg_advisory_unlock(hashtext('{name}'))"))
    finally:
        engine.dispose()


def mlflow_schema_lock(uri: str):
    """Around the first MlflowClient store creation of a tracking URI (MLflow's own migrations)."""
    return creation_lock(uri, "deepfm-mlflow-schema", ".init-lock")
