"""Disks that cannot be written (full, read-only, over quota, forbidden): recognised, checked before work starts,
and reported as one line naming the place and the fix; never retried."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from deepfm_tuner.model.errors import UserInputError

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
