"""Turn raw feature columns into model inputs; fitted on the training split only, saved as JSON.

Index layout of every categorical (and multi-valued) field: 0 = missing, 1 = out-of-vocabulary (unseen or rarer
than `min_count`), 2.. = vocabulary by descending training frequency. Numeric fields become float32 with NaN for
missing (the model learns one embedding for "missing" per field). The same object encodes training data and
scoring requests, so serving can never drift from training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from deepfm_tuner.model.data.frames import as_arrow, dictionary_array, used_categories
from deepfm_tuner.model.data.schema import FeatureSchema
from deepfm_tuner.model.errors import DataError
from deepfm_tuner.model.parallel import map_columns

MISSING, OOV, FIRST_TOKEN = 0, 1, 2
CLIP = 10.0  # standardized numeric values are clipped to +-CLIP, so one outlier cannot blow up a score
ENCODER_FORMAT_VERSION = 1


@dataclass
class EncodedFeatures:
    """Model inputs for N rows: categorical (N, Fc) int32, multi-valued (N, sum of lengths) int32 with -1 as
    padding, numeric (N, Fn) float32 with NaN as missing."""

    categorical: np.ndarray
    multivalued: np.ndarray
    numeric: np.ndarray

    def __len__(self) -> int:
        return len(self.categorical)


def _as_tokens(series: pd.Series, source: str) -> pa.Array:
    """A column as an Arrow string array; integral floats print without '.0' so 3 and 3.0 are the same token."""
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = np.isfinite(values)
        if np.array_equal(values[finite], np.round(values[finite])):
            return pa.array(np.where(finite, values, 0).astype(np.int64), mask=~finite).cast(pa.string())
    if isinstance(series.dtype, pd.CategoricalDtype):  # codes + categories: stays dictionary-encoded
        codes, categories = used_categories(series)
        return dictionary_array(codes, _as_tokens(pd.Series(categories), source))
    array = as_arrow(series)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if not pa.types.is_string(array.type) and not pa.types.is_large_string(array.type):
        try:
            array = array.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            array = pa.array(series.astype("string"), from_pandas=True)
    return array


def arrow_tokens(array: pa.Array) -> pa.Array:
    """Tokens of an Arrow column as read from a file, the same strings `_as_tokens` makes of its pandas form:
    dictionary columns stay dictionary-encoded, integral floats print without '.0', the rest cast to strings."""
    if isinstance(array, pa.ChunkedArray):
        if pa.types.is_dictionary(array.type) and pa.types.is_string(array.type.value_type):
            return array  # chunks that share a unified dictionary stay as they are
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        if not pa.types.is_string(array.dictionary.type):
            return pa.DictionaryArray.from_arrays(array.indices, arrow_tokens(array.dictionary))
        return array
    if pa.types.is_string(array.type):
        return array
    if pa.types.is_floating(array.type):
        values = array.to_numpy(zero_copy_only=False).astype(np.float64)
        finite = np.isfinite(values)
        if np.array_equal(values[finite], np.round(values[finite])):
            return pa.array(np.where(finite, values, 0).astype(np.int64), mask=~finite).cast(pa.string())
    return array.cast(pa.string())


def _as_numbers(series: pd.Series, source: str) -> np.ndarray:
    """Float64 values with NaN for missing; a non-numeric value is an error naming the column and the value."""
    values = None
    if pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    elif series.dtype == object:  # e.g. a JSON request's numbers and nulls: NumPy parses them, else the check below
        try:
            values = np.asarray(series.to_numpy(), dtype=np.float64)
        except (TypeError, ValueError):
            pass
    if values is None:
        converted = pd.to_numeric(series, errors="coerce")
        bad = converted.isna() & series.notna() & (series.astype("string").str.strip() != "")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{source}: numeric column '{series.name}' has a non-numeric value {str(series.iloc[row])!r} at row {row}; "
                f"fix the data or declare the column categorical in the schema"
            )
        values = converted.to_numpy(dtype=np.float64, na_value=np.nan)
    values = values.copy() if not values.flags.writeable else values
    values[~np.isfinite(values)] = np.nan
    return values


def numeric_transform(values: np.ndarray, kind: str) -> np.ndarray:
    if kind == "log1p":
        return np.copysign(np.log1p(np.abs(values)), values)  # sign(x) log1p(|x|), one pass fewer
    return values


def vocabulary_order(tokens: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Positions of `tokens` in vocabulary order: most frequent first, ties by token (deterministic)."""
    return np.lexsort((tokens, -counts))


