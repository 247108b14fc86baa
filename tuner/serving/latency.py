"""What a policy costs to serve, in milliseconds: the served (pyfunc) path timed on a fixed batch of raw rows.

The path timed is what `predict_frame` runs for a registered model: the rows conformed to the model's signature,
MLflow's check of them against it (`mlflow.models.validate_schema`, as `PyFuncModel.predict` does), and
`ScoringPolicyModel.predict` (the missing-column check, the encoder, the network). It is measured in memory on the
policy a trial just trained (nothing is saved or loaded), one warm-up call first, then the median of `repeats`
calls: a single call on a busy machine is noisy, and the median shrugs off a slow outlier.
"""

from __future__ import annotations

import statistics
from time import perf_counter

import pandas as pd
from mlflow.models import validate_schema

from deepfm_tuner.model.errors import DataError
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.tuner.serving.pyfunc import ScoringPolicyModel, conform, policy_signature

BATCH_ROWS = 1000  # rows per timed call: a ranking request's candidates, give or take
REPEATS = 5  # timed calls; their median is the latency


def latency_batch(rows: pd.DataFrame, size: int = BATCH_ROWS) -> pd.DataFrame:
    """Exactly `size` raw rows: the first ones of `rows`, repeated in order when it has fewer (a small test split),
    so every trial of every study is timed on a batch of the same size."""
    if rows.empty:
        raise DataError("no raw rows to time scoring on: the test split is empty; set data.test_fraction > 0 or give "
                        "data.test, or remove study.constraints.max_latency_ms")
    repeats = -(-size // len(rows))
    return pd.concat([rows] * repeats, ignore_index=True).head(size) if repeats > 1 else rows.head(size)


def scoring_latency_ms(policy: ScoringPolicy, batch: pd.DataFrame, repeats: int = REPEATS) -> float:
    """The median milliseconds of scoring `batch` through the served path (see the module's docstring)."""
    model = ScoringPolicyModel()
    model.policy = policy  # what load_context rebuilds from a logged model's artifacts
    inputs = policy_signature(policy.encoder.schema).inputs

    def score() -> None:
        rows = conform(batch, inputs)
        validate_schema(rows, inputs)
        model.predict(None, rows)

    score()  # warm-up: the encoder's lookups and the first kernel calls
    seconds = []
    for _ in range(repeats):
        started = perf_counter()
        score()
        seconds.append(perf_counter() - started)
    return 1000 * statistics.median(seconds)
