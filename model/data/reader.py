"""Stream a data file as Arrow record batches with one set of column types: no whole-table frame.

The schema is settled once from the first rows (the Criteo preset needs none), then every batch of the file is
parsed with the same types, so a column cannot change type halfway through a 40 GB log.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from deepfm_tuner.model.data.frames import check_file
from deepfm_tuner.model.data.schema import CRITEO_CATEGORICAL, CRITEO_COLUMNS, CRITEO_NUMERIC, FeatureSchema
from deepfm_tuner.model.errors import DataError

BLOCK_BYTES = 1 << 22  # CSV text per batch (4 MiB, ~18k Criteo rows): the parser holds several blocks at once, and
# its buffers grow far beyond the text (64 MiB blocks held 1.6 GB), so small blocks are both leaner and faster
PARQUET_BATCH_ROWS = 262_144
SAMPLE_ROWS = 100_000  # rows read to infer a schema (at most one block of SAMPLE_BYTES)
SAMPLE_BYTES = 1 << 24


def criteo_types() -> dict[str, pa.DataType]:
    """Counts as float32 (7 digits is plenty after log1p); hashed tokens dictionary-encoded per batch."""
    types: dict[str, pa.DataType] = {"label": pa.float32(), **{c: pa.float32() for c in CRITEO_NUMERIC}}
    types.update({c: pa.dictionary(pa.int32(), pa.string()) for c in CRITEO_CATEGORICAL})
    return types


def _csv_options(fmt: str, types: dict[str, pa.DataType] | None, columns: list[str] | None, block: int,
                 threads: bool = True):
    if fmt == "criteo":
        read = pacsv.ReadOptions(column_names=list(CRITEO_COLUMNS), block_size=block, use_threads=threads)
        parse = pacsv.ParseOptions(delimiter="\t", quote_char=False)
    else:
        read = pacsv.ReadOptions(block_size=block, use_threads=threads)
        parse = pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")
    convert = pacsv.ConvertOptions(column_types=types or {}, strings_can_be_null=True, include_columns=columns)
    return {"read_options": read, "parse_options": parse, "convert_options": convert}


class ValueParseError(DataError):
    """A value of `column` does not parse as that column's type (e.g. text in a numeric column)."""

    def __init__(self, message: str, column: str | None):
        super().__init__(message)
        self.column = column


def _header(path: Path, fmt: str) -> list[str]:
    if fmt == "criteo":
        return list(CRITEO_COLUMNS)
    with open(path, newline="") as handle:
        return next(csv.reader(handle, delimiter="\t" if fmt == "tsv" else ","), [])


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _parse_error(path: Path, fmt: str, exc: Exception, label: str | None, column: str | None = None) -> DataError:
    """One line for a value that does not parse: the label column's says what labels must be (declaring it
    categorical, the advice for a feature column, would be wrong for it)."""
    first = _first_line(exc)
    if column is None and "conversion error" not in first:
        return DataError(f"{path}: cannot parse as {fmt}: {first}")
    if column is None:
        found = re.search(r"CSV column #(\d+)", first)
        names = _header(path, fmt) if found else []
        column = names[int(found.group(1))] if found and int(found.group(1)) < len(names) else None
    if column is not None and column == label:
        found = re.search(r"'([^']*)'", first)
        value = repr(found.group(1)) if found else "a value"
        return DataError(f"{path}: label column '{label}' holds {value}, not a label; labels must be 0 or 1 (or "
                         f"true/false): map clicks to 1 and non-clicks to 0")
    return ValueParseError(f"{path}: cannot parse as {fmt}: {first}; fix the data, or declare the column "
                           f"categorical in the schema", column)


def _parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise _damaged(path, exc) from None


def _damaged(path: Path, exc: Exception) -> DataError:
    """A Parquet file that cannot be read at all (not Parquet, truncated, corrupt pages)."""
    return DataError(f"{path}: not a readable Parquet file ({_first_line(exc)}); write the file again, or give its "
                     f"real format (data.format / --format)")


def numbers_from_text(values: pa.Array, column: str, source: str, first_row: int, bad: dict) -> np.ndarray:
    """A numeric column read as text: numbers as float64, anything else NaN. `bad[column]` counts the values
    that were not numbers and keeps the first one and its row, for the report (and the refusal past a few)."""
    text = pd.Series(values.to_numpy(zero_copy_only=False), dtype=object)
    numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    wrong = np.isnan(numbers) & text.notna().to_numpy() & (text.astype(str).str.strip() != "").to_numpy()
    if wrong.any():
        count, example = bad.get(column, (0, None))
        if example is None:
            row = int(np.flatnonzero(wrong)[0])
            example = (str(text.iloc[row]), first_row + row)
        bad[column] = (count + int(wrong.sum()), example)
    return numbers


