"""The on-disk encoded dataset: built once, mapped everywhere, identical to encoding the rows in memory."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from deepfm_tuner.model import train as training_loop
from deepfm_tuner.model.data import build, cache, staging
from deepfm_tuner.model.data import reader as ingest
from deepfm_tuner.model.data.frames import Split, read_table
from deepfm_tuner.model.data.source import DataSpec
from deepfm_tuner.model.data.tensors import prepare
from deepfm_tuner.model.errors import DataError
from deepfm_tuner.model.train import epoch_batches, train

from conftest import TINY_POLICY, TINY_TRAINING


def criteo_spec(directory: Path, tmp_path: Path, **extra) -> DataSpec:
    settings = {"test": str(directory / "test.tsv"), **extra}
    return DataSpec(train=str(directory / "train.tsv"), format="criteo", encoded_dir=str(tmp_path / "encoded"),
                    **settings)


def in_memory_twin(spec: DataSpec, prepared, frames: list[pd.DataFrame]):
    """The same rows and split encoded the in-memory way (FeatureEncoder.fit + transform on one frame)."""
    frame = pd.concat(frames, ignore_index=True)
    codes = np.load(prepared.folder / "split.npy")
    split = Split(*(np.flatnonzero(codes == i) for i in range(3)))
    return frame, prepare(frame, prepared.encoder.schema, split)


def test_criteo_dataset_equals_in_memory_encoding_and_maps_on_the_second_open(tiny_criteo_dir, tmp_path):
    messages: list[str] = []
    spec = criteo_spec(tiny_criteo_dir, tmp_path)
    built = spec.prepare(messages.append)
    assert built.cache_hit is False and "miss: encoded now" in built.summary()
    assert messages == []  # a build of a few seconds needs no progress lines
    frames = [read_table(tiny_criteo_dir / name, "criteo") for name in ("train.tsv", "test.tsv")]
    frame, twin = in_memory_twin(spec, built, frames)
    assert built.encoder.to_dict() == twin.encoder.to_dict()  # same vocabularies, order and statistics
    for part in ("train", "val", "test"):
        mine, theirs = getattr(built, part), getattr(twin, part)
        assert torch.equal(mine.categorical, theirs.categorical) and torch.equal(mine.labels, theirs.labels)
        torch.testing.assert_close(mine.numeric, theirs.numeric, equal_nan=True, rtol=0, atol=0)
    assert len(built.test) == len(frames[1])  # the separate test file is the test split
    pd.testing.assert_frame_equal(built.test_frame()[["label", "I1", "C1"]].astype(str),
                                  frames[1][["label", "I1", "C1"]].astype(str))

    messages.clear()
    mapped = spec.prepare(messages.append)
    assert mapped.cache_hit is True and messages == [] and f"{built.folder} (hit: mapped)" in mapped.summary()
    assert isinstance(mapped.train.categorical.numpy().base, np.memmap) or mapped.train.categorical.numpy().base is not None
    assert torch.equal(mapped.train.categorical, built.train.categorical)


def test_csv_with_inferred_schema_and_a_fixed_validation_file(tmp_path):
    rng = np.random.default_rng(0)
    n = 2000
    frame = pd.DataFrame({"click": rng.integers(0, 2, n), "city": rng.choice(["paris", "oslo", "rome", ""], n),
                          "slot": rng.integers(0, 5, n), "price": rng.normal(10, 3, n).round(2),
                          "tags": rng.choice(["a|b", "b", "c|a|d", ""], n)})
    frame.loc[::17, "price"] = np.nan
    frame.iloc[:1500].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[1500:].to_csv(tmp_path / "valid.csv", index=False)
    spec = DataSpec(train=str(tmp_path / "train.csv"), valid=str(tmp_path / "valid.csv"), test_fraction=0.2,
                    schema={"label": "click"}, encoded_dir=str(tmp_path / "encoded"))
    built = spec.prepare()
    schema = built.encoder.schema
    assert schema.categorical == ("city", "slot") and schema.numeric == ("price",) and schema.multivalued == ("tags",)
    assert len(built.val) == 500  # every row of the validation file, none split off train
    codes = np.load(built.folder / "split.npy")
    assert (codes[1500:] == 1).all() and set(np.unique(codes[:1500])) == {0, 2}
    frames = [read_table(tmp_path / "train.csv"), read_table(tmp_path / "valid.csv")]
    _, twin = in_memory_twin(spec, built, frames)
    assert built.encoder.to_dict() == twin.encoder.to_dict()
    for part in ("train", "val", "test"):
        mine, theirs = getattr(built, part), getattr(twin, part)
        assert torch.equal(mine.categorical, theirs.categorical)
        assert torch.equal(mine.multivalued, theirs.multivalued)
        torch.testing.assert_close(mine.numeric, theirs.numeric, equal_nan=True, rtol=0, atol=0)


def test_random_split_does_not_depend_on_how_the_file_is_cut_into_batches(tiny_criteo_dir, tmp_path, monkeypatch):
    first = criteo_spec(tiny_criteo_dir, tmp_path / "a", test=None).prepare()
    monkeypatch.setattr(ingest, "BLOCK_BYTES", 1 << 16)  # many small batches
    monkeypatch.setattr(staging, "CHUNK_ROWS", 333)
    second = criteo_spec(tiny_criteo_dir, tmp_path / "b", test=None).prepare()
    assert np.array_equal(np.load(first.folder / "split.npy"), np.load(second.folder / "split.npy"))
    assert first.encoder.to_dict() == second.encoder.to_dict()
    assert torch.equal(first.train.categorical, second.train.categorical)
    counts = np.bincount(np.load(first.folder / "split.npy"), minlength=3)
    assert abs(counts[1] / counts.sum() - 0.1) < 0.03 and abs(counts[2] / counts.sum() - 0.1) < 0.03


def test_time_ordered_split_puts_the_latest_rows_in_validation_then_test(tmp_path):
    rng = np.random.default_rng(1)
    n = 1000
    day = rng.permutation(n)
    pd.DataFrame({"y": rng.integers(0, 2, n), "ad": rng.choice(list("abcdef"), n), "day": day}).to_csv(
        tmp_path / "log.csv", index=False)
    spec = DataSpec(train=str(tmp_path / "log.csv"), order_by="day", schema={"label": "y"},
                    encoded_dir=str(tmp_path / "encoded"))
    built = spec.prepare()
    codes = np.load(built.folder / "split.npy")
    assert (np.sort(day[codes == 1]) == np.arange(800, 900)).all()
    assert (np.sort(day[codes == 2]) == np.arange(900, 1000)).all()
    assert sorted(built.test_frame()["day"]) == list(range(900, 1000))  # the raw test rows, read alone
    assert "day" not in built.encoder.schema.features


def test_one_class_training_or_validation_split_is_refused(tmp_path):
    n = 400
    pd.DataFrame({"y": np.zeros(n, dtype=int), "ad": ["a", "b"] * (n // 2)}).to_csv(tmp_path / "d.csv", index=False)
    spec = DataSpec(train=str(tmp_path / "d.csv"), schema={"label": "y"}, encoded_dir=str(tmp_path / "enc"))
    with pytest.raises(DataError, match=r"training split has only label 0 \(no click\).*both clicks and non-clicks"):
        spec.prepare()
    assert [p for p in (tmp_path / "enc").iterdir() if p.is_dir()] == []  # nothing half-written


def test_a_truncated_or_partial_dataset_is_rebuilt_with_a_message(tiny_criteo_dir, tmp_path):
    spec = criteo_spec(tiny_criteo_dir, tmp_path)
    built = spec.prepare()
    target = built.folder / "train" / "categorical.npy"
    target.write_bytes(target.read_bytes()[:-4096])
    messages: list[str] = []
    rebuilt = spec.prepare(messages.append)
    assert rebuilt.cache_hit is False and any("categorical.npy" in m and "rebuilding" in m for m in messages)
    (rebuilt.folder / "manifest.json").unlink()  # as a build killed before its last step leaves it
    messages.clear()
    again = spec.prepare(messages.append)
    assert again.cache_hit is False and any("did not finish" in m for m in messages)
    assert json.loads((again.folder / "manifest.json").read_text())["rows"]["test"] == len(again.test)


def test_a_long_build_reports_progress_and_a_quick_one_stays_silent(tiny_criteo_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(build._Progress, "QUIET_SECONDS", 0.0)
    messages: list[str] = []
    criteo_spec(tiny_criteo_dir, tmp_path).prepare(messages.append)
    assert messages[0].startswith("encoded dataset: miss; encoding ") and ".tmp-" not in messages[0]
    assert messages[-1].startswith("encoded 3,000 rows in ")


def _prepare_in_child(args):
    directory, root = args
    prepared = DataSpec(train=f"{directory}/train.tsv", format="criteo", encoded_dir=root).prepare()
    return str(prepared.folder), prepared.cache_hit, int(prepared.train.categorical.sum())


@pytest.mark.slow
def test_concurrent_workers_build_once_and_the_others_map_it(tiny_criteo_dir, tmp_path):
    root = str(tmp_path / "encoded")
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(_prepare_in_child, [(str(tiny_criteo_dir), root)] * 3)
    assert len({r[0] for r in results}) == 1 and len({r[2] for r in results}) == 1
    assert sorted(r[1] for r in results) == [False, True, True]  # one build; two maps
    leftovers = [p.name for p in Path(root).iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_a_cache_hit_maps_the_dataset_without_loading_torch_or_scikit_learn(tiny_criteo_dir, tmp_path):
    """A hit (`deepfm data prepare`, `deepfm status` on a prepared study) checks and maps the dataset with NumPy
    alone, so it starts fast; torch loads when training first asks for a split's tensors."""
    spec = criteo_spec(tiny_criteo_dir, tmp_path)
    built = spec.prepare()
    code = ("import sys\nfrom deepfm_tuner.model.data.source import DataSpec\n"
            f"prepared = DataSpec(**{spec.to_dict()!r}).prepare()\n"
            "print(prepared.cache_hit, prepared.summary())\n"
            "print(sorted(name for name in ('torch', 'sklearn') if name in sys.modules))\n"
            "print(len(prepared.train), 'torch' in sys.modules)\n")
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines == [f"True {built.summary().replace('miss: encoded now', 'hit: mapped')}", "[]",
                     f"{len(built.train)} True"]


