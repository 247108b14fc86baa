"""The encoded dataset on disk: a data set is read and encoded once; every trial, worker, resume and study maps it.

    <encoded_dir>/<fingerprint>/
        manifest.json       sources, schema, split settings, rows and clicks per split, file sizes + checksums
        encoder.json        the fitted FeatureEncoder (the same one the trained policy ships)
        split.npy           int8 per source row, in file order: 0 train, 1 validation, 2 test
        train/ val/ test/   categorical.npy (N, Fc) int32, multivalued.npy (N, L) int32, numeric.npy (N, Fn)
                            float32, labels.npy (N,) float32: memory-mapped, so workers share one copy
        test_rows.parquet   the raw rows of the test split (what promotion scores through the served model)

The fingerprint covers the source files' identity (path, size, mtime), the schema hints, the encoder settings
and the split settings. A build streams the files in Arrow record batches (memory grows with the vocabulary,
never with the rows): pass 1 parses each row once into raw token ids and numbers on disk; the split and the
vocabularies follow from those; pass 2 maps them to model inputs, split by split. It runs in a temp folder that
is renamed into place under a file lock, so concurrent workers build once and the others wait and map it. A
folder whose manifest, sizes or sampled checksums do not match is rebuilt, with a message.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from deepfm_tuner.model.data.tensors import PreparedData, TensorData
from deepfm_tuner.model.data.encoder import FIRST_TOKEN, MISSING, OOV, FeatureEncoder, arrow_tokens, numeric_transform, vocabulary_order
from deepfm_tuner.model.errors import DataError
from deepfm_tuner.model.filelock import file_lock
from deepfm_tuner.model.parallel import map_columns
from deepfm_tuner.model.data.reader import ValueParseError, batch_labels, numbers_from_text, read_types, sample_frame, stream_batches
from deepfm_tuner.model.data.schema import FeatureSchema

FORMAT_VERSION = 1
PARTS = ("train", "val", "test")
ARRAYS = ("categorical", "multivalued", "numeric", "labels")
CHUNK_ROWS = 1 << 18  # rows per step over the staged arrays (~40 MiB of Criteo inputs)
CHECKSUM_BLOCKS, CHECKSUM_BLOCK_BYTES = 16, 1 << 16  # sampled per file: a map is checked in milliseconds
BAD_NUMBERS_ALLOWED, BAD_NUMBERS_SHARE = 10, 0.001  # text in a numeric column: read as missing up to these
PAD, EMPTY = -2, -1  # multi-valued staging: padding, and a missing token (categorical staging uses EMPTY too)

Log = Callable[[str], None]


@dataclass(frozen=True)
class Source:
    """One input file and what its rows are for: 'split' rows are divided by the split rule, 'val' and 'test'
    rows (a given validation or test file) all go to that part."""

    path: str
    fmt: str
    role: str

    def identity(self) -> dict:
        stat = Path(self.path).stat()
        return {"path": str(Path(self.path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "format": self.fmt, "role": self.role}


@dataclass(frozen=True)
class SplitRule:
    val_fraction: float
    test_fraction: float
    seed: int
    order_by: str | None = None


# -- the public entry --------------------------------------------------------------------------------------
def open_or_build(sources: list[Source], schema_for: Callable, rule: SplitRule, root: str | Path,
                  settings: dict, log: Log = lambda message: None) -> PreparedData:
    """Map the encoded dataset for these sources and settings, building it first if it does not exist.

    `schema_for(sample, fmt)` settles the schema (`sample()` gives the first rows of the main file); `settings` (schema
    hints, encoder and split settings) go into the fingerprint."""
    root = Path(root)
    fingerprint = _fingerprint(sources, rule, settings)
    folder = root / fingerprint
    problem = _check(folder)
    if problem is None:
        return load(folder)  # a hit: the caller's summary says "hit"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with file_lock(root / f"{fingerprint}.lock"):
            problem = _check(folder)  # another worker may have built it while this one waited
            if problem is None:
                return load(folder)  # built by another process while this one waited
            if folder.exists():
                log(f"encoded dataset at {folder} is unusable ({problem}); rebuilding it")
                shutil.rmtree(folder)
            for stale in root.glob(f".{fingerprint}.tmp-*"):  # a killed build's leftovers (we hold the lock)
                shutil.rmtree(stale, ignore_errors=True)
            tmp = root / f".{fingerprint}.tmp-{os.getpid()}"
            try:
                build(tmp, sources, schema_for, rule, fingerprint,
                      _Progress(lambda message: log(message.replace(str(tmp), str(folder)))))
                os.rename(tmp, folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM):
            raise
        raise DataError(f"cannot write the encoded dataset under {root}: {exc.strerror}; free some space or set "
                        f"data.encoded_dir to a writable folder on a disk with room for it") from None
    return load(folder, hit=False)


class _Progress:
    """Build progress for people: silent for builds that end within QUIET_SECONDS (a small file's build, or one
    that fails on its first rows, leaves only the one-line result or error), then every message."""

    QUIET_SECONDS = 3.0

    def __init__(self, log: Log):
        self.log, self.started, self.pending = log, time.monotonic(), []

    def warn(self, message: str) -> None:
        """Something the user must see whatever the build's length."""
        self.log(message)

    def __call__(self, message: str) -> None:
        self.pending.append(message)
        if time.monotonic() - self.started >= self.QUIET_SECONDS:
            for pending in self.pending:
                self.log(pending)
            self.pending.clear()


