"""Where a policy's data comes from: files (CSV/TSV/Parquet/Criteo) or the synthetic generator, the schema,
and how rows are split. Validated once from YAML (`data:` block) or CLI flags into a `DataSpec`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .data import FORMATS, Split, check_labels, concat_frames, read_table, split_rows
from .errors import ConfigError, DataError, did_you_mean
from .schema import FeatureSchema, criteo_schema, infer_schema
from .synth import SynthSpec, write_dataset

SCHEMA_HINT_KEYS = ("label", "categorical", "numeric", "multivalued", "ignore", "separator", "numeric_transform",
                    "min_count", "max_tokens")


@dataclass(frozen=True)
class DataSpec:
    train: str | None = None  # file with train (+ validation, + test unless `test` is set) rows
    test: str | None = None  # optional held-out file; otherwise test rows are split off `train`
    format: str | None = None  # csv | tsv | parquet | criteo; default from the extension
    synthetic: Mapping[str, Any] | None = None  # {rows, seed, ...}: generate Criteo-format data into `cache_dir`
    cache_dir: str = "data/generated"
    schema: Mapping[str, Any] = field(default_factory=dict)  # declared roles; the rest is inferred
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 42
    order_by: str | None = None  # split by this column (latest rows -> val, test) instead of at random

    def __post_init__(self) -> None:
        if (self.train is None) == (self.synthetic is None):
            raise ConfigError("data: give either 'train: PATH' (and optionally 'test: PATH') or 'synthetic: {rows: N}'")
        if self.format is not None and self.format not in FORMATS:
            raise ConfigError(f"data.format: unknown format {self.format!r}{did_you_mean(str(self.format), FORMATS)}; "
                              f"use one of {', '.join(FORMATS)}")
        if self.synthetic is not None:
            allowed = tuple(f.name for f in dataclasses.fields(SynthSpec))
            for key in self.synthetic:
                if key not in allowed:
                    raise ConfigError(f"data.synthetic: unknown key '{key}'{did_you_mean(str(key), allowed)}; "
                                      f"allowed keys: {', '.join(allowed)}")
            try:
                rows = SynthSpec(**self.synthetic).rows
            except TypeError as exc:
                raise ConfigError(f"data.synthetic: {exc}") from None
            if not isinstance(rows, int) or rows < 100:
                raise ConfigError(f"data.synthetic.rows must be an integer >= 100, got {rows!r}")
        for key in self.schema:
            if key not in SCHEMA_HINT_KEYS:
                raise ConfigError(f"data.schema: unknown key '{key}'{did_you_mean(str(key), SCHEMA_HINT_KEYS)}; "
                                  f"allowed keys: {', '.join(SCHEMA_HINT_KEYS)}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"data.{name} must be a number in [0, 1), got {value!r}")
        if self.val_fraction <= 0:
            raise ConfigError("data.val_fraction must be > 0: early stopping and tuning need validation rows")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DataSpec":
        if not isinstance(data, Mapping):
            raise ConfigError(f"data must be a mapping, got {type(data).__name__}")
        allowed = tuple(f.name for f in dataclasses.fields(cls))
        for key in data:
            if key not in allowed:
                raise ConfigError(f"data: unknown key '{key}'{did_you_mean(str(key), allowed)}; "
                                  f"allowed keys: {', '.join(allowed)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, {})}

    # -- loading -----------------------------------------------------------------------------------
    def files(self) -> tuple[Path, Path | None, str | None]:
        """(train file, test file or None, format); generates the synthetic data on first use."""
        if self.synthetic is not None:
            spec = SynthSpec(**self.synthetic)
            folder = Path(self.cache_dir) / f"synth-{spec.rows}-seed{spec.seed}-card{spec.max_cardinality}"
            write_dataset(spec, folder, test_fraction=self.test_fraction or 0.1)  # reuses it once complete
            return folder / "train.tsv", folder / "test.tsv", "criteo"
        return Path(self.train), Path(self.test) if self.test else None, self.format

    def load(self) -> tuple[pd.DataFrame, FeatureSchema, Split]:
        """Read the data, settle the schema, and split rows (a separate test file becomes the test rows)."""
        train_path, test_path, fmt = self.files()
        frame = read_table(train_path, fmt)
        test_frame = read_table(test_path, fmt) if test_path is not None else None
        schema = self.resolve_schema(frame, fmt or "", str(train_path))
        schema.check_columns(frame, str(train_path))
        check_labels(frame, schema.label, str(train_path))  # bad labels are named before any split or fit
        order = None
        if self.order_by is not None:
            if self.order_by not in frame.columns:
                raise DataError(f"{train_path}: data.order_by column '{self.order_by}' is missing"
                                f"{did_you_mean(self.order_by, map(str, frame.columns))}")
            order = frame[self.order_by].to_numpy()
        if test_frame is None:
            return frame, schema, split_rows(len(frame), self.val_fraction, self.test_fraction, self.split_seed, order)
        schema.check_columns(test_frame, str(test_path))
        inner = split_rows(len(frame), self.val_fraction, 0.0, self.split_seed, order)
        n_train = len(frame)
        combined = concat_frames([frame, test_frame[list(frame.columns)]])
        del frame, test_frame
        test_rows = np.arange(n_train, len(combined))
        return combined, schema, Split(inner.train, inner.val, test_rows)

    def resolve_schema(self, frame: pd.DataFrame, fmt: str, source: str) -> FeatureSchema:
        hints = dict(self.schema)
        if fmt == "criteo" and not hints:
            return criteo_schema()
        label = hints.pop("label", "label")
        roles = {k: tuple(hints.pop(k, ())) for k in ("categorical", "numeric", "multivalued", "ignore")}
        if self.order_by:
            roles["ignore"] = roles["ignore"] + (self.order_by,)
        if label not in frame.columns:
            raise DataError(f"{source}: label column '{label}' is missing{did_you_mean(label, map(str, frame.columns))}; "
                            f"set data.schema.label (or --label) to the click/conversion column")
        return infer_schema(frame, label, **roles, **hints)