def test_block_shuffle_visits_every_row_once_and_a_full_shuffle_is_randperm():
    n, batch = 10_007, 256
    full = torch.cat(list(epoch_batches(n, batch, torch.Generator().manual_seed(3), block_rows=n)))
    assert torch.equal(full, torch.randperm(n, generator=torch.Generator().manual_seed(3)))
    batches = list(epoch_batches(n, batch, torch.Generator().manual_seed(3), block_rows=1000))
    rows = torch.cat(batches)
    assert torch.equal(torch.sort(rows).values, torch.arange(n))
    assert all(len(b) == batch for b in batches[:-1])
    first_block = rows[:1000] // 1000  # rows stay inside one block until it is used up
    assert len(torch.unique(first_block)) == 1


def test_training_from_the_mapped_dataset_equals_training_in_memory(tiny_criteo_dir, tmp_path, monkeypatch):
    spec = criteo_spec(tiny_criteo_dir, tmp_path)
    spec.prepare()
    mapped = spec.prepare()
    frames = [read_table(tiny_criteo_dir / name, "criteo") for name in ("train.tsv", "test.tsv")]
    _, twin = in_memory_twin(spec, mapped, frames)
    a = train(mapped, TINY_POLICY, TINY_TRAINING)
    b = train(twin, TINY_POLICY, TINY_TRAINING)
    assert [m.val_auc for m in a.history] == [m.val_auc for m in b.history]
    monkeypatch.setattr(training_loop, "SHUFFLE_BLOCK_BYTES", 300 * mapped.train.row_bytes)  # blocks of 300 rows
    block = train(mapped, TINY_POLICY, TINY_TRAINING.replace(shuffle="block"))
    assert abs(block.best.val_auc - a.best.val_auc) < 0.05  # another row order, the same model quality