def _fingerprint(sources: list[Source], rule: SplitRule, settings: dict) -> str:
    identity = {"version": FORMAT_VERSION, "sources": [s.identity() for s in sources],
                "split": rule.__dict__, "settings": settings}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- checks ----------------------------------------------------------------------------------------------
def _sampled_checksum(path: Path) -> str:
    """blake2b of the size and of CHECKSUM_BLOCKS blocks spread over the file: catches truncation and most
    overwrites at the cost of a few reads, so mapping a 3 GB dataset stays a millisecond affair."""
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as handle:
        for offset in np.linspace(0, max(0, size - CHECKSUM_BLOCK_BYTES), CHECKSUM_BLOCKS).astype(np.int64):
            handle.seek(int(offset))
            digest.update(handle.read(CHECKSUM_BLOCK_BYTES))
    return digest.hexdigest()


def _check(folder: Path) -> str | None:
    """None when the folder is a complete dataset of this format; else what is wrong with it."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        return "no manifest: a build did not finish" if folder.exists() else "missing"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return "unreadable manifest"
    if manifest.get("format_version") != FORMAT_VERSION:
        return f"format {manifest.get('format_version')} is not {FORMAT_VERSION}"
    for name, entry in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != entry["size"]:
            return f"{name} is missing or has the wrong size"
        if _sampled_checksum(path) != entry["checksum"]:
            return f"{name} does not match its checksum"
    return None


def manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())


# -- mapping ---------------------------------------------------------------------------------------------
def _map(path: Path) -> torch.Tensor:
    """A read-only tensor over the file's pages, shared with every process that maps it: nothing ever writes to
    it (a write would fault), so its pages stay page cache, never private copies."""
    try:
        array = np.load(path, mmap_mode="r")
    except ValueError:  # an array with no elements (e.g. no multi-valued fields) has no pages to map
        array = np.load(path)
    with warnings.catch_warnings():  # torch warns that the array is not writable: that is the point
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def load(folder: str | Path, hit: bool = True) -> PreparedData:
    folder = Path(folder)
    info = manifest(folder)
    parts = [TensorData(*(_map(folder / part / f"{name}.npy") for name in ARRAYS)) for part in PARTS]
    return PreparedData(FeatureEncoder.load(folder / "encoder.json"), *parts, fingerprint=info["fingerprint"],
                        folder=folder, cache_hit=hit)


# -- building --------------------------------------------------------------------------------------------
class _TokenIds:
    """Token -> raw id for one field, in order of first appearance; null and empty tokens -> EMPTY. Each batch
    looks up only its distinct tokens (Arrow dictionary-encodes the batch), so the cost follows the vocabulary."""

    def __init__(self) -> None:
        self.ids: dict[str | None, int] = {None: EMPTY, "": EMPTY}
        self.size = 0

    def encode(self, tokens: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Raw ids of `tokens`: a string array, or dictionary arrays (chunks sharing one dictionary)."""
        chunks = tokens.chunks if isinstance(tokens, pa.ChunkedArray) else [tokens]
        if not chunks:
            return np.empty(0, dtype=np.int32)
        if not pa.types.is_dictionary(chunks[0].type):
            chunks = [pc.dictionary_encode(pa.chunked_array(chunks).combine_chunks())]
        distinct = chunks[0].dictionary.to_pylist()
        ids = self.ids
        new = [t for t in distinct if t not in ids]  # set-like checks and one bulk insert: ~10x a setdefault loop
        ids.update(zip(new, range(self.size, self.size + len(new))))
        self.size += len(new)
        lookup = np.fromiter(map(ids.__getitem__, distinct), dtype=np.int32, count=len(distinct))
        indices = np.concatenate([c.indices.fill_null(-1).to_numpy(zero_copy_only=False) for c in chunks])
        return np.append(lookup, np.int32(EMPTY))[indices]

    def tokens(self) -> np.ndarray:
        return np.array(list(self.ids)[2:], dtype=object)  # by raw id (the two EMPTY entries come first)


