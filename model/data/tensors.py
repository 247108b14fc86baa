"""Encoded rows as tensors, and what training needs to walk them: the batch order of an epoch, memory budgets.

Data sets from files are encoded once into an on-disk dataset (`model.encoded`) and mapped here; `prepare`
encodes an in-memory frame the same way, for notebooks and tests.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from deepfm_tuner.model.data.frames import Split, check_labels
from deepfm_tuner.model.data.encoder import EncodedFeatures, FeatureEncoder
from deepfm_tuner.model.errors import DataError
from deepfm_tuner.model.data.schema import FeatureSchema


@dataclass
class TensorData:
    """Encoded rows as tensors on one device; training slices them by index, no DataLoader."""

    categorical: torch.Tensor
    multivalued: torch.Tensor
    numeric: torch.Tensor
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.categorical)

    @classmethod
    def from_features(cls, features: EncodedFeatures, labels: np.ndarray | None = None, device: str = "cpu") -> "TensorData":
        def move(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        return cls(move(features.categorical), move(features.multivalued), move(features.numeric),
                   None if labels is None else move(labels.astype(np.float32)))

    def rows(self, index: torch.Tensor) -> "TensorData":
        return TensorData(self.categorical[index], self.multivalued[index], self.numeric[index],
                          None if self.labels is None else self.labels[index])

    def to(self, device: str, non_blocking: bool = False) -> "TensorData":
        return TensorData(*(None if t is None else t.to(device, non_blocking=non_blocking) for t in self._tensors()))

    def pin_memory(self) -> "TensorData":
        return TensorData(*(None if t is None else t.pin_memory() for t in self._tensors()))

    def _tensors(self) -> tuple:
        return self.categorical, self.multivalued, self.numeric, self.labels

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in self._tensors() if t is not None)

    @property
    def row_bytes(self) -> int:
        return self.nbytes // max(1, len(self))


@dataclass
class PreparedData:
    """The fitted encoder and the encoded train/val/test parts (CPU tensors), plus a fingerprint of the data."""

    encoder: FeatureEncoder
    train: TensorData
    val: TensorData
    test: TensorData
    fingerprint: str
    folder: Path | None = None  # the on-disk encoded dataset these parts map, if any
    cache_hit: bool | None = None  # mapped an existing one (True) or built it (False)

    def summary(self) -> str:
        where = "" if self.folder is None else (
            f", encoded dataset {self.folder} ({'hit: mapped' if self.cache_hit else 'miss: encoded now'})")
        return (f"{len(self.train):,} train / {len(self.val):,} val / {len(self.test):,} test rows, "
                f"{len(self.encoder.schema.features)} fields, fingerprint {self.fingerprint}{where}")

    def test_frame(self) -> pd.DataFrame:
        """The raw rows of the test split (promotion scores them through the served model), read alone."""
        path = None if self.folder is None else self.folder / "test_rows.parquet"
        if path is None or not path.is_file():
            raise DataError("this dataset has no test rows; set data.test_fraction > 0 or give data.test")
        return pd.read_parquet(path)


def release_free_memory() -> None:
    """Hand memory freed by dropped frames back to the OS (Arrow's pool and glibc's heap keep it otherwise), so
    training's own allocations do not stack on top of a dead frame's pages."""
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def fingerprint_frame(df: pd.DataFrame) -> str:
    """A short, stable hash of the data's content (so runs on different data are told apart)."""
    hashed = pd.util.hash_pandas_object(df, index=False).to_numpy()
    digest = hashlib.sha256(hashed.tobytes())
    digest.update(",".join(map(str, df.columns)).encode())
    return digest.hexdigest()[:12]


def prepare(df: pd.DataFrame, schema: FeatureSchema, split: Split, source: str = "data") -> PreparedData:
    """Check labels and columns, fit the encoder on the training rows only, encode all rows once.

    Rows are encoded in split order (train, val, test back to back), so the three parts are views of one
    encoded array: the peak holds the frame and one encoded copy, never two."""
    schema.check_columns(df, source)
    labels = check_labels(df, schema.label, source)
    encoder = FeatureEncoder(schema).fit(df, rows=split.train, source=source)
    fingerprint = fingerprint_frame(df)
    order = np.concatenate([split.train, split.val, split.test])
    features = TensorData.from_features(encoder.transform(df, source=source, rows=order), labels[order])
    edges = np.cumsum([0, len(split.train), len(split.val), len(split.test)])
    parts = [features.rows(slice(int(a), int(b))) for a, b in zip(edges[:-1], edges[1:])]
    return PreparedData(encoder, *parts, fingerprint=fingerprint)


# -- walking an epoch ------------------------------------------------------------------------------------
def available_memory() -> int:
    """Bytes this process can still use: the machine's available memory, or less under a cgroup memory cap
    (v2 memory.max, v1 memory.limit_in_bytes) as containers and schedulers set."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_file, usage_file in _cgroup_memory_files():
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            available = min(available, max(0, int(limit) - usage))
    return available


def _cgroup_memory_files() -> list[tuple[str, str]]:
    files = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return files
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            files.append((f"/sys/fs/cgroup{path}/memory.max", f"/sys/fs/cgroup{path}/memory.current"))
        elif "memory" in controllers.split(","):
            base = f"/sys/fs/cgroup/memory{path}"
            files.append((f"{base}/memory.limit_in_bytes", f"{base}/memory.usage_in_bytes"))
    return files


SHUFFLE_BLOCK_BYTES = 256 << 20  # a block shuffle permutes rows inside ~256 MiB of inputs at a time


def shuffle_block_rows(data: TensorData, shuffle: str = "auto") -> int:
    """Rows per shuffle block: the whole split (a full shuffle) when it fits in half the memory left, else
    blocks of SHUFFLE_BLOCK_BYTES, so an epoch over a mapped split larger than memory touches one block's
    pages at a time instead of the whole file at random."""
    whole = len(data)
    if shuffle == "full" or (shuffle == "auto" and data.nbytes <= available_memory() // 2):
        return max(1, whole)
    return max(1, min(whole, SHUFFLE_BLOCK_BYTES // max(1, data.row_bytes)))


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, block_rows: int) -> Iterator[torch.Tensor]:
    """Row indices of each batch of one epoch: every row exactly once. Blocks of `block_rows` consecutive rows
    are visited in random order and rows are permuted inside each block; with one block (block_rows >= n) this
    is a full shuffle, the same order as `torch.randperm(n)`."""
    if block_rows >= n:
        yield from torch.randperm(n, generator=generator).split(batch_size)
        return
    n_blocks = -(-n // block_rows)
    carry = torch.empty(0, dtype=torch.long)
    for block in torch.randperm(n_blocks, generator=generator).tolist():
        start = block * block_rows
        rows = torch.randperm(min(block_rows, n - start), generator=generator) + start
        rows = torch.cat([carry, rows]) if len(carry) else rows
        full = len(rows) - len(rows) % batch_size
        if full:
            yield from rows[:full].split(batch_size)
        carry = rows[full:]
    if len(carry):
        yield carry