def sample_frame(path: str | Path, fmt: str | None = None, rows: int = SAMPLE_ROWS,
                 block_bytes: int = SAMPLE_BYTES) -> pd.DataFrame:
    """The first rows (at most `rows`, from the first `block_bytes`) as pandas, typed as a full read would infer
    them (for schema inference and column checks)."""
    path, fmt = check_file(path, fmt)
    if fmt == "parquet":
        source = _parquet(path)
        try:
            first = next(source.iter_batches(batch_size=rows), None)
        except (pa.ArrowException, OSError) as exc:
            raise _damaged(path, exc) from None
        table = pa.Table.from_batches([first]) if first is not None else source.schema_arrow.empty_table()
    else:
        try:
            reader = pacsv.open_csv(path, **_csv_options(fmt, criteo_types() if fmt == "criteo" else None, None,
                                                         block_bytes, threads=False))
            batch = reader.read_next_batch()
        except StopIteration:
            raise DataError(f"{path}: the file has no data rows") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise _parse_error(path, fmt, exc, None) from None
        table = pa.Table.from_batches([batch]).slice(0, rows)
    if table.num_rows == 0:
        raise DataError(f"{path}: the file has no data rows")
    return as_frame(table)


def read_types(schema: FeatureSchema, sample: Callable[[], pd.DataFrame], fmt: str,
               extra: tuple[str, ...] = ()) -> dict[str, pa.DataType]:
    """The type of every column the encoder needs (plus `extra`, e.g. the order_by column) for the whole read.

    Criteo: the preset's. Other files: label and numeric fields as float64, multi-valued fields as strings,
    categorical fields as the sample's type (an integer id column stays integer, so its tokens print as '3' in
    training exactly as they do when a scoring request sends the number 3)."""
    if fmt == "criteo":
        types = criteo_types()
        return {c: types[c] for c in (schema.label, *schema.features, *extra) if c in types}
    sample_types = pa.Schema.from_pandas(sample(), preserve_index=False)
    label = sample_types.field(schema.label).type if schema.label in sample_types.names else None
    # true/false labels (a CSV parser reads them as booleans, never as numbers) are read as they are
    types: dict[str, pa.DataType] = {schema.label: pa.bool_() if label == pa.bool_() else pa.float64()}
    types.update({c: pa.float64() for c in schema.numeric})
    types.update({c: pa.string() for c in schema.multivalued})
    for col in (*schema.categorical, *extra):
        t = sample_types.field(col).type
        if pa.types.is_null(t) or pa.types.is_dictionary(t) or pa.types.is_large_string(t):
            t = pa.string()
        types[col] = t
    return types


def stream_batches(path: str | Path, fmt: str | None, types: dict[str, pa.DataType], label: str | None = None,
                   block_bytes: int = BLOCK_BYTES) -> Iterator[pa.RecordBatch]:
    """Record batches of `types`' columns (in that order), parsed with those types; a bad value is a DataError
    naming the file, the column and the value (for the `label` column: what labels must be)."""
    path, fmt = check_file(path, fmt)
    columns = list(types)
    if fmt == "parquet":
        yield from _parquet_batches(path, types, label)
        return
    try:
        reader = pacsv.open_csv(path, **_csv_options(fmt, types, columns, block_bytes))
        for batch in reader:
            yield batch.select(columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise _parse_error(path, fmt, exc, label) from None


def _parquet_batches(path: Path, types: dict[str, pa.DataType], label: str | None) -> Iterator[pa.RecordBatch]:
    source = _parquet(path)
    missing = [c for c in types if c not in source.schema_arrow.names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(map(repr, missing))}")
    batches = source.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=list(types))
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as exc:  # a page that cannot be decoded
            raise _damaged(path, exc) from None
        if batch is None:
            return
        arrays = []
        for column, kind in types.items():
            try:
                arrays.append(batch.column(column) if batch.column(column).type == kind else
                              batch.column(column).cast(kind))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise _parse_error(path, "parquet", exc, label, column) from None
        yield pa.RecordBatch.from_arrays(arrays, names=list(types))


def batch_labels(batch: pa.RecordBatch, label: str, source: str, first_row: int = 0) -> np.ndarray:
    """A batch's labels as float32 0/1 (true/false too); anything else is an error naming the file, the row and
    the value."""
    values = batch.column(label).cast(pa.float64()).to_numpy(zero_copy_only=False)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = values[row]
        shown = "empty" if np.isnan(value) else repr(int(value) if value == int(value) else float(value))
        raise DataError(f"{source}: column '{label}' must hold labels 0 or 1 (or true/false); row {first_row + row} "
                        f"has {shown} ({int(bad.sum())} bad rows in its block); map clicks to 1 and non-clicks to 0")
    return values.astype(np.float32)


def as_frame(batch: pa.RecordBatch) -> pd.DataFrame:
    """A batch as pandas the way the scoring path reads files: strings stay Arrow-backed, tokens Categorical."""
    return batch.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_string(t) else None)