class _Vocabulary:
    """Token -> index lookups. A large batch is dictionary-encoded once in Arrow and only its distinct tokens are
    looked up, through Arrow's `index_in` when they are many (it hashes the vocabulary per call: ~0.06 us per
    vocabulary token, GIL-free); a few rows, or a few distinct tokens, go through a dict built on first use, so a
    one-row request costs O(1) per field, not O(vocabulary), and no Arrow kernel call (~10 us each)."""

    ARROW_LOOKUP_RATIO = 8  # Arrow when distinct tokens >= vocabulary / 8
    SMALL_BATCH = 64  # up to this many rows, tokens are looked up one by one in Python

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self._array = pa.array(tokens, type=pa.string())
        self._index: dict[str, int] | None = None

    def lookup(self, tokens: pa.Array) -> np.ndarray:
        if len(tokens) <= self.SMALL_BATCH:
            return self._lookup_each(tokens.to_pylist())
        return self.lookup_encoded(_dictionary_encode(tokens))

    def lookup_encoded(self, encoded: pa.DictionaryArray) -> np.ndarray:
        dictionary = encoded.dictionary
        if len(dictionary) * self.ARROW_LOOKUP_RATIO >= len(self.tokens):
            if not pa.types.is_string(dictionary.type):
                dictionary = dictionary.cast(pa.string())
            positions = pc.index_in(dictionary, value_set=self._array).fill_null(-1).to_numpy(zero_copy_only=False)
            mapped = np.where(positions >= 0, positions + FIRST_TOKEN, OOV).astype(np.int32)
            empty_or_null = pc.fill_null(pc.equal(dictionary, ""), True)  # as `_lookup_each`: both are missing
            mapped[empty_or_null.to_numpy(zero_copy_only=False)] = MISSING
        else:
            mapped = self._lookup_each(dictionary.to_pylist())
        mapped = np.append(mapped, np.int32(MISSING))  # code -1 (a null input) -> missing
        indices = encoded.indices
        codes = (indices.fill_null(-1) if indices.null_count else indices).to_numpy(zero_copy_only=False)
        return mapped[codes]

    def _lookup_each(self, tokens: list[str | None]) -> np.ndarray:
        """Null and empty tokens -> MISSING, unseen -> OOV."""
        if self._index is None:
            self._index = {token: i + FIRST_TOKEN for i, token in enumerate(self.tokens)}
        index = self._index
        return np.array([index.get(token, OOV) if token else MISSING for token in tokens], dtype=np.int32)


def _decoded(tokens: pa.Array) -> pa.Array:
    """Plain strings (for string kernels such as split_pattern)."""
    return tokens.dictionary_decode() if pa.types.is_dictionary(tokens.type) else tokens


def _dictionary_encode(tokens: pa.Array) -> pa.DictionaryArray:
    if pa.types.is_dictionary(tokens.type):
        return tokens
    encoded = pc.dictionary_encode(tokens)
    return encoded.combine_chunks() if isinstance(encoded, pa.ChunkedArray) else encoded


def _fit_vocabulary(tokens: pa.Array, min_count: int, rows: np.ndarray | None = None) -> list[str]:
    """Tokens (of `rows` only, when given) seen at least `min_count` times, most frequent first, ties by token."""
    encoded = _dictionary_encode(tokens)
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    if rows is not None:
        codes = codes[rows]
    freq = np.bincount(codes[codes >= 0], minlength=len(encoded.dictionary))
    dictionary = encoded.dictionary
    keep = (freq >= min_count) & ~pc.fill_null(pc.equal(dictionary, ""), True).to_numpy(zero_copy_only=False)
    index = np.flatnonzero(keep)
    values = dictionary.take(pa.array(index)).to_numpy(zero_copy_only=False).astype(str)
    return values[vocabulary_order(values, freq[index])].tolist()


