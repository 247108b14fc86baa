"""Retry what a busy store refuses for a moment (SQLite locked, a 503 from a server on a PostgreSQL deadlock), with
jittered backoff; never what will not heal (a read-only, full or forbidden disk)."""

from __future__ import annotations

import random
import time
from typing import Any, Callable, TypeVar

from deepfm_tuner.tuner.stores.disks import DISK_ERRNOS

T = TypeVar("T")
TRANSIENT_MARKERS = ("database is locked", "deadlock", "503", "502", "504", "timed out", "connection reset",
                     "connection refused", "temporarily unavailable", "server closed the connection",
                     "could not serialize", "too many requests", "429")


PERMANENT_MARKERS = ("readonly database", "read-only file system", "disk is full", "no space left", "disk quota",
                     "permission denied", "unable to open database file")


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: a busy or briefly unavailable store; never a read-only, full or forbidden disk."""
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return False
    text = str(exc).lower()
    return not any(marker in text for marker in PERMANENT_MARKERS) and any(marker in text for marker in TRANSIENT_MARKERS)


def retry(func: Callable[..., T], *args: Any, attempts: int = 6, base_delay: float = 0.2, **kwargs: Any) -> T:
    """Call `func`, retrying transient store/HTTP errors with jittered exponential backoff."""
    for attempt in range(attempts):
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified below
            if attempt == attempts - 1 or not is_transient(exc):
                raise
            time.sleep(base_delay * (2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")
