"""Batch scoring of a file with a loaded pyfunc model, streamed: memory stays a couple of batches whatever the
file's size.

The input is read through the streamed reader (deepfm_tuner.model.data.reader) with one set of column types for
the whole file, the types a whole-file read would infer: the Criteo preset's, a Parquet file's own schema, else
those of the file's first block. Each batch of rows is scored and written at once (Parquet or CSV/TSV, from the
output's extension): the input columns, as a whole-file read into pandas gives them, plus `probability`.

Only the model package, MLflow, NumPy, pandas and PyArrow are needed here: this module travels with every
registered model (its code folder), so a pulled model can score files where the tuning tools are not installed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from deepfm_tuner.model.data.frames import check_file
from deepfm_tuner.model.data.reader import ValueParseError, as_frame, criteo_types, sample_frame, stream_batches
from deepfm_tuner.model.errors import DataError, UserInputError, did_you_mean
from deepfm_tuner.tuner.serving.pyfunc import OUTPUT_COLUMN, ScoringPolicyModel, conform

OUTPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
# Arrow's CSV type inference tries these kinds in this order; a whole-file read moves a column along it when a
# later block does not parse as the kind its first block settled
_INFERENCE_ORDER = (pa.null(), pa.int64(), pa.bool_(), pa.date32(), pa.time32("s"), pa.timestamp("s"),
                    pa.timestamp("ns"), pa.float64(), pa.string())


def predict_frame(pyfunc_model, frame: pd.DataFrame, source: str = "input") -> np.ndarray:
    """Probabilities from a loaded pyfunc model for a raw frame (conformed to its signature first)."""
    schema = _check_columns(pyfunc_model, frame, source)
    return np.asarray(pyfunc_model.predict(conform(frame, schema)), dtype=np.float64).reshape(-1)


def batch_scorer(pyfunc_model, source: str) -> Callable[[pd.DataFrame], np.ndarray]:
    """The fastest exact way to score many frames with a loaded model: a scoring policy's own `predict` when the
    model is one (no decoding of dictionary-encoded tokens for MLflow's type check, then hashing them again;
    the encoder still names a missing or non-numeric column), else `predict_frame`."""
    python_model = pyfunc_model.unwrap_python_model() if hasattr(pyfunc_model, "unwrap_python_model") else None
    if not isinstance(python_model, ScoringPolicyModel):
        return lambda frame: predict_frame(pyfunc_model, frame, source)

    def score(frame: pd.DataFrame) -> np.ndarray:
        _check_columns(pyfunc_model, frame, source)
        return python_model.policy.predict(frame).astype(np.float64)

    return score


def _check_columns(pyfunc_model, frame: pd.DataFrame, source: str):
    schema = pyfunc_model.metadata.get_input_schema()
    if schema is not None and schema.has_input_names():
        missing = [c for c in schema.input_names() if c not in frame.columns]
        if missing:
            shown = ", ".join(f"'{c}'" for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DataError(f"{source}: missing column(s) {shown}{did_you_mean(missing[0], map(str, frame.columns))}"
                            f"; the model needs {len(schema.input_names())} feature columns")
    return schema


@dataclass(frozen=True)
class ScoreResult:
    rows: int
    seconds: float  # reading, scoring and writing (the model was loaded before)
    output: Path

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def output_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UserInputError(f"cannot tell the output format of {path}; name it .csv, .tsv or .parquet")
    return OUTPUT_FORMATS[suffix]


def score_file(
    model,
    input_path: str | Path,
    output_path: str | Path,
    *,
    fmt: str | None = None,
    batch_size: int = 100_000,
    progress: Callable[[int, int | None], None] | None = None,
) -> ScoreResult:
    """Score every row of `input_path` with a loaded pyfunc model (`mlflow.pyfunc.load_model`); write the input
    columns plus `probability` to `output_path` (.csv, .tsv or .parquet), batch by batch.

    `progress(done, total)` is called after each batch of `batch_size` rows; `total` is None until the last batch
    when the file does not say how many rows it holds (CSV/TSV). The output appears only once it is complete.
    """
    if batch_size < 1:
        raise UserInputError(f"batch_size must be >= 1, got {batch_size}")
    kind = output_format(output_path)
    path, fmt = check_file(input_path, fmt)
    sample = sample_frame(path, fmt)
    _check_columns(model, sample, str(path))  # before any output exists
    types = _input_types(path, fmt, sample)
    total = pq.ParquetFile(path).metadata.num_rows if fmt == "parquet" else None
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial = output_path.with_name(f".{output_path.name}.partial")
    score, started, furthest = batch_scorer(model, str(path)), time.perf_counter(), 0

    def advance(done: int, rows: int | None) -> None:  # a pass read again after a type change is not counted twice
        nonlocal furthest
        if progress is not None and (done > furthest or done == rows):
            furthest = done
            progress(done, rows)

    try:
        while True:
            try:
                rows = _write_scores(score, _batches(path, fmt, types), partial, kind, batch_size, total, advance)
                break
            except ValueParseError as exc:  # a column whose type changes after the first block: read it again
                wider = _wider_type(path, fmt, exc.column, types)
                if wider is None:
                    raise
                types[exc.column] = wider
        os.replace(partial, output_path)
    finally:
        partial.unlink(missing_ok=True)
    return ScoreResult(rows, time.perf_counter() - started, output_path)


def _input_types(path: Path, fmt: str, sample: pd.DataFrame) -> dict[str, pa.DataType]:
    """Every column of the file, typed for the whole read as a whole-file read types it (see the module doc)."""
    if fmt == "criteo":
        return criteo_types()
    if fmt == "parquet":
        return {field.name: field.type for field in pq.read_schema(path)}
    return dict(zip(map(str, sample.columns), pa.Schema.from_pandas(sample, preserve_index=False).types))


def _batches(path: Path, fmt: str, types: dict[str, pa.DataType]) -> Iterator[pa.RecordBatch]:
    """The file's record batches; a Parquet file's pandas metadata goes back on them, so pandas reads them as it
    reads the whole file (nullable integers stay integers, a stored index stays an index)."""
    metadata = pq.read_schema(path).metadata if fmt == "parquet" else None
    for batch in stream_batches(path, fmt, types):
        yield batch.replace_schema_metadata(metadata) if metadata else batch


def _chunks(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[tuple[pa.Table, bool]]:
    """Tables of exactly `size` rows (the last one shorter), each with whether it is the last one."""
    pending: list[pa.RecordBatch] = []
    rows, ready = 0, None
    for batch in batches:
        pending.append(batch)
        rows += batch.num_rows
        while rows >= size:
            table = pa.Table.from_batches(pending)
            if ready is not None:
                yield ready, False
            ready, rest = table.slice(0, size), table.slice(size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        if ready is not None:
            yield ready, False
        ready = pa.Table.from_batches(pending)
    if ready is not None:
        yield ready, True


def _write_scores(score: Callable[[pd.DataFrame], np.ndarray], batches: Iterable[pa.RecordBatch], output: Path,
                  kind: str, batch_size: int, total: int | None, progress: Callable[[int, int | None], None]) -> int:
    """Score and write each chunk as it is read; the rows written."""
    writer, schema, done = None, None, 0
    try:
        for table, last in _chunks(batches, batch_size):
            frame = as_frame(table)
            scored = pa.Table.from_pandas(frame, preserve_index=False).append_column(
                OUTPUT_COLUMN, pa.array(score(frame)))
            if writer is None:
                schema = _output_schema(scored.schema)
                writer = (pq.ParquetWriter(output, schema) if kind == "parquet" else pacsv.CSVWriter(
                    output, schema, write_options=pacsv.WriteOptions(delimiter="\t" if kind == "tsv" else ",")))
            writer.write_table(scored.cast(schema))
            done += len(frame)
            progress(done, done if last else total)
    finally:
        if writer is not None:
            writer.close()
    return done


def _output_schema(first: pa.Schema) -> pa.Schema:
    """The first chunk's column types for every chunk; tokens with 32-bit dictionary indices, as each chunk's
    categories (hence its index width) differ."""
    return pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), f.type.value_type, f.type.ordered))
                      if pa.types.is_dictionary(f.type) else f for f in first], metadata=first.metadata)


def _wider_type(path: Path, fmt: str, column: str | None, types: dict[str, pa.DataType]) -> pa.DataType | None:
    """The type a whole-file read gives `column`, whose type from the first block fails further on: the next
    kinds of Arrow's inference, each tried on that column alone. None when the types are fixed (Criteo's preset,
    a Parquet schema) or nothing wider exists."""
    if fmt in ("criteo", "parquet") or column not in types:
        return None
    failed = types[column]
    later = (_INFERENCE_ORDER[_INFERENCE_ORDER.index(failed) + 1:] if failed in _INFERENCE_ORDER
             else (pa.string(),) if failed != pa.string() else ())
    for candidate in later:
        try:
            for _ in stream_batches(path, fmt, {column: candidate}):
                pass
        except ValueParseError:
            continue
        return candidate
    return None
