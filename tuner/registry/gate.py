"""Paired comparison of two scorers' ROC AUC on the same rows: DeLong's test (pure numpy).

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of two correlated AUCs from their structural
components; Sun & Xu (2014) compute those components from midranks in O(n log n):

    for each model, with m positives and n negatives,
        tz = midranks of all m + n scores, tx = midranks within the positives, ty = within the negatives
        AUC  = (sum(tz[positives]) - m(m+1)/2) / (m n)
        V10  = (tz[positives] - tx) / n          one component per positive row
        V01  = 1 - (tz[negatives] - ty) / m      one component per negative row
    S = cov(V10) / m + cov(V01) / n              2 x 2 covariance of the two AUCs
    z = (AUC_a - AUC_b) / sqrt(S_aa + S_bb - 2 S_ab), two-sided p = erfc(|z| / sqrt 2)

DeLong rather than a paired bootstrap: it is deterministic (the same tags for the same rows, no seed), exact in
its asymptotics for AUC, and costs one sort per model, where a bootstrap needs a thousand resampled AUCs to
give a stable 95% interval on millions of test rows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile
REQUIREMENTS = ("not_worse", "better")


@dataclass(frozen=True)
class AucComparison:
    """Model a vs model b on the same rows: diff = auc_a - auc_b, its 95% CI and the two-sided p-value."""

    auc_a: float
    auc_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    z: float
    rows: int

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """'+0.0123 AUC (95% CI [+0.0040, +0.0206], p=0.0035)'."""
        return f"{self.diff:+.4f} AUC (95% CI [{self.ci_low:+.4f}, {self.ci_high:+.4f}], p={self.p_value:.3g})"


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given the mean of the ranks they span (as scipy's rankdata(method='average'))."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # the last 1-based rank of each distinct value
    return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def _components(labels: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    positives, negatives = scores[labels], scores[~labels]
    m, n = len(positives), len(negatives)
    tz = midranks(np.concatenate([positives, negatives]))
    tx, ty = midranks(positives), midranks(negatives)
    auc = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    return float(auc), v10, v01


def _check(labels, scores_a, scores_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1)
    a = np.asarray(scores_a, dtype=np.float64).reshape(-1)
    b = np.asarray(scores_b, dtype=np.float64).reshape(-1)
    if not len(y) == len(a) == len(b):
        raise ValueError(f"labels and both score vectors must have one value per row, got {len(y)}, {len(a)}, {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("scores must be finite")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError("AUC needs both classes among the labels")
    return y, a, b


def delong_test(labels, scores_a, scores_b) -> AucComparison:
    """DeLong's paired test of AUC(a) - AUC(b) on the same rows (Sun & Xu's O(n log n) algorithm)."""
    y, a, b = _check(labels, scores_a, scores_b)
    auc_a, v10_a, v01_a = _components(y, a)
    auc_b, v10_b, v01_b = _components(y, b)
    m, n = len(v10_a), len(v01_a)
    s10 = np.cov(np.vstack([v10_a, v10_b])) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack([v01_a, v01_b])) if n > 1 else np.zeros((2, 2))
    cov = s10 / m + s01 / n
    variance = max(float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]), 0.0)
    return _result(auc_a, auc_b, variance, len(y))


def _result(auc_a: float, auc_b: float, variance: float, rows: int) -> AucComparison:
    diff = auc_a - auc_b
    se = math.sqrt(variance)
    if se <= 1e-15:  # identical rankings (or degenerate data): no evidence either way unless the AUCs differ
        z = 0.0 if abs(diff) < 1e-12 else math.copysign(math.inf, diff)
        p = 1.0 if z == 0.0 else 0.0
    else:
        z = diff / se
        p = math.erfc(abs(z) / math.sqrt(2.0))
    return AucComparison(auc_a, auc_b, diff, diff - Z_95 * se, diff + Z_95 * se, min(1.0, p), z, rows)


def gate(comparison: AucComparison, require: str, alpha: float) -> tuple[bool, str]:
    """(passes, decision word) for challenger (a) vs champion (b).

    not_worse: passes unless a is significantly worse (diff < 0 and p < alpha);
    better:    passes only if a is significantly better (diff > 0 and p < alpha).
    The p-value is two-sided, so with alpha = 0.05 the decision agrees with the printed 95% CI excluding 0."""
    if require not in REQUIREMENTS:
        raise ValueError(f"require must be one of {', '.join(REQUIREMENTS)}, got {require!r}")
    significant = comparison.p_value < alpha
    if significant and comparison.diff > 0:
        word = "significantly better"
    elif significant and comparison.diff < 0:
        word = "significantly worse"
    else:
        word = "not significantly different"
    passes = word != "significantly worse" if require == "not_worse" else word == "significantly better"
    return passes, word