class _Staging:
    """Pass 1's output: raw ids, numbers, labels (and order values) per source row, appended to files."""

    def __init__(self, folder: Path, schema: FeatureSchema, numeric_dtype: np.dtype):
        self.folder, self.schema = folder, schema
        self.widths = {"categorical": len(schema.categorical),
                       "multivalued": schema.max_tokens * len(schema.multivalued), "numeric": len(schema.numeric)}
        self.dtypes = {"categorical": np.int32, "multivalued": np.int32, "numeric": numeric_dtype}
        self.files = {name: open(folder / f"raw_{name}.bin", "wb") for name in (*self.widths, "labels")}
        self.rows = 0

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            self.files[name].write(np.ascontiguousarray(array).tobytes())
        self.rows += len(arrays["labels"])

    def close(self) -> dict[str, "_Staged"]:
        for handle in self.files.values():
            handle.close()
        return {name: _Staged(self.folder / f"raw_{name}.bin", self.dtypes.get(name, np.float32),
                              self.widths.get(name)) for name in self.files}


class _Staged:
    """One staged array, read back a chunk of rows at a time with plain reads: a memory map would count every
    page it touched in the process's resident memory, which must not grow with the rows."""

    def __init__(self, path: Path, dtype, width: int | None):
        self.path, self.dtype, self.width = path, np.dtype(dtype), width

    def __getitem__(self, rows: slice) -> np.ndarray:
        per_row = self.width if self.width is not None else 1
        shape = (rows.stop - rows.start,) if self.width is None else (rows.stop - rows.start, self.width)
        if per_row == 0:
            return np.empty(shape, dtype=self.dtype)
        values = np.fromfile(self.path, dtype=self.dtype, count=(rows.stop - rows.start) * per_row,
                             offset=rows.start * per_row * self.dtype.itemsize)
        return values.reshape(shape)


def _numbers(array: pa.Array) -> np.ndarray:
    return array.to_numpy(zero_copy_only=False)  # nulls -> NaN for float types


