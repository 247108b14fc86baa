"""The two-pass streamed build of an encoded dataset (see `layout`): memory grows with the vocabulary, never
with the rows. Pass 1 parses each row once, in Arrow record batches, into raw token ids and numbers staged on
disk; the split and the vocabularies (fitted on the training rows) follow from those; pass 2 maps them to model
inputs, split by split. The manifest is written last: a folder without one is an unfinished build."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from deepfm_tuner.model.data.encoder import (
    FIRST_TOKEN,
    MISSING,
    OOV,
    FeatureEncoder,
    arrow_tokens,
    numeric_transform,
    vocabulary_order,
)
from deepfm_tuner.model.data.layout import FORMAT_VERSION, PARTS, Source, SplitRule, sampled_checksum
from deepfm_tuner.model.data.reader import (
    ValueParseError,
    batch_labels,
    numbers_from_text,
    read_types,
    sample_frame,
    stream_batches,
)
from deepfm_tuner.model.data.schema import FeatureSchema
from deepfm_tuner.model.data.staging import PAD, Staging, TokenIds, chunks, multivalued_ids, write_parts
from deepfm_tuner.model.errors import DataError
from deepfm_tuner.model.parallel import map_columns

BAD_NUMBERS_ALLOWED, BAD_NUMBERS_SHARE = 10, 0.001  # text in a numeric column: read as missing up to these

Log = Callable[[str], None]


class _Progress:
    """Build progress for people: silent for builds that end within QUIET_SECONDS (a small file's build, or one
    that fails on its first rows, leaves only the one-line result or error), then every message."""

    QUIET_SECONDS = 3.0

    def __init__(self, log: Log):
        self.log, self.started, self.pending = log, time.monotonic(), []

    def __call__(self, message: str) -> None:
        self.pending.append(message)
        if time.monotonic() - self.started >= self.QUIET_SECONDS:
            for pending in self.pending:
                self.log(pending)
            self.pending.clear()


def _numbers(array: pa.Array) -> np.ndarray:
    return array.to_numpy(zero_copy_only=False)  # nulls -> NaN for float types


def build(folder: Path, sources: list[Source], schema_for: Callable, rule: SplitRule, fingerprint: str,
          log: Log) -> None:
    """Build the dataset of `sources` into the new `folder`; `schema_for(sample, fmt)` settles its schema."""
    started = time.perf_counter()
    log = _Progress(log)
    folder.mkdir(parents=True)
    main = sources[0]
    sample = functools.cache(lambda: sample_frame(main.path, main.fmt))  # read only if the schema needs it
    schema: FeatureSchema = schema_for(sample, main.fmt)
    extra = (rule.order_by,) if rule.order_by else ()
    types = read_types(schema, sample, main.fmt, extra)
    for source in sources[1:]:
        first_rows = _first_rows(source)
        if source.role == "split":  # one of several training files: the same columns as the first
            _same_columns(source, first_rows, main)
        schema.check_columns(first_rows, source.path)
    bad_numbers: dict[str, tuple[int, tuple[str, int] | None]] = {}  # column -> (count, first bad value, row)

    def parse_all(types: dict[str, pa.DataType]):
        """Pass 1: parse every row once into raw ids and numbers (staged on disk), the split codes and the
        training statistics of the random split; the test rows of that split go to test_rows.parquet."""
        bad_numbers.clear()
        numeric_dtype = np.float32 if all(types[c] == pa.float32() for c in schema.numeric) else np.float64
        staging = Staging(folder, schema, numeric_dtype)
        fields = {c: TokenIds() for c in (*schema.categorical, *schema.multivalued)}
        rng = np.random.default_rng(rule.seed)
        codes: list[np.ndarray] = []
        order_values: list[np.ndarray] = []
        test_writer: pq.ParquetWriter | None = None
        stats = _TrainStats(schema)
        try:
            for source in sources:
                read_from = 0
                for batch in _grouped(stream_batches(source.path, source.fmt, types, schema.label)):
                    n = batch.num_rows
                    arrays = {"labels": batch_labels(batch, schema.label, source.path, read_from)}
                    arrays["categorical"] = np.empty((n, len(schema.categorical)), dtype=np.int32)

                    def encode_column(j: int, batch=batch, out=arrays["categorical"]) -> None:
                        col = schema.categorical[j]  # one field per thread: Arrow and NumPy release the GIL
                        out[:, j] = fields[col].encode(arrow_tokens(batch.column(col)))

                    map_columns(encode_column, range(len(schema.categorical)), n)
                    arrays["multivalued"] = (np.concatenate(
                        [multivalued_ids(batch.column(c), fields[c], schema.separator, schema.max_tokens)
                         for c in schema.multivalued], axis=1) if schema.multivalued else np.empty((n, 0), np.int32))
                    arrays["numeric"] = np.empty((n, len(schema.numeric)), dtype=numeric_dtype)
                    for j, col in enumerate(schema.numeric):
                        column = batch.column(col)
                        arrays["numeric"][:, j] = (numbers_from_text(column, col, source.path, read_from, bad_numbers)
                                                   if pa.types.is_string(column.type) else _numbers(column))
                    staging.append(arrays)
                    if staging.rows == n:  # the first batch parsed: the schema and the first rows are good
                        log(f"encoded dataset: miss; encoding {', '.join(s.path for s in sources)} into {folder}")
                    if source.role == "split":
                        if split_rows:
                            u = rng.random(n)
                            code = np.where(u < rule.val_fraction, 1, np.where(
                                u < rule.val_fraction + rule.test_fraction, 2, 0)).astype(np.int8)
                        else:
                            order_values.append(_order_values(batch.column(rule.order_by), source.path,
                                                              rule.order_by))
                            code = np.zeros(n, dtype=np.int8)
                    else:
                        code = np.full(n, 1 if source.role == "val" else 2, dtype=np.int8)
                    codes.append(code)
                    if split_rows:
                        train = code == 0
                        stats.add(arrays["categorical"][train], arrays["multivalued"][train],
                                  arrays["numeric"][train])
                    if split_rows and (code == 2).any():
                        test_writer = _write_test_rows(test_writer, batch.filter(pa.array(code == 2)), folder)
                    read_from += n
                if read_from == 0:
                    raise DataError(f"{source.path}: the file has no data rows")
        except BaseException:
            staging.close()
            if test_writer is not None:
                test_writer.close()
            raise
        return staging.close(), codes, order_values, test_writer, stats, fields

    split_rows = rule.order_by is None  # random splits are known per batch; time-ordered ones after pass 1
    while True:
        try:
            raw, codes, order_values, test_writer, stats, fields = parse_all(types)
            break
        except ValueParseError as exc:  # text in a numeric column: read it as text, count what is not a number
            if exc.column not in schema.numeric or types[exc.column] == pa.string():
                raise
            types = {**types, exc.column: pa.string()}
    total_rows = sum(len(c) for c in codes)
    warnings = []  # kept in the manifest: every command that maps the dataset repeats them (cache.open_or_build)
    for column, (count, (value, row)) in bad_numbers.items():
        where = f"e.g. {value!r} at row {row}"
        if count > max(BAD_NUMBERS_ALLOWED, BAD_NUMBERS_SHARE * total_rows):
            raise DataError(f"numeric column '{column}' has {count:,} values that are not numbers ({where}); fix "
                            f"the data, or declare the column categorical in the schema")
        warnings.append(f"numeric column '{column}': {count:,} value(s) that are not numbers read as missing "
                        f"({where})")
    split = np.concatenate(codes)
    if not split_rows:
        split = _time_ordered_split(split, np.concatenate(order_values), sources, rule)
        test_writer = _write_test_rows_after(sources, types, schema.label, split, folder)
    if test_writer is not None:
        test_writer.close()
    counts = {part: int((split == i).sum()) for i, part in enumerate(PARTS)}
    if counts["train"] < 1 or counts["val"] < 1:
        raise DataError(f"{sum(counts.values())} rows are too few to split into train/val/test "
                        f"({counts['train']} train, {counts['val']} validation); provide more data")
    clicks = dict.fromkeys(PARTS, 0.0)
    for rows in chunks(len(split)):
        labels, codes = raw["labels"][rows], split[rows]
        for i, part in enumerate(PARTS):
            clicks[part] += float(labels[codes == i].sum())
    for part in ("train", "val"):
        if clicks[part] in (0.0, float(counts[part])):
            only = "1 (click)" if clicks[part] else "0 (no click)"
            raise DataError(f"the {'training' if part == 'train' else 'validation'} split has only label {only} in "
                            f"its {counts[part]:,} rows: no model can learn or be ranked on one class; provide "
                            f"data with both clicks and non-clicks")
    parsed = time.perf_counter()

    # -- the encoder, fitted on the training rows ------------------------------------------------------------
    if not split_rows:
        for rows in chunks(len(split)):
            train = split[rows] == 0
            stats.add(raw["categorical"][rows][train], raw["multivalued"][rows][train], raw["numeric"][rows][train])
    encoder, mappings = stats.fit(fields)
    encoder.save(folder / "encoder.json")
    del fields

    # -- pass 2: model inputs, split by split -----------------------------------------------------------------
    np.save(folder / "split.npy", split)
    write_parts(folder, encoder, raw, split, mappings, counts)
    for path in folder.glob("raw_*.bin"):
        path.unlink()
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    info = {
        "format_version": FORMAT_VERSION, "fingerprint": fingerprint,
        "sources": [s.identity() for s in sources], "split": rule.__dict__, "schema": schema.to_dict(),
        "rows": counts, "clicks": clicks, "fields": len(schema.features),
        "not_numbers_read_as_missing": {c: count for c, (count, _) in bad_numbers.items()}, "warnings": warnings,
        "seconds": {"parse": round(parsed - started, 3), "total": round(time.perf_counter() - started, 3)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {name: {"size": (folder / name).stat().st_size, "checksum": sampled_checksum(folder / name)}
                  for name in files},
    }
    (folder / "manifest.json").write_text(json.dumps(info, indent=1) + "\n")  # written last: the commit mark
    log(f"encoded {sum(counts.values()):,} rows in {info['seconds']['total']:.1f} s "
        f"({counts['train']:,} train / {counts['val']:,} val / {counts['test']:,} test)")


def _first_rows(source: Source) -> pd.DataFrame:
    return sample_frame(source.path, source.fmt, rows=10, block_bytes=1 << 20)


def _same_columns(source: Source, first_rows: pd.DataFrame, main: Source) -> None:
    """The training files are one dataset (e.g. one file a day): each has the first one's columns."""
    if source.fmt != main.fmt:
        raise DataError(f"{source.path}: a {source.fmt} file among data.train's {main.fmt} files; the files of "
                        f"data.train must all have one format: convert it, or give data.format")
    have, want = list(map(str, first_rows.columns)), list(map(str, _first_rows(main).columns))
    if set(have) != set(want):
        missing, extra = [c for c in want if c not in have], [c for c in have if c not in want]
        differ = "; ".join(part for part in (f"missing {', '.join(map(repr, missing))}" if missing else "",
                                             f"extra {', '.join(map(repr, extra))}" if extra else "") if part)
        raise DataError(f"{source.path}: its columns differ from {main.path}'s ({differ}); the files of data.train "
                        f"must all have the same columns")


