"""Where a policy's data comes from: files (CSV/TSV/Parquet/Criteo) or the synthetic generator, the schema,
how rows are split, and where the encoded dataset lives. Validated once from YAML (`data:` block) or CLI flags
into a `DataSpec`; `DataSpec.prepare()` maps the encoded dataset, building it on first use."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Mapping, Optional

import pandas as pd
from annotated_types import MinLen
from pydantic import BeforeValidator, PlainValidator, model_validator, with_config
from typing_extensions import TypedDict

from deepfm_tuner.model.data.cache import open_or_build, train_sample
from deepfm_tuner.model.data.frames import FORMATS, check_file
from deepfm_tuner.model.data.layout import Source, SplitRule
from deepfm_tuner.model.data.schema import FeatureSchema, SchemaHints, criteo_schema, infer_schema
from deepfm_tuner.model.data.synth import SynthSpec, write_dataset
from deepfm_tuner.model.data.tensors import PreparedData
from deepfm_tuner.model.errors import DataError, did_you_mean
from deepfm_tuner.model.validation import CONFIG, Float, Int, Must, OneOf, Text, declared, must, parse, refuse

Fraction = Float("must be a number in [0, 1)", ge=0, lt=1)


def _rows_or_fraction(value: Any) -> int | float:
    """An integer is a number of rows, a number below 1 a fraction of the training split."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, float) and 0 < value < 1:
        return value
    raise must("must be a number of training rows (an integer >= 1, e.g. 2000000) or a fraction of the training "
               "split in (0, 1) (e.g. 0.1)")


TuneRows = Annotated[int | float, PlainValidator(_rows_or_fraction)]


@with_config(CONFIG)
class SynthOptions(TypedDict, total=False):
    """A data block's `synthetic:`: SynthSpec's knobs (tests/model/data/test_data.py keeps the two in step)."""

    rows: Int(100)
    seed: Int(0)
    max_cardinality: Int(4)
    base_ctr: Float("must be a click rate in (0, 1)", gt=0, lt=1)
    signal: Float("must be >= 0", ge=0)


def _files(value: Any) -> Any:
    """One path, or a list of them (e.g. one file a day): read in order as one dataset."""
    return (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else value


TrainFiles = Annotated[tuple[Text, ...], MinLen(1), BeforeValidator(_files),
                       Must("must be a file path or a non-empty list of file paths")]


@declared("data")
class DataSpec:
    train: Optional[TrainFiles] = None  # file(s) with train (+ validation unless `valid`, + test unless `test`) rows
    valid: Optional[Text] = None  # optional fixed validation file; otherwise validation rows are split off `train`
    test: Optional[Text] = None  # optional held-out file; otherwise test rows are split off `train`
    format: Optional[Annotated[str, OneOf("format", FORMATS)]] = None  # csv | tsv | parquet | criteo; default from
    #   the extension
    synthetic: Optional[SynthOptions] = None  # {rows, seed, ...}: generate Criteo-format data into `synthetic_dir`
    synthetic_dir: Text = "data/generated"  # where generated raw files go
    encoded_dir: Text = "data/encoded"  # where encoded datasets go, one folder per fingerprint (shareable)
    schema: SchemaHints = field(default_factory=dict)  # declared roles; the rest is inferred
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.1
    split_seed: Int(0) = 42
    order_by: Optional[Text] = None  # split by this column (latest rows -> val, test) instead of at random
    tune_rows: Optional[TuneRows] = None  # trials train on this many training rows (or this fraction of them),
    #   one sample drawn with split_seed; validation and test rows are unchanged (study.refit: the winner on all)

    SHAPE: ClassVar[str] = "a mapping such as {train: PATH}, {train: [PATH, ...]} or {synthetic: {rows: N}}"

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        """`cache_dir` is synthetic_dir's old name, from when it was the only folder."""
        if not isinstance(data, Mapping) or "cache_dir" not in data:
            return data
        if "synthetic_dir" in data:
            raise refuse("give synthetic_dir only (cache_dir is its old name)")
        return {("synthetic_dir" if key == "cache_dir" else key): value for key, value in data.items()}

    @model_validator(mode="after")
    def _rows_to_learn_from(self) -> "DataSpec":
        if (self.train is None) == (self.synthetic is None):
            raise refuse("give either 'train: PATH' (and optionally 'valid:' / 'test: PATH') or "
                         "'synthetic: {rows: N}'")
        if self.synthetic is not None and self.valid is not None:
            raise refuse("'valid' needs 'train': synthetic data splits its own validation rows")
        if self.val_fraction <= 0 and self.valid is None:
            raise refuse("val_fraction must be > 0 (or give data.valid): early stopping and tuning need "
                         "validation rows")
        if self.val_fraction + self.test_fraction >= 1:
            raise refuse(f"val_fraction + test_fraction must be < 1, got {self.val_fraction} + "
                         f"{self.test_fraction}; leave rows to train on")
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DataSpec":
        return parse(cls, data)

    def to_dict(self) -> dict[str, Any]:
        shown = {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, {})}
        if self.train is not None:  # as a file spells it: one path, or a list
            shown["train"] = self.train[0] if len(self.train) == 1 else list(self.train)
        return shown

    # -- the encoded dataset -----------------------------------------------------------------------
    def files(self) -> tuple[list[Path], Path | None, str | None]:
        """(train files, test file or None, format); generates the synthetic data on first use."""
        if self.synthetic is not None:
            spec = SynthSpec(**self.synthetic)
            folder = Path(self.synthetic_dir) / f"synth-{spec.rows}-seed{spec.seed}-card{spec.max_cardinality}"
            write_dataset(spec, folder, test_fraction=self.test_fraction or 0.1)  # reuses it once complete
            return [folder / "train.tsv"], folder / "test.tsv", "criteo"
        return [Path(path) for path in self.train], Path(self.test) if self.test else None, self.format

    def sources(self) -> list[Source]:
        """The files to read, each with the part its rows go to (the training files first, in order); generates
        the synthetic data on first use."""
        train, test, fmt = self.files()
        parts = [*((path, "split") for path in train), *([(Path(self.valid), "val")] if self.valid else []),
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

    def for_trials(self, prepared: PreparedData, log=lambda message: None) -> PreparedData:
        """What trials train on: `prepared`, or with `tune_rows` its sample of the training rows (drawn with
        split_seed, written once beside the encoded dataset and mapped by every trial, worker and resume)."""
        if self.tune_rows is None:
            return prepared
        rows = len(prepared.parts["train"])
        wanted = self.tune_rows if isinstance(self.tune_rows, int) else max(1, round(self.tune_rows * rows))
        return train_sample(prepared, wanted, self.split_seed, log)

    def resolve_schema(self, sample: Callable[[], pd.DataFrame], fmt: str) -> FeatureSchema:
        """The Criteo preset; or declared roles, the rest inferred from `sample()` (the first rows of the file)."""
        source = self.train[0] if self.train else "synthetic data"
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
