"""Checksums of a policy directory: `checksums.json` maps every file to its sha256 and size.

Written last when a policy is saved (so a directory with a valid checksums.json was written completely), checked
before a policy is loaded, pulled or scored: a truncated or altered file is a one-line `CorruptPolicyError` naming
the file and the fix, never a torch/pickle traceback. The sha256 of checksums.json itself is the policy's digest
(recorded as a tag on a registered model version, so a pull can tell that the store still holds what was
registered).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from deepfm_tuner.model.errors import DataError

CHECKSUMS_FILE = "checksums.json"
_CHUNK = 1 << 20


class CorruptPolicyError(DataError):
    """A policy file is missing, truncated or altered since it was saved."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: str | Path) -> str:
    """Record sha256 and size of every file in `directory` (sub-folders included) in checksums.json; returns the
    digest (sha256 of checksums.json)."""
    directory = Path(directory)
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE):
        files[path.relative_to(directory).as_posix()] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    (directory / CHECKSUMS_FILE).write_text(json.dumps({"algorithm": "sha256", "files": files}, indent=2) + "\n")
    return policy_digest(directory)


def policy_digest(directory: str | Path) -> str | None:
    """sha256 of the directory's checksums.json, or None when it has none (saved before checksums existed)."""
    path = Path(directory) / CHECKSUMS_FILE
    return file_sha256(path) if path.is_file() else None


def verify_checksums(directory: str | Path, fix: str, expected_digest: str | None = None) -> bool:
    """Check every file listed in checksums.json; False when the directory has none (nothing to check).

    `expected_digest` (e.g. from the registry) must match checksums.json itself. Raises CorruptPolicyError
    ('DIR/weights.pt is corrupt (...); FIX') on the first mismatch."""
    directory = Path(directory)
    path = directory / CHECKSUMS_FILE
    if not path.is_file():
        if expected_digest:
            raise CorruptPolicyError(f"{path} is missing, though the model was registered with checksums; {fix}")
        return False
    if expected_digest and file_sha256(path) != expected_digest:
        raise CorruptPolicyError(f"{path} does not match the digest recorded at registration; {fix}")
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        raise CorruptPolicyError(f"{path} is not a valid checksums file; {fix}") from None
    for name, expected in files.items():
        target = directory / name
        if not target.is_file():
            raise CorruptPolicyError(f"{target} is missing; {fix}")
        size = target.stat().st_size
        if size != expected.get("bytes", size):
            raise CorruptPolicyError(f"{target} is corrupt ({size:,} bytes, {expected['bytes']:,} expected: "
                                     f"truncated or altered); {fix}")
        if file_sha256(target) != expected.get("sha256"):
            raise CorruptPolicyError(f"{target} is corrupt (its sha256 differs from checksums.json); {fix}")
    return True