GROUP_ROWS = 1 << 18  # parsed blocks are processed ~256k rows at a time: fewer distinct tokens to look up per row


def _grouped(batches: Iterator[pa.RecordBatch], rows: int = GROUP_ROWS) -> Iterator[pa.Table]:
    """Small parsed blocks (small, so the parser stays lean) grouped into tables of ~`rows` rows whose token
    dictionaries Arrow unifies, so each distinct token is looked up in Python once per group, not per block."""
    group: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        group.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield _join(group)
            group, count = [], 0
    if group:
        yield _join(group)


def _join(group: list[pa.RecordBatch]) -> pa.Table:
    return pa.Table.from_batches(group).unify_dictionaries()  # the chunks of a column now share one dictionary


def _order_values(array: pa.Array, source: str, column: str) -> np.ndarray:
    if pa.types.is_timestamp(array.type) or pa.types.is_date(array.type):
        array = array.cast(pa.int64())
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        raise DataError(f"{source}: data.order_by column '{column}' holds {array.type} values; it must be a number "
                        f"or a timestamp (e.g. 2024-01-31 12:00:00)")
    if array.null_count:
        raise DataError(f"{source}: data.order_by column '{column}' has {array.null_count} empty values; every row "
                        f"needs a time to be split by time")
    return array.to_numpy(zero_copy_only=False)


