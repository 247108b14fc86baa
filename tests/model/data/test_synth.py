"""Synthetic Criteo-format data: the right shape, reproducible whatever the chunking, with honest Bayes-optimal
metrics, written atomically and once when several processes ask for it at the same time."""

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from deepfm_tuner.model.data.synth import SynthSpec, bayes_metrics, generate, write_criteo_tsv, write_dataset
from deepfm_tuner.model.errors import DataError
from deepfm_tuner.model.metrics import classification_metrics

from support import killed_at_exit


def test_criteo_shape_missing_values_and_click_rate():
    frame, p = generate(SynthSpec(rows=5000, seed=2, max_cardinality=500))
    assert list(frame.columns) == ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    assert frame[[f"I{i}" for i in range(1, 14)]].isna().any().any()
    assert frame[[f"C{i}" for i in range(1, 27)]].isna().any().any()
    assert frame["C1"].dropna().str.fullmatch(r"[0-9a-f]{8}").all()
    assert 0.2 < frame["label"].mean() < 0.3 and np.isclose(p.mean(), 0.25, atol=0.01)


def test_same_seed_same_data():
    a, pa = generate(SynthSpec(rows=500, seed=4))
    b, pb = generate(SynthSpec(rows=500, seed=4))
    assert a.equals(b) and np.array_equal(pa, pb)


def test_true_probability_beats_a_noisy_one():
    frame, p = generate(SynthSpec(rows=20000, seed=5))
    best = bayes_metrics(frame["label"].to_numpy(), p)
    noisy = np.clip(p + np.random.default_rng(0).normal(0, 0.15, len(p)), 0.001, 0.999)
    auc, logloss = classification_metrics(frame["label"].to_numpy().astype(float), noisy)
    assert best["bayes_auc"] > auc and best["bayes_logloss"] < logloss
    assert 0.7 < best["bayes_auc"] < 0.9  # Criteo-like difficulty


def test_written_dataset_reports_its_truth(tmp_path):
    truth = write_dataset(SynthSpec(rows=1000, seed=1), tmp_path)
    assert json.loads((tmp_path / "truth.json").read_text()) == truth
    assert truth["train_rows"] + truth["test_rows"] == 1000
    assert len((tmp_path / "test.tsv").read_text().splitlines()) == truth["test_rows"]


SMALL = SynthSpec(rows=5000, seed=3, max_cardinality=300)


def files(folder):
    return {name: (folder / name).read_bytes() for name in ("train.tsv", "test.tsv", "truth.json")}


def test_same_seed_same_files_whatever_the_chunk_size(tmp_path):
    a = write_dataset(SMALL, tmp_path / "a", chunk_size=1000)
    b = write_dataset(SMALL, tmp_path / "b", chunk_size=3000)
    assert a == b and files(tmp_path / "a") == files(tmp_path / "b")
    write_dataset(SynthSpec(rows=5000, seed=4, max_cardinality=300), tmp_path / "c")
    assert files(tmp_path / "c")["train.tsv"] != files(tmp_path / "a")["train.tsv"]
    # the streamed files are what write_criteo_tsv makes of the in-memory frame: same rows, same format
    frame, _ = generate(SMALL)
    write_criteo_tsv(frame, tmp_path / "all.tsv")
    assert (tmp_path / "all.tsv").read_bytes() == files(tmp_path / "a")["train.tsv"] + files(tmp_path / "a")["test.tsv"]
    assert b"\t\t" in (tmp_path / "all.tsv").read_bytes() and b".0\t" not in (tmp_path / "all.tsv").read_bytes()


def _race(out, counter, barrier, result):
    """One of two processes writing the same folder at once; counts the generations it starts."""
    import deepfm_tuner.model.data.synth as synth

    generate_files = synth._write_files

    def counted(*args, **kwargs):
        with open(counter, "a") as f:
            f.write("generated\n")
        return generate_files(*args, **kwargs)

    synth._write_files = counted
    barrier.wait()
    Path(result).write_text(json.dumps(synth.write_dataset(SynthSpec(rows=20_000, seed=6, max_cardinality=300), out)))


@pytest.mark.slow  # two fresh interpreters import torch: ~7 s
def test_concurrent_writers_generate_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_race, args=(tmp_path / "d", tmp_path / "count", barrier, tmp_path / f"r{i}"))
             for i in range(2)]
    with killed_at_exit(procs):
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0
    assert (tmp_path / "count").read_text() == "generated\n"
    truth = json.loads((tmp_path / "d" / "truth.json").read_text())
    assert json.loads((tmp_path / "r0").read_text()) == json.loads((tmp_path / "r1").read_text()) == truth
    assert sorted(p.name for p in tmp_path.iterdir()) == ["count", "d", "d.lock", "r0", "r1"]  # no tmp folders


def test_partial_folder_and_leftover_tmp_are_replaced(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "train.tsv").write_text("half a line")  # an interrupted write: no truth.json
    (tmp_path / "d.tmp-999-dead").mkdir()  # a killed writer's temporary folder
    truth = write_dataset(SynthSpec(rows=1000, seed=1), out)
    assert len((out / "train.tsv").read_text().splitlines()) == truth["train_rows"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "d.lock"]


def test_complete_folder_is_reused_unless_overwritten(tmp_path):
    spec = SynthSpec(rows=1000, seed=1, max_cardinality=100)
    truth = write_dataset(spec, tmp_path / "d")
    inode = (tmp_path / "d" / "train.tsv").stat().st_ino
    assert write_dataset(spec, tmp_path / "d") == truth and (tmp_path / "d" / "train.tsv").stat().st_ino == inode
    with pytest.raises(DataError, match="rows 1000 there, 2000 asked"):
        write_dataset(SynthSpec(rows=2000, seed=1, max_cardinality=100), tmp_path / "d")
    with pytest.raises(DataError, match="test_rows 100 there, 200 asked"):
        write_dataset(spec, tmp_path / "d", test_fraction=0.2)
    assert write_dataset(spec, tmp_path / "d", test_fraction=0.2, overwrite=True)["test_rows"] == 200
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not ours to delete")
    with pytest.raises(DataError, match="holds other files"):
        write_dataset(spec, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").exists()


