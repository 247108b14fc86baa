"""Read once, split, fit the encoder on train, encode everything once: what every trial of a study reuses."""

from __future__ import annotations

import ctypes
import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from .data import Split, check_labels
from .encoder import EncodedFeatures, FeatureEncoder
from .schema import FeatureSchema


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

    def to(self, device: str) -> "TensorData":
        return TensorData(self.categorical.to(device), self.multivalued.to(device), self.numeric.to(device),
                          None if self.labels is None else self.labels.to(device))


@dataclass
class PreparedData:
    """The fitted encoder and the encoded train/val/test parts (CPU tensors), plus a fingerprint of the data."""

    encoder: FeatureEncoder
    train: TensorData
    val: TensorData
    test: TensorData
    fingerprint: str

    def summary(self) -> str:
        return (f"{len(self.train):,} train / {len(self.val):,} val / {len(self.test):,} test rows, "
                f"{len(self.encoder.schema.features)} fields, fingerprint {self.fingerprint}")


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