def _time_ordered_split(split: np.ndarray, order: np.ndarray, sources: list[Source], rule: SplitRule) -> np.ndarray:
    """The latest rows of the main file become validation then test (a stable sort keeps file order on ties)."""
    n = len(order)
    n_val, n_test = int(round(n * rule.val_fraction)), int(round(n * rule.test_fraction))
    ranked = np.argsort(order, kind="stable")
    main = split[:n].copy()
    main[ranked[n - n_val - n_test: n - n_test]] = 1
    main[ranked[n - n_test:]] = 2
    return np.concatenate([main, split[n:]])


def _write_test_rows(writer: pq.ParquetWriter | None, rows: pa.Table | pa.RecordBatch,
                     folder: Path) -> pq.ParquetWriter:
    if writer is None:
        writer = pq.ParquetWriter(folder / "test_rows.parquet", rows.schema)
    writer.write_table(rows if isinstance(rows, pa.Table) else pa.Table.from_batches([rows]))
    return writer


def _write_test_rows_after(sources: list[Source], types: dict, label: str, split: np.ndarray, folder: Path):
    """Time-ordered splits know their test rows only after pass 1: read the files again for those rows."""
    writer, start = None, 0
    for source in sources:
        for batch in stream_batches(source.path, source.fmt, types, label):
            mask = split[start:start + batch.num_rows] == 2
            if mask.any():
                writer = _write_test_rows(writer, batch.filter(pa.array(mask)), folder)
            start += batch.num_rows
    return writer


