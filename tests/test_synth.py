"""Synthetic Criteo-format data: the right shape, reproducible, with honest Bayes-optimal metrics."""

import json

import numpy as np

from model.synth import SynthSpec, bayes_metrics, generate, write_dataset
from model.train import classification_metrics


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