class FeatureEncoder:
    """Fit on the training rows, then `transform` any frame with the schema's feature columns."""

    def __init__(self, schema: FeatureSchema):
        self.schema = schema
        self.vocabularies: dict[str, _Vocabulary] = {}
        self.lengths: dict[str, int] = {}
        self.numeric_stats: dict[str, tuple[float, float]] = {}
        self.fitted = False

    # -- fitting -------------------------------------------------------------------------------------
    def fit(self, df: pd.DataFrame, rows: np.ndarray | None = None, source: str = "training data") -> "FeatureEncoder":
        """Learn vocabularies and numeric statistics from `df` (only `rows` of it, when given)."""
        s = self.schema
        s.check_columns(df, source, need_label=False)
        take = (lambda a: a.take(pa.array(rows))) if rows is not None else (lambda a: a)

        def categorical(col: str) -> _Vocabulary:
            return _Vocabulary(_fit_vocabulary(_as_tokens(df[col], source), s.min_count, rows))

        def numeric(col: str) -> tuple[float, float]:
            values = self._numeric_transform(_as_numbers(df[col], source))
            if rows is not None:
                values = values[rows]
            finite = values[np.isfinite(values)]
            mean = float(finite.mean()) if len(finite) else 0.0
            std = float(finite.std()) if len(finite) > 1 else 1.0
            return mean, std if std > 1e-12 else 1.0

        jobs = [(categorical, c) for c in s.categorical] + [(numeric, c) for c in s.numeric]
        results = map_columns(lambda job: job[0](job[1]), jobs, len(df))
        for (kind, col), result in zip(jobs, results):
            if kind is categorical:
                self.vocabularies[col] = result
            else:
                self.numeric_stats[col] = result
        for col in s.multivalued:
            lists = pc.split_pattern(take(_decoded(_as_tokens(df[col], source))), s.separator)
            self.vocabularies[col] = _Vocabulary(_fit_vocabulary(pc.list_flatten(lists), s.min_count))
            longest = pc.max(pc.list_value_length(lists)).as_py() or 1
            self.lengths[col] = int(min(max(longest, 1), s.max_tokens))
        self.fitted = True
        return self

    def _numeric_transform(self, values: np.ndarray) -> np.ndarray:
        return numeric_transform(values, self.schema.numeric_transform)

    def standardize(self, raw: np.ndarray, mean: float, std: float) -> np.ndarray:
        """Parsed numbers of numeric fields (a column, or a block with per-column mean and std) -> model inputs,
        exactly as `transform` computes them (float64, then clipped)."""
        values = raw.astype(np.float64)
        values[~np.isfinite(values)] = np.nan
        values = (numeric_transform(values, self.schema.numeric_transform) - mean) / std
        return np.clip(values, -CLIP, CLIP, out=values)

    # -- encoding ------------------------------------------------------------------------------------
    def transform(self, df: pd.DataFrame, source: str = "input", rows: np.ndarray | None = None) -> EncodedFeatures:
        """Encode the feature columns of `df`; extra columns are ignored, a missing one is an error.

        With `rows`, output row i encodes `df` row rows[i] (e.g. train, val, test rows back to back, so the
        parts are views of one array instead of copies)."""
        if not self.fitted:
            raise RuntimeError("FeatureEncoder is not fitted; call fit(train_frame) first")
        s = self.schema
        s.check_columns(df, source, need_label=False)
        n = len(df) if rows is None else len(rows)
        pick = (lambda values: values) if rows is None else (lambda values: values[rows])
        categorical = np.empty((n, len(s.categorical)), dtype=np.int32)
        numeric = np.empty((n, len(s.numeric)), dtype=np.float32)

        def encode_categorical(j: int) -> None:
            col = s.categorical[j]
            categorical[:, j] = pick(self.vocabularies[col].lookup(_as_tokens(df[col], source)))

        def encode_numeric(j: int) -> None:
            col = s.numeric[j]
            mean, std = self.numeric_stats[col]
            values = (self._numeric_transform(_as_numbers(df[col], source)) - mean) / std
            numeric[:, j] = pick(np.clip(values, -CLIP, CLIP, out=values))

        # one column per job: each writes its own column of the outputs
        jobs = [(encode_categorical, j) for j in range(len(s.categorical))]
        jobs += [(encode_numeric, j) for j in range(len(s.numeric))]
        map_columns(lambda job: job[0](job[1]), jobs, len(df))
        blocks = [pick(self._encode_multivalued(_as_tokens(df[col], source), col)) for col in s.multivalued]
        multivalued = np.concatenate(blocks, axis=1) if blocks else np.empty((n, 0), dtype=np.int32)
        return EncodedFeatures(categorical, multivalued, numeric)

    def _encode_multivalued(self, tokens: pa.Array, col: str) -> np.ndarray:
        """(N, L) indices, -1 padded; a row with no tokens holds the missing index in its first slot."""
        n, width = len(tokens), self.lengths[col]
        lists = pc.split_pattern(_decoded(tokens), self.schema.separator)
        lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = pc.list_flatten(lists)
        ids = self.vocabularies[col].lookup(flat) if len(flat) else np.empty(0, dtype=np.int32)
        out = np.full((n, width), -1, dtype=np.int32)
        row = np.repeat(np.arange(n), lengths)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        pos = np.arange(len(ids)) - starts
        keep = pos < width
        out[row[keep], pos[keep]] = ids[keep]
        out[lengths == 0, 0] = MISSING
        return out

    # -- layout for the model ------------------------------------------------------------------------
    @property
    def categorical_dims(self) -> list[int]:
        return [len(self.vocabularies[c].tokens) + FIRST_TOKEN for c in self.schema.categorical]

    @property
    def multivalued_dims(self) -> list[int]:
        return [len(self.vocabularies[c].tokens) + FIRST_TOKEN for c in self.schema.multivalued]

    @property
    def multivalued_lengths(self) -> list[int]:
        return [self.lengths[c] for c in self.schema.multivalued]

    # -- persistence ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        s = self.schema
        return {
            "format_version": ENCODER_FORMAT_VERSION,
            "schema": s.to_dict(),
            "categorical": {c: self.vocabularies[c].tokens for c in s.categorical},
            "multivalued": {c: {"tokens": self.vocabularies[c].tokens, "length": self.lengths[c]} for c in s.multivalued},
            "numeric": {c: {"mean": m, "std": sd} for c, (m, sd) in self.numeric_stats.items()},
        }

    @classmethod
    def from_fitted(cls, fitted: dict[str, Any]) -> "FeatureEncoder":
        """An encoder from vocabularies and statistics fitted elsewhere (e.g. streamed over an on-disk dataset)."""
        return cls.from_dict({**fitted, "format_version": ENCODER_FORMAT_VERSION})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeatureEncoder":
        if data.get("format_version") != ENCODER_FORMAT_VERSION:
            raise DataError(f"encoder format {data.get('format_version')!r} is not supported by this version")
        enc = cls(FeatureSchema.from_dict(data["schema"]))
        for col, tokens in data["categorical"].items():
            enc.vocabularies[col] = _Vocabulary(tokens)
        for col, entry in data["multivalued"].items():
            enc.vocabularies[col] = _Vocabulary(entry["tokens"])
            enc.lengths[col] = int(entry["length"])
        enc.numeric_stats = {c: (float(v["mean"]), float(v["std"])) for c, v in data["numeric"].items()}
        enc.fitted = True
        return enc

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FeatureEncoder":
        return cls.from_dict(json.loads(Path(path).read_text()))
