"""Process-wide defaults for the embedded stores, set before mlflow is imported anywhere."""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path

from deepfm_tuner.model.errors import UserInputError

DEFAULT_ROOT = Path("mlruns")
DEFAULT_OPTUNA_STORAGE = "sqlite:///mlruns/optuna.db"
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_ARTIFACT_ROOT = "mlruns/artifacts"


# OSError numbers that say "this place cannot be written": never transient, never retried, always the user's to fix
DISK_ERRNOS = {errno.EROFS: "is on a read-only file system", errno.ENOSPC: "is on a full disk",
               errno.EDQUOT: "is over its disk quota", errno.EACCES: "is not writable (permission denied)",
               errno.EPERM: "is not writable (operation not permitted)"}


DISK_MARKERS = ("no space left on device", "disk quota exceeded", "read-only file system", "database or disk is full",
                "disk is full")


def is_disk_error(exc: BaseException | None) -> bool:
    """A full, read-only or forbidden disk (an OSError, or a library's error that carries its text)."""
    if exc is None:
        return False
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return True
    text = str(exc).lower()
    return any(marker in text for marker in DISK_MARKERS)


def disk_error(exc: OSError, path: str | Path, fix: str) -> UserInputError:
    """'cannot write to PATH: it is on a read-only file system; FIX' for an OSError in DISK_ERRNOS."""
    return UserInputError(f"cannot write to {path}: it {DISK_ERRNOS.get(exc.errno, exc.strerror or str(exc))}; {fix}")


def check_writable(path: str | Path, fix: str) -> None:
    """Prove that files can be written in the directory `path` (or, if it does not exist yet, in its nearest
    existing parent) by writing and removing a temporary file; nothing is left behind either way."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserInputError(f"cannot write to {path}: {probe} is a file, not a directory; {fix}")
    try:
        with tempfile.TemporaryFile(dir=probe) as handle:
            handle.write(bytes(4096))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise disk_error(exc, path, fix) from None


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


def quiet_defaults() -> None:
    """No telemetry, no interactive prompts, no noisy logging from the libraries we drive."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # e.g. "Creating initial MLflow database tables..."
    logging.getLogger("alembic").setLevel(logging.WARNING)
    trial_log = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _OneLineTrialFailures) for f in trial_log.filters):
        trial_log.addFilter(_OneLineTrialFailures())


class _OneLineTrialFailures(logging.Filter):
    """Optuna logs a failed trial as a warning with its traceback, then 'Trial N failed with value None.'.
    Ctrl-C: neither (the CLI prints its one line); a user error (e.g. a model too large for memory): only the
    first warning, which names the reason, without the traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.handled: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        import re

        from deepfm_tuner.model.errors import UserInputError

        error = record.exc_info[1] if record.exc_info else None
        found = re.match(r"Trial (\d+) failed", record.getMessage())
        if found and found.group(1) in self.handled and record.getMessage().endswith("failed with value None."):
            return False
        expected = isinstance(error, UserInputError) or is_disk_error(error)  # the user's to fix: no traceback
        if (isinstance(error, KeyboardInterrupt) or expected) and found:
            self.handled.add(found.group(1))
        if isinstance(error, KeyboardInterrupt):
            return False
        if expected:
            record.exc_info, record.exc_text = None, None
        return True
