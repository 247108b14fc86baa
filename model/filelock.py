"""One cross-process lock: an flock on a file beside what it guards (released when the holder exits, even if it
is killed). Used where several workers may create the same thing at once: generated data, the encoded dataset,
a new SQLite store."""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing, never deleted: deleting it would reopen the race)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def try_file_lock(path: str | Path) -> Iterator[bool]:
    """Hold the flock on `path` if no one else does (yields True), else yield False at once: for cleaning up
    after a holder that may still be at work."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