class _TrainStats:
    """What the encoder learns from the training rows, accumulated batch by batch: token counts per field, the
    longest multi-valued row, and numeric count/mean/M2 (Chan's parallel merge, as exact as a two-pass std)."""

    def __init__(self, schema: FeatureSchema):
        self.schema = schema
        self.token_counts = {c: np.zeros(0, dtype=np.int64) for c in (*schema.categorical, *schema.multivalued)}
        self.longest = {c: 0 for c in schema.multivalued}
        self.numeric = {c: (0, 0.0, 0.0) for c in schema.numeric}

    def _count(self, col: str, ids: np.ndarray) -> None:
        counts = np.bincount(ids[ids >= 0])
        total = self.token_counts[col]
        if len(counts) > len(total):
            total = np.concatenate([total, np.zeros(len(counts) - len(total), dtype=np.int64)])
        total[:len(counts)] += counts
        self.token_counts[col] = total

    def add(self, categorical: np.ndarray, multivalued: np.ndarray, numeric: np.ndarray) -> None:
        s, width = self.schema, self.schema.max_tokens
        for k, col in enumerate(s.multivalued):
            ids = multivalued[:, k * width:(k + 1) * width]
            self._count(col, ids)
            if len(ids):
                self.longest[col] = max(self.longest[col], int((ids != PAD).sum(axis=1).max()))

        def add_column(job: tuple[str, int]) -> None:  # one field per thread, each with its own accumulators
            kind, j = job
            if kind == "categorical":
                self._count(s.categorical[j], categorical[:, j])
            else:
                self._add_numbers(s.numeric[j], numeric[:, j])

        jobs = [("categorical", j) for j in range(len(s.categorical))] + [("numeric", j) for j in range(len(s.numeric))]
        map_columns(add_column, jobs, len(categorical))

    def _add_numbers(self, col: str, raw: np.ndarray) -> None:
        values = numeric_transform(raw.astype(np.float64), self.schema.numeric_transform)
        values = values[np.isfinite(values)]
        if len(values):
            n_a, mean_a, m2_a = self.numeric[col]
            n_b, mean_b = len(values), float(values.mean())
            m2_b = float(np.square(values - mean_b).sum())
            n = n_a + n_b
            delta = mean_b - mean_a
            self.numeric[col] = (n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n)

    def fit(self, fields: dict[str, TokenIds]) -> tuple[FeatureEncoder, dict[str, np.ndarray]]:
        """The encoder (vocabularies with min-count, by frequency; numeric statistics) and per field the raw id
        -> model index lookup, whose last entry (for EMPTY = -1) is the missing index."""
        s = self.schema
        fitted = {"schema": s.to_dict(), "categorical": {}, "multivalued": {}, "numeric": {}}
        mappings: dict[str, np.ndarray] = {}
        for col, field_ids in fields.items():
            tokens = field_ids.tokens()
            counts = np.zeros(len(tokens), dtype=np.int64)
            counts[:len(self.token_counts[col])] = self.token_counts[col]
            kept = np.flatnonzero(counts >= s.min_count)
            ranked = kept[vocabulary_order(tokens[kept].astype(str), counts[kept])]
            mapping = np.full(len(tokens) + 1, OOV, dtype=np.int32)
            mapping[ranked] = np.arange(len(ranked), dtype=np.int32) + FIRST_TOKEN
            mapping[-1] = MISSING
            mappings[col] = mapping
            vocabulary = tokens[ranked].tolist()
            if col in self.longest:
                fitted["multivalued"][col] = {"tokens": vocabulary,
                                              "length": min(max(self.longest[col], 1), s.max_tokens)}
            else:
                fitted["categorical"][col] = vocabulary
        for col, (n, mean, m2) in self.numeric.items():
            std = float(np.sqrt(m2 / n)) if n > 1 else 1.0
            fitted["numeric"][col] = {"mean": mean if n else 0.0, "std": std if std > 1e-12 else 1.0}
        return FeatureEncoder.from_fitted(fitted), mappings
