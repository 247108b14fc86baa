"""DeLong's paired AUC test (tuner.registry.gate): the fast midrank algorithm against the O(n^2) definition."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepfm_tuner.tuner.registry.gate import Z_95, delong_test, gate, midranks


def brute_force(labels, a, b):
    """DeLong (1988) from its definition: psi(x, y) = 1 if x > y, 1/2 if tied, 0 otherwise; O(m n)."""
    y = np.asarray(labels).astype(bool)
    out = []
    for s in (np.asarray(a, float), np.asarray(b, float)):
        x, z = s[y], s[~y]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        out.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))  # AUC, V10 per positive, V01 per negative
    (auc_a, v10_a, v01_a), (auc_b, v10_b, v01_b) = out
    m, n = len(v10_a), len(v01_a)
    s10, s01 = np.cov(np.vstack([v10_a, v10_b])), np.cov(np.vstack([v01_a, v01_b]))
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (auc_a - auc_b) / math.sqrt(var)
    return auc_a, auc_b, var, math.erfc(abs(z) / math.sqrt(2))


def correlated(seed, n=300, ties=False):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    signal = labels + rng.normal(0, 1.5, n)
    a = signal + rng.normal(0, 0.5, n)
    b = signal + rng.normal(0, 0.8, n)
    if ties:  # coarse scores: many tied values within and across classes
        a, b = np.round(a, 0), np.round(b, 0)
    return labels, a, b


def test_midranks_average_tied_ranks():
    np.testing.assert_allclose(midranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])), [4.0, 1.0, 4.0, 2.0, 4.0])


@pytest.mark.parametrize("seed, ties", [(0, False), (1, False), (2, True), (3, True)])
def test_fast_delong_matches_the_quadratic_definition(seed, ties):
    labels, a, b = correlated(seed, ties=ties)
    result = delong_test(labels, a, b)
    auc_a, auc_b, var, p = brute_force(labels, a, b)
    assert result.auc_a == pytest.approx(auc_a, abs=1e-12) and result.auc_b == pytest.approx(auc_b, abs=1e-12)
    assert result.diff == pytest.approx(auc_a - auc_b, abs=1e-12)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    half = Z_95 * math.sqrt(var)
    assert (result.ci_low, result.ci_high) == pytest.approx((auc_a - auc_b - half, auc_a - auc_b + half), abs=1e-12)


def test_auc_equals_sklearns():
    metrics = pytest.importorskip("sklearn.metrics")
    labels, a, b = correlated(4, n=500, ties=True)
    result = delong_test(labels, a, b)
    assert result.auc_a == pytest.approx(metrics.roc_auc_score(labels, a), abs=1e-12)
    assert result.auc_b == pytest.approx(metrics.roc_auc_score(labels, b), abs=1e-12)


def test_swapping_the_models_negates_the_difference_and_keeps_p():
    labels, a, b = correlated(5)
    ab, ba = delong_test(labels, a, b), delong_test(labels, b, a)
    assert ba.diff == pytest.approx(-ab.diff, abs=1e-15) and ba.p_value == pytest.approx(ab.p_value, rel=1e-12)
    assert (ba.ci_low, ba.ci_high) == pytest.approx((-ab.ci_high, -ab.ci_low), abs=1e-15)


def test_identical_predictions_differ_by_zero_with_p_one():
    labels, a, _ = correlated(6)
    result = delong_test(labels, a, a.copy())
    assert result.diff == 0.0 and result.p_value == 1.0 and result.ci_low == result.ci_high == 0.0


def test_a_clearly_better_model_gets_a_tiny_p_value():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 2000)
    good = labels + rng.normal(0, 0.7, 2000)
    noise = rng.normal(0, 1, 2000)
    result = delong_test(labels, good, noise)
    assert result.diff > 0.3 and result.p_value < 1e-12 and result.ci_low > 0


def test_the_gate_follows_the_requirement():
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 2, 2000)
    a = labels + rng.normal(0, 1.0, 2000)
    b = a + rng.normal(0, 1.5, 2000)  # a noisier copy of a: clearly worse
    better, worse = delong_test(labels, a, b), delong_test(labels, b, a)
    assert better.p_value < 0.05
    assert gate(better, "not_worse", 0.05) == (True, "significantly better")
    assert gate(better, "better", 0.05) == (True, "significantly better")
    assert gate(worse, "not_worse", 0.05) == (False, "significantly worse")
    tie = delong_test(labels, a, a)
    assert gate(tie, "not_worse", 0.05) == (True, "not significantly different")
    assert gate(tie, "better", 0.05) == (False, "not significantly different")


@pytest.mark.parametrize("labels, message", [([1, 1, 1], "both classes"), ([0, 2, 1], "0 or 1")])
def test_bad_inputs_are_refused(labels, message):
    with pytest.raises(ValueError, match=message):
        delong_test(labels, [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
