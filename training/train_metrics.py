"""Metrics of a trained head's scores (numpy): the card's val/test metrics and the F1-best threshold.

:func:`best_f1_threshold` is the project's one best-threshold function: the trainer picks the
card's ``val_best_f1_threshold`` with it and ``safecascade tune --tune-final-threshold`` the final
tier's threshold.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from safecascade.training.metrics import classification_summary


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary log-loss of probabilities ``p`` (clipped to [1e-6, 1 - 1e-6]) against labels ``y``."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def score_metrics(labels: Sequence[int], scores: Sequence[float], *, threshold: float = 0.5) -> dict[str, Any]:
    """P/R/F1 at ``threshold``, recall at 1% FPR, ROC-AUC, log-loss."""
    s = np.asarray(scores, dtype=np.float64)
    m = dict(classification_summary(list(labels), [bool(v >= threshold) for v in s], list(s)))
    m["log_loss"] = log_loss(np.asarray(labels), s)
    m["threshold"] = threshold
    return m


def best_f1_threshold(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Threshold maximising F1 (chosen on val, reported on test)."""
    y = np.asarray(labels)
    s = np.asarray(scores)
    best, best_t = -1.0, 0.5
    for t in np.unique(s):
        pred = s >= t
        tp = float(np.sum(pred & (y == 1)))
        f = 2 * tp / (pred.sum() + y.sum()) if (pred.sum() + y.sum()) else 0.0
        if f > best:
            best, best_t = f, float(t)
    return best_t
