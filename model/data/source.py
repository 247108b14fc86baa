"""Where a policy's data comes from: files (CSV/TSV/Parquet/Criteo) or the synthetic generator, the schema,
how rows are split, and where the encoded dataset lives. Validated once from YAML (`data:` block) or CLI flags
into a `DataSpec`; `DataSpec.prepare()` maps the encoded dataset, building it on first use."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from deepfm_tuner.model.data.frames import FORMATS
from deepfm_tuner.model.data.tensors import PreparedData
from deepfm_tuner.model.data.cache import open_or_build
from deepfm_tuner.model.data.layout import Source, SplitRule
from deepfm_tuner.model.errors import ConfigError, DataError, did_you_mean
from deepfm_tuner.model.data.frames import check_file
from deepfm_tuner.model.data.schema import FeatureSchema, criteo_schema, infer_schema
from deepfm_tuner.model.data.synth import SynthSpec, write_dataset

SCHEMA_HINT_KEYS = ("label", "categorical", "numeric", "multivalued", "ignore", "separator", "numeric_transform",
                    "min_count", "max_tokens")


@dataclass(frozen=True)
class DataSpec:
    train: str | None = None  # file with train (+ validation unless `valid`, + test unless `test`) rows
    valid: str | None = None  # optional fixed validation file; otherwise validation rows are split off `train`
    test: str | None = None  # optional held-out file; otherwise test rows are split off `train`
    format: str | None = None  # csv | tsv | parquet | criteo; default from the extension
    synthetic: Mapping[str, Any] | None = None  # {rows, seed, ...}: generate Criteo-format data into `synthetic_dir`
    synthetic_dir: str = "data/generated"  # where generated raw files go
    encoded_dir: str = "data/encoded"  # where encoded datasets go, one folder per fingerprint (shareable)
    schema: Mapping[str, Any] = field(default_factory=dict)  # declared roles; the rest is inferred
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 42
    order_by: str | None = None  # split by this column (latest rows -> val, test) instead of at random

    def __post_init__(self) -> None:
        if (self.train is None) == (self.synthetic is None):
            raise ConfigError("data: give either 'train: PATH' (and optionally 'valid:' / 'test: PATH') or "
                              "'synthetic: {rows: N}'")
        if self.synthetic is not None and self.valid is not None:
            raise ConfigError("data.valid needs data.train: synthetic data splits its own validation rows")
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
        if self.val_fraction <= 0 and self.valid is None:
            raise ConfigError("data.val_fraction must be > 0 (or give data.valid): early stopping and tuning need "
                              "validation rows")
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(f"data.val_fraction + data.test_fraction must be < 1, got {self.val_fraction} + "
                              f"{self.test_fraction}; leave rows to train on")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DataSpec":
        if not isinstance(data, Mapping):
            raise ConfigError(f"data must be a mapping, got {type(data).__name__}")
        data = dict(data)
        if "cache_dir" in data:  # its old name, when it was the only folder
            if "synthetic_dir" in data:
                raise ConfigError("data: give synthetic_dir only (cache_dir is its old name)")
            data["synthetic_dir"] = data.pop("cache_dir")
        allowed = tuple(f.name for f in dataclasses.fields(cls))
        for key in data:
            if key not in allowed:
                raise ConfigError(f"data: unknown key '{key}'{did_you_mean(str(key), allowed)}; "
                                  f"allowed keys: {', '.join(allowed)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, {})}

    # -- the encoded dataset -----------------------------------------------------------------------
    def files(self) -> tuple[Path, Path | None, str | None]:
        """(train file, test file or None, format); generates the synthetic data on first use."""
        if self.synthetic is not None:
            spec = SynthSpec(**self.synthetic)
            folder = Path(self.synthetic_dir) / f"synth-{spec.rows}-seed{spec.seed}-card{spec.max_cardinality}"
            write_dataset(spec, folder, test_fraction=self.test_fraction or 0.1)  # reuses it once complete
            return folder / "train.tsv", folder / "test.tsv", "criteo"
        return Path(self.train), Path(self.test) if self.test else None, self.format

    def sources(self) -> list[Source]:
        """The files to read, each with the part its rows go to; generates the synthetic data on first use."""
        train, test, fmt = self.files()
        parts = [(train, "split"), *([(Path(self.valid), "val")] if self.valid else []),
                 *([(test, "test")] if test is not None else [])]
        return [Source(str(path), check_file(path, fmt)[1], role) for path, role in parts]

    def split_rule(self) -> SplitRule:
        return SplitRule(val_fraction=0.0 if self.valid else float(self.val_fraction),
                         test_fraction=0.0 if self.test or self.synthetic else float(self.test_fraction),
                         seed=self.split_seed, order_by=self.order_by)

    def prepare(self, log=lambda message: None) -> PreparedData:
        """The encoded train/validation/test parts, mapped from `encoded_dir` (built there on first use)."""
        sources = self.sources()
        settings = {"schema": dict(self.schema)}
        return open_or_build(sources, self.resolve_schema, self.split_rule(), self.encoded_dir, settings, log)

    def resolve_schema(self, sample: Callable[[], pd.DataFrame], fmt: str) -> FeatureSchema:
        """The Criteo preset; or declared roles, the rest inferred from `sample()` (the first rows of the file)."""
        source = str(self.train or "synthetic data")
        hints = dict(self.schema)
        if fmt == "criteo" and not hints:
            return criteo_schema()
        frame = sample()
        label = hints.pop("label", "label")
        roles = {k: tuple(hints.pop(k, ())) for k in ("categorical", "numeric", "multivalued", "ignore")}
        if self.order_by:
            if self.order_by not in frame.columns:
                raise DataError(f"{source}: data.order_by column '{self.order_by}' is missing"
                                f"{did_you_mean(self.order_by, map(str, frame.columns))}")
            roles["ignore"] = roles["ignore"] + (self.order_by,)
        if label not in frame.columns:
            raise DataError(f"{source}: label column '{label}' is missing{did_you_mean(label, map(str, frame.columns))}; "
                            f"set data.schema.label (or --label) to the click/conversion column")
        schema = infer_schema(frame, label, **roles, **hints)
        schema.check_columns(frame, source)
        return schema
