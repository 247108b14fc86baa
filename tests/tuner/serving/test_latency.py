"""A policy's serving latency: the served path timed on a fixed batch of 1,000 raw rows, the median of five calls
after a warm-up."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from deepfm_tuner.model.errors import DataError
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.tuner.serving import latency
from deepfm_tuner.tuner.serving.latency import latency_batch, scoring_latency_ms
from deepfm_tuner.tuner.serving.pyfunc import MissingColumns, ScoringPolicyModel

from conftest import TINY_POLICY, TINY_TRAINING


@pytest.fixture(scope="module")
def policy(tiny_prepared) -> ScoringPolicy:
    return ScoringPolicy.build(TINY_POLICY, TINY_TRAINING, tiny_prepared.encoder)


def test_every_batch_has_1000_rows_whatever_the_test_split_holds(tiny_frame):
    few = tiny_frame.head(3)
    batch = latency_batch(few)
    assert len(batch) == 1000
    assert batch["C1"].tolist()[:7] == few["C1"].tolist() * 2 + few["C1"].tolist()[:1]  # in order, repeated
    assert latency_batch(tiny_frame).equals(tiny_frame.head(1000))


def test_no_rows_to_time_on_is_one_line_with_the_fix(tiny_frame):
    with pytest.raises(DataError, match="test split is empty; set data.test_fraction > 0") as caught:
        latency_batch(tiny_frame.head(0))
    assert "\n" not in str(caught.value)


def test_the_latency_is_the_median_of_five_timed_calls_after_an_untimed_warm_up(policy, tiny_frame, monkeypatch):
    calls = []
    predict = ScoringPolicyModel.predict

    def counted(self, context, model_input, params=None):
        calls.append(model_input)
        return predict(self, context, model_input, params)

    durations = [0.005, 0.001, 0.003, 0.002, 0.004]  # seconds per timed call: the median is 3 ms
    clock = iter(itertools.chain.from_iterable((10.0 * i, 10.0 * i + d) for i, d in enumerate(durations)))
    monkeypatch.setattr(ScoringPolicyModel, "predict", counted)
    monkeypatch.setattr(latency, "perf_counter", lambda: next(clock))

    assert scoring_latency_ms(policy, latency_batch(tiny_frame)) == pytest.approx(3.0)
    assert len(calls) == 6 and all(len(rows) == 1000 for rows in calls)
    assert calls[0]["I1"].dtype == np.float64  # conformed to the signature, as the served model receives them


def test_the_timed_path_is_the_served_one_missing_columns_and_all(policy, tiny_frame):
    assert scoring_latency_ms(policy, latency_batch(tiny_frame)) > 0
    with pytest.raises(MissingColumns, match="missing input column"):
        scoring_latency_ms(policy, pd.DataFrame(latency_batch(tiny_frame)).drop(columns=["C7"]))
