"""Classification metrics of click scores (AUC, logloss), shared by training, scoring files, promotion and the
synthetic data's best achievable scores."""

from __future__ import annotations

import numpy as np


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> tuple[float, float]:
    """(AUC, logloss); AUC is NaN when only one class is present."""
    from sklearn.metrics import log_loss, roc_auc_score  # here, not at the top: it takes ~1 s to import

    probabilities = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    auc = roc_auc_score(labels, probabilities) if 0 < labels.sum() < len(labels) else float("nan")
    return float(auc), float(log_loss(labels, probabilities, labels=[0, 1]))
