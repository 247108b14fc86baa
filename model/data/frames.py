"""Read tabular CTR data (CSV, TSV, Parquet, the Criteo preset), check labels, split rows.

Readers go through pyarrow's multi-threaded parsers; nothing here loops over rows in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pandas.api.types import union_categoricals

from deepfm_tuner.model.data.schema import CRITEO_CATEGORICAL, CRITEO_COLUMNS, CRITEO_NUMERIC
from deepfm_tuner.model.errors import DataError

FORMATS = ("csv", "tsv", "parquet", "criteo")


def detect_format(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".gz", ".bz2", ".zst"):
        name = name.removesuffix(suffix)
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".tsv", ".txt")):
        return "tsv"
    if name.endswith(".csv"):
        return "csv"
    raise DataError(f"{path}: cannot tell the format from the extension; name it .csv/.tsv/.parquet or pass a format")


def check_file(path: str | Path, fmt: str | None) -> tuple[Path, str]:
    """(path, format) of a readable, non-empty data file; else a DataError naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; check the path")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r} for {path}; use one of {', '.join(FORMATS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; it needs a header row (or the Criteo format) and data rows")
    return path, fmt


def read_table(path: str | Path, fmt: str | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """Read one file into a DataFrame. `fmt='criteo'` reads Criteo's headerless TSV (label, I1..I13, C1..C26)."""
    path, fmt = check_file(path, fmt)
    try:
        if fmt == "parquet":
            table = pq.read_table(path, columns=columns)
        elif fmt == "criteo":
            types = {"label": pa.float32(), **{c: pa.float32() for c in CRITEO_NUMERIC}}  # counts: float32 halves the frame; 7 digits is plenty after log1p
            # hashed tokens repeat heavily: dictionary-encoded they cost 4 bytes a row instead of ~12, and arrive
            # in pandas as Categorical columns (the encoder reads their codes directly)
            types.update({c: pa.dictionary(pa.int32(), pa.string()) for c in CRITEO_CATEGORICAL})
            table = pacsv.read_csv(
                path,
                read_options=pacsv.ReadOptions(column_names=list(CRITEO_COLUMNS), block_size=1 << 24),
                parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
                convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True),
            )
        else:
            table = pacsv.read_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=1 << 24),
                parse_options=pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ","),
                convert_options=pacsv.ConvertOptions(strings_can_be_null=True, include_columns=columns),
            )
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(f"{path}: cannot parse as {fmt}: {first}") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: the file has no data rows")
    # Arrow-backed columns: zero-copy back to Arrow in the encoder, no Python objects per value. Numeric columns
    # become NumPy; self_destruct frees each Arrow column as it is converted, so the file is not held twice.
    frame = table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_string(t) else None,
                            split_blocks=True, self_destruct=True)
    del table
    pa.default_memory_pool().release_unused()
    return frame


def concat_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Stack frames with the same columns; Categorical columns stay Categorical (pd.concat would turn columns
    whose categories differ into Python objects: many times the memory)."""
    if len(frames) == 1:
        return frames[0]
    columns = {}
    for name in frames[0].columns:
        parts = [f[name] for f in frames]
        if all(isinstance(p.dtype, pd.CategoricalDtype) for p in parts):
            columns[name] = pd.Series(union_categoricals(parts, ignore_order=True), name=name)
        else:
            columns[name] = pd.concat(parts, ignore_index=True)
    return pd.DataFrame(columns)


def used_categories(series: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """(codes, categories) of a categorical column, the categories cut to those its rows use when they are far
    fewer: a few rows sliced from a big read must not cost a pass over every token of the file."""
    codes = series.cat.codes.to_numpy()
    categories = series.cat.categories
    if len(codes) * 8 >= len(categories):
        return codes, categories
    used = np.unique(codes[codes >= 0])
    return np.where(codes >= 0, np.searchsorted(used, codes), -1), categories[used]


def as_arrow(values: pd.Series | pd.Index) -> pa.Array:
    """One Arrow array of a column's values; Arrow-backed ones zero-copy. Converts the pandas array, not the
    Series: pyarrow's probing of a Series costs ~20 us a column, which a one-row request pays per field."""
    data = values.array if hasattr(values.array, "__arrow_array__") else values.to_numpy()
    array = pa.array(data, from_pandas=True)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def dictionary_array(codes: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    """Categorical codes (-1 = missing) over `dictionary` as an Arrow DictionaryArray (missing -> null)."""
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32), mask=codes < 0), dictionary)


def check_labels(df: pd.DataFrame, label: str, source: str) -> np.ndarray:
    """Labels as float32 0/1; anything else is an error naming the file, the column and the bad value."""
    if label not in df.columns:
        raise DataError(f"{source}: label column '{label}' is missing; set schema.label to the click/conversion column")
    raw = df[label]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}: column '{label}' must hold labels 0 or 1; row {row} has {_plain(raw.iloc[row])!r} "
            f"({int(bad.sum())} bad rows); map clicks to 1 and non-clicks to 0"
        )
    return values.astype(np.float32)


def _plain(value):
    """numpy scalars print as np.int64(2); users wrote 2."""
    return value.item() if hasattr(value, "item") else value


@dataclass(frozen=True)
class Split:
    """Row positions of the train/validation/test parts of one frame."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_rows(
    n_rows: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 42,
    order: np.ndarray | None = None,
) -> Split:
    """Random split with a seed; or, given `order` (e.g. a timestamp column), the latest rows are val then test."""
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(
            f"split fractions must satisfy 0 < val, 0 <= test, val + test < 1; got val={val_fraction}, "
            f"test={test_fraction}"
        )
    n_val, n_test = int(round(n_rows * val_fraction)), int(round(n_rows * test_fraction))
    n_train = n_rows - n_val - n_test
    if n_train < 1 or n_val < 1:
        raise DataError(f"{n_rows} rows are too few to split into train/val/test; provide more data")
    if order is None:
        rows = np.random.default_rng(seed).permutation(n_rows)
    else:
        rows = np.argsort(order, kind="stable")
    return Split(
        train=np.sort(rows[:n_train]),
        val=np.sort(rows[n_train : n_train + n_val]),
        test=np.sort(rows[n_train + n_val :]),
    )
