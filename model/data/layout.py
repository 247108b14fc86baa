"""The encoded dataset's format, shared by the build that writes it and the cache that maps it:

    <encoded_dir>/<fingerprint>/
        manifest.json       sources, schema, split settings, rows and clicks per split, file sizes + checksums
        encoder.json        the fitted FeatureEncoder (the same one the trained policy ships)
        split.npy           int8 per source row, in file order: 0 train, 1 validation, 2 test
        train/ val/ test/   categorical.npy (N, Fc) int32, multivalued.npy (N, L) int32, numeric.npy (N, Fn)
                            float32, labels.npy (N,) float32: memory-mapped, so workers share one copy
        test_rows.parquet   the raw rows of the test split (what promotion scores through the served model)

plus what a build reads (`Source` files, a `SplitRule`) and the sampled checksum the manifest records per file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
PARTS = ("train", "val", "test")
ARRAYS = ("categorical", "multivalued", "numeric", "labels")
CHECKSUM_BLOCKS, CHECKSUM_BLOCK_BYTES = 16, 1 << 16  # sampled per file: a map is checked in milliseconds


@dataclass(frozen=True)
class Source:
    """One input file and what its rows are for: 'split' rows are divided by the split rule, 'val' and 'test'
    rows (a given validation or test file) all go to that part."""

    path: str
    fmt: str
    role: str

    def identity(self) -> dict:
        stat = Path(self.path).stat()
        return {"path": str(Path(self.path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "format": self.fmt, "role": self.role}


@dataclass(frozen=True)
class SplitRule:
    val_fraction: float
    test_fraction: float
    seed: int
    order_by: str | None = None


def sampled_checksum(path: Path) -> str:
    """blake2b of the size and of CHECKSUM_BLOCKS blocks spread over the file: catches truncation and most
    overwrites at the cost of a few reads, so mapping a 3 GB dataset stays a millisecond affair."""
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as handle:
        for offset in np.linspace(0, max(0, size - CHECKSUM_BLOCK_BYTES), CHECKSUM_BLOCKS).astype(np.int64):
            handle.seek(int(offset))
            digest.update(handle.read(CHECKSUM_BLOCK_BYTES))
    return digest.hexdigest()