def test_text_in_a_numeric_column_is_counted_read_as_missing_and_refused_past_a_few(tmp_path):
    rng = np.random.default_rng(2)
    n = 3000
    frame = pd.DataFrame({"y": rng.integers(0, 2, n), "ad": rng.choice(list("abc"), n), "price": rng.normal(5, 1, n)})
    prices = frame["price"].round(3).astype(str)
    prices.iloc[[1700, 2500]] = ["about 12", "twelve"]  # two typos deep in the file, past the first parsed block
    frame.assign(price=prices).to_csv(tmp_path / "few.csv", index=False)
    messages: list[str] = []
    spec = DataSpec(train=str(tmp_path / "few.csv"), schema={"label": "y", "numeric": ["price"]},
                    encoded_dir=str(tmp_path / "enc"))
    monkeypatch_block = ingest.BLOCK_BYTES
    ingest.BLOCK_BYTES = 1 << 14
    try:
        built = spec.prepare(messages.append)
    finally:
        ingest.BLOCK_BYTES = monkeypatch_block
    assert messages == ["numeric column 'price': 2 value(s) that are not numbers read as missing (e.g. 'about 12' at row 1700)"]
    assert built.encoder.schema.numeric == ("price",)
    assert cache.manifest(built.folder)["not_numbers_read_as_missing"] == {"price": 2}
    assert int(torch.isnan(torch.cat([built.train.numeric, built.val.numeric, built.test.numeric])).sum()) == 2

    prices.iloc[::3] = "unknown"  # a third of the column is text: not a numeric column
    frame.assign(price=prices).to_csv(tmp_path / "many.csv", index=False)
    spec = DataSpec(train=str(tmp_path / "many.csv"), schema={"label": "y", "numeric": ["price"]},
                    encoded_dir=str(tmp_path / "enc"))
    with pytest.raises(DataError, match=r"numeric column 'price' has 1,002 values that are not numbers \(e.g. "
                                        r"'unknown' at row 0\); fix the data, or declare the column categorical"):
        spec.prepare()
