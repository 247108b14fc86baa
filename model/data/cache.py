"""The encoded dataset a trial maps: a data set is read and encoded once (`build`); every trial, worker, resume
and study maps it from `<encoded_dir>/<fingerprint>/` (see `layout`).

The fingerprint covers the source files' identity (path, size, mtime), the schema hints, the encoder settings
and the split settings. A build runs in a temp folder that is renamed into place under a file lock, so
concurrent workers build once and the others wait and map it. A folder whose manifest, sizes or sampled
checksums do not match is rebuilt, with a message. Mapping loads the arrays as read-only NumPy memory maps:
torch is loaded only when training asks for tensors (`PreparedData`).

A study with `data.tune_rows` trains its trials on one seeded sample of the training rows (`train_sample`),
written once per dataset, size and seed as its own part folder beside the others, the same way (a temp folder
renamed into place under a lock, a manifest with sizes and checksums), and mapped by every trial and worker:

    <encoded_dir>/<fingerprint>/samples/train-<rows>-seed<seed>/  manifest.json, categorical.npy, multivalued.npy,
                                                                   numeric.npy, labels.npy (the rows in split order)
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from deepfm_tuner.model.data.build import Log, build
from deepfm_tuner.model.data.encoder import EncodedFeatures, FeatureEncoder
from deepfm_tuner.model.data.layout import ARRAYS, FORMAT_VERSION, PARTS, Source, SplitRule, sampled_checksum
from deepfm_tuner.model.data.tensors import EncodedRows, PreparedData, TrainSample
from deepfm_tuner.model.errors import DataError
from deepfm_tuner.model.filelock import file_lock, try_file_lock


# -- the public entry --------------------------------------------------------------------------------------
def open_or_build(sources: list[Source], schema_for: Callable, rule: SplitRule, root: str | Path,
                  settings: dict, log: Log = lambda message: None) -> PreparedData:
    """Map the encoded dataset for these sources and settings, building it first if it does not exist; what the
    build warned about (e.g. text read as missing numbers) is logged again on every map.

    `schema_for(sample, fmt)` settles the schema (`sample()` gives the first rows of the main file); `settings` (schema
    hints, encoder and split settings) go into the fingerprint."""
    root = Path(root)
    fingerprint = _fingerprint(sources, rule, settings)
    folder = root / fingerprint
    problem = _check(folder)
    if problem is None:
        return _mapped(folder, True, log)  # a hit: the caller's summary says "hit"
    _check_root(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with file_lock(root / f"{fingerprint}.lock"):
            problem = _check(folder)  # another worker may have built it while this one waited
            if problem is None:
                return _mapped(folder, True, log)  # built by another process while this one waited
            if folder.exists():
                log(f"encoded dataset at {folder} is unusable ({problem}); rebuilding it")
                shutil.rmtree(folder)
            _remove_abandoned_builds(root, fingerprint)
            tmp = root / f".{fingerprint}{TMP_PREFIX}{os.getpid()}"
            try:
                build(tmp, sources, schema_for, rule, fingerprint,
                      lambda message: log(message.replace(str(tmp), str(folder))))
                os.rename(tmp, folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM):
            raise
        raise DataError(f"cannot write the encoded dataset under {root}: {exc.strerror}; free some space or set "
                        f"data.encoded_dir to a writable folder on a disk with room for it") from None
    return _mapped(folder, False, log)


def _mapped(folder: Path, hit: bool, log: Log) -> PreparedData:
    prepared = load(folder, hit=hit)
    for warning in manifest(folder).get("warnings", []):
        log(warning)
    return prepared


def _check_root(root: Path) -> None:
    """`encoded_dir` must be a folder, or a path where one can be made: not a file, nor under one."""
    for path in (root, *root.parents):
        if path.exists() and not path.is_dir():
            where = "is" if path == root else f"is under {path}, which is"
            raise DataError(f"data.encoded_dir {root} {where} a file, not a folder; set data.encoded_dir to a "
                            f"folder (or move the file away)")
        if path.exists():
            return


TMP_PREFIX = ".tmp-"  # a build writes into <root>/.<fingerprint>.tmp-<pid>, renamed into place when complete


def _remove_abandoned_builds(root: Path, fingerprint: str) -> None:
    """Temp folders of builds that were killed: this fingerprint's (its lock is ours), and any other fingerprint's
    whose builder is gone (its lock is free and its pid is not a live process here), so a source that changed after
    a killed build leaves nothing behind. A build still running keeps its folder."""
    for stale in root.glob(f".*{TMP_PREFIX}*"):
        other, _, pid = stale.name[1:].partition(TMP_PREFIX)
        if other == fingerprint:
            shutil.rmtree(stale, ignore_errors=True)
        elif pid.isdigit() and not _alive(int(pid)):
            with try_file_lock(root / f"{other}.lock") as free:
                if free:
                    shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _fingerprint(sources: list[Source], rule: SplitRule, settings: dict) -> str:
    identity = {"version": FORMAT_VERSION, "sources": [s.identity() for s in sources],
                "split": rule.__dict__, "settings": settings}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- checks ----------------------------------------------------------------------------------------------
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
        if sampled_checksum(path) != entry["checksum"]:
            return f"{name} does not match its checksum"
    return None


def manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())


# -- mapping ---------------------------------------------------------------------------------------------
def _map(path: Path) -> np.ndarray:
    """A read-only memory map of the file's pages, shared with every process that maps it: nothing ever writes
    to it (a write would fault), so its pages stay page cache, never private copies."""
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:  # an array with no elements (e.g. no multi-valued fields) has no pages to map
        return np.load(path)


def load(folder: str | Path, hit: bool = True) -> PreparedData:
    """The dataset in `folder`, its arrays memory-mapped: tensors over them come when training asks."""
    folder = Path(folder)
    info = manifest(folder)
    parts = {}
    for part in PARTS:
        categorical, multivalued, numeric, labels = (_map(folder / part / f"{name}.npy") for name in ARRAYS)
        parts[part] = EncodedRows(EncodedFeatures(categorical, multivalued, numeric), labels)
    return PreparedData(FeatureEncoder.load(folder / "encoder.json"), parts, fingerprint=info["fingerprint"],
                        folder=folder, cache_hit=hit)


# -- the trials' sample of the training rows (data.tune_rows) ---------------------------------------------
SAMPLE_CHUNK_ROWS = 1 << 16  # rows gathered and written at a time: the gather holds a few MiB, whatever the size


def sample_rows(n: int, rows: int, seed: int) -> np.ndarray:
    """`rows` distinct row indices of `n`, drawn with `seed`, in split order (sorted: written and read in order)."""
    return np.sort(np.random.default_rng(seed).choice(n, size=rows, replace=False, shuffle=False))


def train_sample(prepared: PreparedData, rows: int, seed: int, log: Log = lambda message: None) -> PreparedData:
    """`prepared` with its training split replaced by `rows` of its rows drawn with `seed`: mapped from the
    dataset's `samples/` folder (written there once, under a lock, by whoever needs it first), so every trial,
    worker and resume trains on the same rows without a copy each. Validation and test rows are unchanged; a
    split no larger than `rows` is kept whole."""
    train = prepared.parts["train"]
    if rows >= len(train):
        return dataclasses.replace(prepared, sample=TrainSample(len(train), len(train), seed))
    if prepared.folder is None:  # an in-memory dataset (notebooks, tests): its sample is in memory too
        index = sample_rows(len(train), rows, seed)
        features = train.features
        sample = EncodedRows(EncodedFeatures(features.categorical[index], features.multivalued[index],
                                             features.numeric[index]), train.labels[index])
    else:
        sample = _mapped_sample(prepared.folder, train, rows, seed, log)
    return dataclasses.replace(prepared, parts={**prepared.parts, "train": sample},
                               sample=TrainSample(rows, len(train), seed))


def _mapped_sample(dataset: Path, train: EncodedRows, rows: int, seed: int, log: Log) -> EncodedRows:
    root = dataset / "samples"
    name = f"train-{rows}-seed{seed}"
    folder = root / name
    try:
        if _check(folder) is not None:
            root.mkdir(exist_ok=True)
            with file_lock(root / f"{name}.lock"):
                if (problem := _check(folder)) is not None:  # not written by another worker while this one waited
                    if folder.exists():
                        log(f"training sample at {folder} is unusable ({problem}); writing it again")
                        shutil.rmtree(folder)
                    _write_sample(root, name, train, rows, seed)
                    log(f"training sample: {rows:,} of {len(train):,} rows (seed {seed}) written to {folder}")
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM):
            raise
        raise DataError(f"cannot write the training sample (data.tune_rows) under {root}: {exc.strerror}; free some "
                        f"space or set data.encoded_dir to a writable folder on a disk with room for it") from None
    categorical, multivalued, numeric, labels = (_map(folder / f"{array}.npy") for array in ARRAYS)
    return EncodedRows(EncodedFeatures(categorical, multivalued, numeric), labels)


def _write_sample(root: Path, name: str, train: EncodedRows, rows: int, seed: int) -> None:
    """Gather the sample's rows array by array, SAMPLE_CHUNK_ROWS at a time, into a temp folder renamed into place
    once its manifest is written (a killed writer's temp folder is removed by the next one: the lock is ours)."""
    for stale in root.glob(f".{name}{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".{name}{TMP_PREFIX}{os.getpid()}"
    try:
        tmp.mkdir()
        index = sample_rows(len(train), rows, seed)
        sources = (train.features.categorical, train.features.multivalued, train.features.numeric, train.labels)
        files = {}
        for array, source in zip(ARRAYS, sources):
            path = tmp / f"{array}.npy"
            _write_rows(source, index, path)
            files[path.name] = {"size": path.stat().st_size, "checksum": sampled_checksum(path)}
        (tmp / "manifest.json").write_text(json.dumps(
            {"format_version": FORMAT_VERSION, "rows": rows, "of": len(train), "seed": seed, "files": files},
            indent=2))
        os.rename(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_rows(source: np.ndarray, index: np.ndarray, path: Path) -> None:
    shape = (len(index), *source.shape[1:])
    if 0 in shape:  # e.g. no multi-valued fields: nothing to gather (and no pages to map)
        np.save(path, np.empty(shape, dtype=source.dtype))
        return
    out = np.lib.format.open_memmap(path, mode="w+", dtype=source.dtype, shape=shape)
    for start in range(0, len(index), SAMPLE_CHUNK_ROWS):
        chunk = index[start:start + SAMPLE_CHUNK_ROWS]
        out[start:start + len(chunk)] = source[chunk]
    out.flush()
    del out
