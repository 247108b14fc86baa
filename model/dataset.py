"""Read once, split, fit the encoder on train, encode everything once: what every trial of a study reuses."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
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


def fingerprint_frame(df: pd.DataFrame) -> str:
    """A short, stable hash of the data's content (so runs on different data are told apart)."""
    hashed = pd.util.hash_pandas_object(df, index=False).to_numpy()
    digest = hashlib.sha256(hashed.tobytes())
    digest.update(",".join(map(str, df.columns)).encode())
    return digest.hexdigest()[:12]


def prepare(df: pd.DataFrame, schema: FeatureSchema, split: Split, source: str = "data") -> PreparedData:
    """Check labels and columns, fit the encoder on the training rows only, encode all rows once.

    Memory: the encoded rows are split array by array, each full array freed as soon as its three parts exist,
    so the peak holds the frame, one encoded copy and one array's parts (not two encoded copies)."""
    schema.check_columns(df, source)
    labels = check_labels(df, schema.label, source)
    encoder = FeatureEncoder(schema).fit(df, rows=split.train, source=source)
    fingerprint = fingerprint_frame(df)
    features = encoder.transform(df, source=source)
    splits = (split.train, split.val, split.test)
    columns: dict[str, list[torch.Tensor]] = {}
    for name in ("categorical", "multivalued", "numeric"):
        full = getattr(features, name)
        setattr(features, name, None)
        columns[name] = [torch.from_numpy(np.ascontiguousarray(full[rows])) for rows in splits]
        del full
    parts = [TensorData(columns["categorical"][i], columns["multivalued"][i], columns["numeric"][i],
                        torch.from_numpy(labels[rows])) for i, rows in enumerate(splits)]
    return PreparedData(encoder, *parts, fingerprint=fingerprint)
