"""The arrays a build writes, with memory that never grows with the rows: pass 1 turns tokens into raw ids
(`TokenIds`) and appends them to staged files (`Staging`), read back a chunk of rows at a time (`Staged`);
pass 2 appends the encoded model inputs to one .npy file per array and part (`write_parts`)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from deepfm_tuner.model.data.encoder import FeatureEncoder
from deepfm_tuner.model.data.layout import ARRAYS, PARTS
from deepfm_tuner.model.data.schema import FeatureSchema

CHUNK_ROWS = 1 << 18  # rows per step over the staged arrays (~40 MiB of Criteo inputs)
PAD, EMPTY = -2, -1  # multi-valued staging: padding, and a missing token (categorical staging uses EMPTY too)


class TokenIds:
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


def multivalued_ids(tokens: pa.Array, ids: TokenIds, separator: str, width: int) -> np.ndarray:
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


class Staging:
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

    def close(self) -> dict[str, "Staged"]:
        for handle in self.files.values():
            handle.close()
        return {name: Staged(self.folder / f"raw_{name}.bin", self.dtypes.get(name, np.float32),
                             self.widths.get(name)) for name in self.files}


class Staged:
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


def chunks(n: int) -> Iterator[slice]:
    for start in range(0, n, CHUNK_ROWS):
        yield slice(start, min(n, start + CHUNK_ROWS))


def write_parts(folder: Path, encoder: FeatureEncoder, raw: dict[str, Staged], split: np.ndarray,
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
        for rows in chunks(len(split)):
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