def _multivalued_ids(tokens: pa.Array, ids: _TokenIds, separator: str, width: int) -> np.ndarray:
    """(N, width) raw ids of each row's tokens, PAD after the last; a row with no tokens holds EMPTY first."""
    if isinstance(tokens, pa.ChunkedArray):
        tokens = tokens.combine_chunks()
    plain = tokens.dictionary_decode() if pa.types.is_dictionary(tokens.type) else tokens
    lists = pc.split_pattern(plain, separator)
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(lists)
    flat_ids = ids.encode(flat) if len(flat) else np.empty(0, dtype=np.int32)
    n = len(tokens)
    out = np.full((n, width), PAD, dtype=np.int32)
    row = np.repeat(np.arange(n), lengths)
    pos = np.arange(len(flat_ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = pos < width
    out[row[keep], pos[keep]] = flat_ids[keep]
    out[lengths == 0, 0] = EMPTY
    return out


def build(folder: Path, sources: list[Source], schema_for: Callable, rule: SplitRule, fingerprint: str,
          log: "_Progress") -> None:
    started = time.perf_counter()
    folder.mkdir(parents=True)
    main = sources[0]
    sample = functools.cache(lambda: sample_frame(main.path, main.fmt))  # read only if the schema needs it
    schema: FeatureSchema = schema_for(sample, main.fmt)
    extra = (rule.order_by,) if rule.order_by else ()
    types = read_types(schema, sample, main.fmt, extra)
    for source in sources[1:]:
        schema.check_columns(sample_frame(source.path, source.fmt, rows=10, block_bytes=1 << 20), source.path)
    bad_numbers: dict[str, tuple[int, tuple[str, int] | None]] = {}  # column -> (count, first bad value, row)

    def parse_all(types: dict[str, pa.DataType]):
        """Pass 1: parse every row once into raw ids and numbers (staged on disk), the split codes and the
        training statistics of the random split; the test rows of that split go to test_rows.parquet."""
        bad_numbers.clear()
        numeric_dtype = np.float32 if all(types[c] == pa.float32() for c in schema.numeric) else np.float64
        staging = _Staging(folder, schema, numeric_dtype)
        fields = {c: _TokenIds() for c in (*schema.categorical, *schema.multivalued)}
        rng = np.random.default_rng(rule.seed)
        codes: list[np.ndarray] = []
        order_values: list[np.ndarray] = []
        test_writer: pq.ParquetWriter | None = None
        stats = _TrainStats(schema)
        try:
            for source in sources:
                read_from = 0
                for batch in _grouped(stream_batches(source.path, source.fmt, types)):
                    n = batch.num_rows
                    arrays = {"labels": batch_labels(batch, schema.label, source.path, read_from)}
                    arrays["categorical"] = np.empty((n, len(schema.categorical)), dtype=np.int32)

                    def encode_column(j: int, batch=batch, out=arrays["categorical"]) -> None:
                        col = schema.categorical[j]  # one field per thread: Arrow and NumPy release the GIL
                        out[:, j] = fields[col].encode(arrow_tokens(batch.column(col)))

                    map_columns(encode_column, range(len(schema.categorical)), n)
                    arrays["multivalued"] = (np.concatenate(
                        [_multivalued_ids(batch.column(c), fields[c], schema.separator, schema.max_tokens)
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
    for column, (count, (value, row)) in bad_numbers.items():
        where = f"e.g. {value!r} at row {row}"
        if count > max(BAD_NUMBERS_ALLOWED, BAD_NUMBERS_SHARE * total_rows):
            raise DataError(f"numeric column '{column}' has {count:,} values that are not numbers ({where}); fix "
                            f"the data, or declare the column categorical in the schema")
        log.warn(f"numeric column '{column}': {count:,} value(s) that are not numbers read as missing ({where})")
    split = np.concatenate(codes)
    if not split_rows:
        split = _time_ordered_split(split, np.concatenate(order_values), sources, rule)
        test_writer = _write_test_rows_after(sources, types, split, folder)
    if test_writer is not None:
        test_writer.close()
    counts = {part: int((split == i).sum()) for i, part in enumerate(PARTS)}
    if counts["train"] < 1 or counts["val"] < 1:
        raise DataError(f"{sum(counts.values())} rows are too few to split into train/val/test "
                        f"({counts['train']} train, {counts['val']} validation); provide more data")
    clicks = dict.fromkeys(PARTS, 0.0)
    for rows in _chunks(len(split)):
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
        for rows in _chunks(len(split)):
            train = split[rows] == 0
            stats.add(raw["categorical"][rows][train], raw["multivalued"][rows][train], raw["numeric"][rows][train])
    encoder, mappings = stats.fit(fields)
    encoder.save(folder / "encoder.json")
    del fields

    # -- pass 2: model inputs, split by split -----------------------------------------------------------------
    np.save(folder / "split.npy", split)
    _write_parts(folder, encoder, raw, split, mappings, counts)
    for path in folder.glob("raw_*.bin"):
        path.unlink()
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    info = {
        "format_version": FORMAT_VERSION, "fingerprint": fingerprint,
        "sources": [s.identity() for s in sources], "split": rule.__dict__, "schema": schema.to_dict(),
        "rows": counts, "clicks": clicks, "fields": len(schema.features),
        "not_numbers_read_as_missing": {c: count for c, (count, _) in bad_numbers.items()},
        "seconds": {"parse": round(parsed - started, 3), "total": round(time.perf_counter() - started, 3)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {name: {"size": (folder / name).stat().st_size, "checksum": _sampled_checksum(folder / name)}
                  for name in files},
    }
    (folder / "manifest.json").write_text(json.dumps(info, indent=1) + "\n")  # written last: the commit mark
    log(f"encoded {sum(counts.values()):,} rows in {info['seconds']['total']:.1f} s "
        f"({counts['train']:,} train / {counts['val']:,} val / {counts['test']:,} test)")


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


def _write_test_rows_after(sources: list[Source], types: dict, split: np.ndarray, folder: Path):
    """Time-ordered splits know their test rows only after pass 1: read the files again for those rows."""
    writer, start = None, 0
    for source in sources:
        for batch in stream_batches(source.path, source.fmt, types):
            mask = split[start:start + batch.num_rows] == 2
            if mask.any():
                writer = _write_test_rows(writer, batch.filter(pa.array(mask)), folder)
            start += batch.num_rows
    return writer


def _chunks(n: int) -> Iterator[slice]:
    for start in range(0, n, CHUNK_ROWS):
        yield slice(start, min(n, start + CHUNK_ROWS))


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

    def fit(self, fields: dict[str, _TokenIds]) -> tuple[FeatureEncoder, dict[str, np.ndarray]]:
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


def _write_parts(folder: Path, encoder: FeatureEncoder, raw: dict[str, _Staged], split: np.ndarray,
                 mappings: dict[str, np.ndarray], counts: dict[str, int]) -> None:
    """Encoded .npy arrays per part, rows in file order: raw ids through the lookups, numbers standardised.
    Appended chunk by chunk with plain writes, so memory stays one chunk whatever the rows."""
    schema = encoder.schema
    lengths = encoder.multivalued_lengths
    widths = {"categorical": len(schema.categorical), "multivalued": sum(lengths), "numeric": len(schema.numeric),
              "labels": None}
    dtypes = {"categorical": np.int32, "multivalued": np.int32, "numeric": np.float32, "labels": np.float32}
    outputs = {}
    for part in PARTS:
        (folder / part).mkdir()
        outputs[part] = {name: _npy_writer(folder / part / f"{name}.npy", dtypes[name],
                                           (counts[part],) if width is None else (counts[part], width))
                         for name, width in widths.items()}
    width = schema.max_tokens
    # every categorical lookup in one array, so a block maps in one gather: column j's raw ids index from
    # offsets[j]; a raw EMPTY (-1) lands on the entry before, the previous lookup's last one: MISSING
    lookups = [mappings[c] for c in schema.categorical]
    offsets = np.cumsum([0] + [len(m) for m in lookups[:-1]]).astype(np.int64)
    lookup = np.concatenate(lookups) if lookups else np.empty(0, dtype=np.int32)
    means = np.array([encoder.numeric_stats[c][0] for c in schema.numeric])
    stds = np.array([encoder.numeric_stats[c][1] for c in schema.numeric])
    try:
        for rows in _chunks(len(split)):
            codes = split[rows]
            chunk = {name: raw[name][rows] for name in ARRAYS}
            for i, part in enumerate(PARTS):
                mask = codes == i
                k = int(mask.sum())
                if k == 0:
                    continue
                out = outputs[part]
                out["categorical"].write(lookup[chunk["categorical"][mask] + offsets].tobytes())
                block = chunk["multivalued"][mask]
                encoded = np.empty((k, widths["multivalued"]), dtype=np.int32)
                start = 0
                for m, col in enumerate(schema.multivalued):
                    ids = block[:, m * width:m * width + lengths[m]]
                    encoded[:, start:start + lengths[m]] = np.where(ids == PAD, -1, mappings[col][ids])
                    start += lengths[m]
                out["multivalued"].write(encoded.tobytes())
                out["numeric"].write(encoder.standardize(chunk["numeric"][mask], means, stds).astype(np.float32).tobytes())
                out["labels"].write(chunk["labels"][mask].tobytes())
    finally:
        for part in PARTS:
            for handle in outputs[part].values():
                handle.close()


def _npy_writer(path: Path, dtype, shape: tuple):
    """An open .npy file with its header written; the caller appends the rows' bytes in order."""
    handle = open(path, "wb")
    np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": shape})
    return handle
