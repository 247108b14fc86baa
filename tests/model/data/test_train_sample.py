"""data.tune_rows: one seeded sample of the training rows, written once beside the encoded dataset and mapped by
every trial, worker and resume; validation and test rows unchanged."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from deepfm_tuner.model.data.cache import sample_rows
from deepfm_tuner.model.data.layout import ARRAYS
from deepfm_tuner.model.data.source import DataSpec


def criteo_spec(directory: Path, tmp_path: Path, **extra) -> DataSpec:
    return DataSpec(train=str(directory / "train.tsv"), test=str(directory / "test.tsv"), format="criteo",
                    encoded_dir=str(tmp_path / "encoded"), **extra)


def digest(rows) -> str:
    """One hash of a split's four arrays: the same rows, in the same order, give the same hash."""
    h = hashlib.sha256()
    for array in (rows.features.categorical, rows.features.multivalued, rows.features.numeric, rows.labels):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def test_the_sample_is_the_seeded_rows_of_the_training_split_mapped_read_only(tiny_criteo_dir, tmp_path):
    messages: list[str] = []
    spec = criteo_spec(tiny_criteo_dir, tmp_path, tune_rows=500)
    full = spec.prepare()
    trials = spec.for_trials(full, messages.append)
    train = full.parts["train"]
    index = sample_rows(len(train), 500, spec.split_seed)
    sample = trials.parts["train"]
    assert len(sample) == 500 and len(np.unique(index)) == 500
    assert np.array_equal(sample.features.categorical, train.features.categorical[index])
    assert np.array_equal(sample.labels, train.labels[index])
    np.testing.assert_array_equal(sample.features.numeric, train.features.numeric[index])
    assert trials.parts["val"] is full.parts["val"] and trials.parts["test"] is full.parts["test"]
    assert isinstance(sample.labels, np.memmap) and not sample.labels.flags.writeable  # mapped: no copy per trial
    folder = full.folder / "samples" / "train-500-seed42"
    assert [m for m in messages if "training sample" in m] == [
        f"training sample: 500 of {len(train):,} rows (seed 42) written to {folder}"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*(f"{a}.npy" for a in ARRAYS), "manifest.json"])
    assert f"trials train on 500 of {len(train):,} rows (sample seed 42)" in trials.summary()
    assert f"{len(train):,} train / " in trials.summary()  # the split's size, not the sample's

    # a resume (or another study on the same data, size and seed) maps it: the same rows, nothing written
    stamp = (folder / "categorical.npy").stat().st_mtime_ns
    messages.clear()
    again = criteo_spec(tiny_criteo_dir, tmp_path, tune_rows=500).for_trials(spec.prepare(), messages.append)
    assert messages == [] and digest(again.parts["train"]) == digest(sample)
    assert (folder / "categorical.npy").stat().st_mtime_ns == stamp


def test_a_fraction_a_size_past_the_split_and_another_seed(tiny_criteo_dir, tmp_path):
    full = criteo_spec(tiny_criteo_dir, tmp_path).prepare()
    rows = len(full.parts["train"])
    fraction = criteo_spec(tiny_criteo_dir, tmp_path, tune_rows=0.25).for_trials(full)
    assert len(fraction.parts["train"]) == round(0.25 * rows)
    whole = criteo_spec(tiny_criteo_dir, tmp_path, tune_rows=rows + 1).for_trials(full)
    assert whole.parts["train"] is full.parts["train"] and whole.sample.whole
    assert f"trials train on all {rows:,} rows (data.tune_rows is not below the split's rows)" in whole.summary()
    other = criteo_spec(tiny_criteo_dir, tmp_path, tune_rows=0.25, split_seed=7).prepare()
    assert other.fingerprint != full.fingerprint  # split_seed splits differently: its own dataset and sample
    assert criteo_spec(tiny_criteo_dir, tmp_path).for_trials(full) is full  # no tune_rows: every row, as before


def test_an_in_memory_dataset_draws_the_same_rows(tiny_prepared):
    from deepfm_tuner.model.data.cache import train_sample

    sample = train_sample(tiny_prepared, 300, 42)
    index = sample_rows(len(tiny_prepared.parts["train"]), 300, 42)
    assert np.array_equal(sample.parts["train"].labels, tiny_prepared.parts["train"].labels[index])
    assert len(sample.parts["train"]) == 300 and sample.parts["val"] is tiny_prepared.parts["val"]


def test_a_damaged_sample_is_written_again_with_a_message(tiny_criteo_dir, tmp_path):
    spec = criteo_spec(tiny_criteo_dir, tmp_path, tune_rows=400)
    full = spec.prepare()
    first = digest(spec.for_trials(full).parts["train"])
    folder = full.folder / "samples" / "train-400-seed42"
    with open(folder / "labels.npy", "r+b") as handle:  # a truncated write
        handle.truncate(100)
    (folder.parent / f".train-400-seed42.tmp-{os.getpid() + 1}").mkdir()  # a killed writer's temp folder
    messages: list[str] = []
    assert digest(spec.for_trials(full, messages.append).parts["train"]) == first
    assert any("is unusable (labels.npy is missing or has the wrong size); writing it again" in m for m in messages)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["train-400-seed42", "train-400-seed42.lock"]


def _sample_in_child(args):
    directory, root = args
    spec = DataSpec(train=f"{directory}/train.tsv", test=f"{directory}/test.tsv", format="criteo", encoded_dir=root,
                    tune_rows=600)
    return digest(spec.for_trials(spec.prepare()).parts["train"])


@pytest.mark.slow
def test_workers_starting_at_once_write_the_sample_once_and_map_the_same_rows(tiny_criteo_dir, tmp_path):
    root = str(tmp_path / "encoded")
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        hashes = pool.map(_sample_in_child, [(str(tiny_criteo_dir), root)] * 3)
    assert len(set(hashes)) == 1
    assert hashes[0] == _sample_in_child((str(tiny_criteo_dir), root))  # and a later resume maps it too
    samples = next(Path(root).glob("*/samples"))
    assert sorted(p.name for p in samples.iterdir()) == ["train-600-seed42", "train-600-seed42.lock"]
