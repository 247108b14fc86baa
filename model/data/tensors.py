"""Encoded rows for training: NumPy arrays per split (read-only memory maps for an on-disk dataset), turned into
tensors over the same memory the first time training asks, so mapping or checking a dataset (a cache-hit
`deepfm data prepare`) never loads torch.

Data sets from files are encoded once into an on-disk dataset (`model.data.cache`) and mapped there; `prepare`
encodes an in-memory frame the same way, for notebooks and tests. Where those tensors can live is measured here
too: the host memory this process may still use (cgroup caps included) and its budget of a GPU's memory.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from deepfm_tuner.model.data.encoder import EncodedFeatures, FeatureEncoder
from deepfm_tuner.model.data.frames import Split, check_labels
from deepfm_tuner.model.data.schema import FeatureSchema
from deepfm_tuner.model.errors import DataError

if TYPE_CHECKING:
    import torch


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
        """Tensors over the arrays' memory on the CPU (no copy: a memory map stays one), copied to another device."""
        import torch  # here, not at the top: mapping a dataset without training must not load torch

        def move(a: np.ndarray) -> torch.Tensor:
            a = np.ascontiguousarray(a)
            if a.flags.writeable:
                return torch.from_numpy(a).to(device)
            with warnings.catch_warnings():  # torch warns that a read-only memory map is not writable: the point
                warnings.simplefilter("ignore", UserWarning)
                return torch.from_numpy(a).to(device)

        return cls(move(features.categorical), move(features.multivalued), move(features.numeric),
                   None if labels is None else move(np.asarray(labels, dtype=np.float32)))

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


@dataclass(frozen=True)
class EncodedRows:
    """One split's model inputs and labels as NumPy arrays."""

    features: EncodedFeatures
    labels: np.ndarray  # (N,) float32

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self) -> TensorData:
        return TensorData.from_features(self.features, self.labels)


@dataclass(frozen=True)
class TrainSample:
    """What a study's trials train on with `data.tune_rows`: `rows` of the split's `of` training rows, drawn with
    `seed` (`rows == of`: every row, the split being no larger than tune_rows)."""

    rows: int
    of: int
    seed: int

    @property
    def whole(self) -> bool:
        return self.rows >= self.of

    def describe(self) -> str:
        if self.whole:
            return f"trials train on all {self.of:,} rows (data.tune_rows is not below the split's rows)"
        return f"trials train on {self.rows:,} of {self.of:,} rows (sample seed {self.seed})"


@dataclass
class PreparedData:
    """The fitted encoder and the encoded train/val/test rows, plus a fingerprint of the data. Each split becomes
    CPU tensors (`train`, `val`, `test`) once, on first use, over its arrays' memory."""

    encoder: FeatureEncoder
    parts: dict[str, EncodedRows]  # "train", "val", "test"
    fingerprint: str
    folder: Path | None = None  # the on-disk encoded dataset these parts map, if any
    cache_hit: bool | None = None  # mapped an existing one (True) or built it (False)
    sample: TrainSample | None = None  # with data.tune_rows: the trials' sample, which "train" holds

    @cached_property
    def train(self) -> TensorData:
        return self.parts["train"].tensors()

    @cached_property
    def val(self) -> TensorData:
        return self.parts["val"].tensors()

    @cached_property
    def test(self) -> TensorData:
        return self.parts["test"].tensors()

    def summary(self) -> str:
        where = "" if self.folder is None else (
            f", encoded dataset {self.folder} ({'hit: mapped' if self.cache_hit else 'miss: encoded now'})")
        train, val, test = (len(self.parts[part]) for part in ("train", "val", "test"))
        train = train if self.sample is None else self.sample.of
        trials = "" if self.sample is None else f"; {self.sample.describe()}"
        return (f"{train:,} train / {val:,} val / {test:,} test rows, "
                f"{len(self.encoder.schema.features)} fields, fingerprint {self.fingerprint}{where}{trials}")

    def test_frame(self, rows: int | None = None) -> pd.DataFrame:
        """The raw rows of the test split (promotion scores them through the served model), read alone; with
        `rows`, only the first ones (a latency batch reads 1,000 rows, not the split)."""
        path = None if self.folder is None else self.folder / "test_rows.parquet"
        if path is None or not path.is_file():
            raise DataError("this dataset has no test rows; set data.test_fraction > 0 or give data.test")
        if rows is None:
            return pd.read_parquet(path)
        file = pq.ParquetFile(path)
        first = next(file.iter_batches(batch_size=rows), None)
        return (file.schema_arrow.empty_table() if first is None else first).to_pandas()


# -- where tensors fit: the host memory and the device memory this process can still use -----------------------
PROCESSES_PER_GPU_ENV = "DEEPFM_PROCESSES_PER_GPU"  # set by local team mode when workers share a GPU


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


def memory_budget(free: int, total: int, reserved: int, allocated: int, sharing: int = 1) -> int:
    """Bytes of a device's memory this process can still allocate: the driver's free memory plus the blocks its
    own caching allocator holds reserved but unused (the driver counts those as used, so without them a second
    trial in one process sees the first one's freed memory as taken), and no more than its share of the device
    when `sharing` processes use it (they start together: each measuring free memory alone would over-commit)."""
    own = free + reserved - allocated
    if sharing > 1:
        own = min(own, total // sharing - allocated)
    return max(0, own)


def device_memory_budget(device: str) -> int:
    """`memory_budget` of a CUDA device, read now (DEEPFM_PROCESSES_PER_GPU: the processes sharing it)."""
    import torch  # here, not at the top: mapping a dataset without training must not load torch

    where = torch.device(device)
    free, total = torch.cuda.mem_get_info(where)
    sharing = int(os.environ.get(PROCESSES_PER_GPU_ENV) or 1)
    return memory_budget(free, total, torch.cuda.memory_reserved(where), torch.cuda.memory_allocated(where), sharing)


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
    features = encoder.transform(df, source=source, rows=order)
    labels = np.asarray(labels[order], dtype=np.float32)
    edges = np.cumsum([0, len(split.train), len(split.val), len(split.test)])
    parts = {}
    for part, a, b in zip(("train", "val", "test"), edges[:-1], edges[1:]):
        parts[part] = EncodedRows(EncodedFeatures(features.categorical[a:b], features.multivalued[a:b],
                                                 features.numeric[a:b]), labels[a:b])
    return PreparedData(encoder, parts, fingerprint=fingerprint)
