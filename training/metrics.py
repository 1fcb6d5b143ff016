"""Classification and latency metrics: pure functions on plain sequences.

Conventions: label 1 = violation (positive class); a prediction is a boolean / 0-1 flag; a
score is higher for "more likely a violation". Ratios with an empty denominator are 0.0
(precision with no predicted positives, recall with no positives), as sklearn's
``zero_division=0`` does; ROC-AUC and recall at a fixed FPR are ``None`` (NaN is not JSON)
when only one class is present.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence


@dataclass(frozen=True, kw_only=True)
class Confusion:
    """Confusion counts for the positive class 1."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _check_lengths(a: Sequence, b: Sequence, what: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{what}: {len(a)} labels but {len(b)} values")


def _labels(labels: Sequence[int]) -> list[int]:
    out = []
    for y in labels:
        v = int(y)
        if v not in (0, 1):
            raise ValueError(f"labels must be 0 or 1, got {y!r}")
        out.append(v)
    return out


def confusion(labels: Sequence[int], preds: Sequence[bool | int]) -> Confusion:
    """Counts of true/false positives/negatives."""
    _check_lengths(labels, preds, "confusion")
    tp = fp = tn = fn = 0
    for y, p in zip(_labels(labels), preds):
        if p:
            tp, fp = (tp + 1, fp) if y else (tp, fp + 1)
        else:
            fn, tn = (fn + 1, tn) if y else (fn, tn + 1)
    return Confusion(tp=tp, fp=fp, tn=tn, fn=fn)


def precision(labels: Sequence[int], preds: Sequence[bool | int]) -> float:
    """TP / (TP + FP); 0.0 when nothing is predicted positive."""
    c = confusion(labels, preds)
    return c.tp / (c.tp + c.fp) if c.tp + c.fp else 0.0


def recall(labels: Sequence[int], preds: Sequence[bool | int]) -> float:
    """TP / (TP + FN); 0.0 when there are no positives."""
    c = confusion(labels, preds)
    return c.tp / (c.tp + c.fn) if c.tp + c.fn else 0.0


def f1(labels: Sequence[int], preds: Sequence[bool | int]) -> float:
    """Harmonic mean of precision and recall (2TP / (2TP + FP + FN)); 0.0 when undefined."""
    c = confusion(labels, preds)
    denom = 2 * c.tp + c.fp + c.fn
    return 2 * c.tp / denom if denom else 0.0


def false_positive_rate(labels: Sequence[int], preds: Sequence[bool | int]) -> float:
    """FP / (FP + TN); 0.0 when there are no negatives."""
    c = confusion(labels, preds)
    return c.fp / (c.fp + c.tn) if c.fp + c.tn else 0.0


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (sklearn); ``None`` when only one class is present."""
    _check_lengths(labels, scores, "roc_auc")
    ys = _labels(labels)
    if len(set(ys)) < 2:
        return None
    xs = [float(s) for s in scores]
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:  # serving installs have no sklearn: the Mann-Whitney U form, ties counted half
        return _rank_auc(ys, xs)
    return float(roc_auc_score(ys, xs))


def _rank_auc(ys: list[int], xs: list[float]) -> float:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0  # average rank of the tie group
        i = j + 1
    n_pos = sum(ys)
    n_neg = len(ys) - n_pos
    rank_sum = sum(r for r, y in zip(ranks, ys) if y)
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def recall_at_fpr(labels: Sequence[int], scores: Sequence[float], max_fpr: float = 0.01) -> float | None:
    """The highest recall over thresholds ``t`` (predict positive when ``score >= t``) whose
    false-positive rate is ``<= max_fpr``; ``None`` when only one class is present.

    Ties are handled exactly: all texts with the same score fall on the same side of any
    threshold (unlike interpolated ROC points).
    """
    _check_lengths(labels, scores, "recall_at_fpr")
    ys = _labels(labels)
    n_pos = sum(ys)
    n_neg = len(ys) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    pairs = sorted(zip((float(s) for s in scores), ys), key=lambda t: -t[0])
    best = 0.0
    tp = fp = 0
    i = 0
    while i < len(pairs):
        s = pairs[i][0]
        while i < len(pairs) and pairs[i][0] == s:  # take the whole tie group
            tp += pairs[i][1]
            fp += 1 - pairs[i][1]
            i += 1
        if fp / n_neg <= max_fpr:
            best = max(best, tp / n_pos)
        else:
            break  # FP only grows as the threshold falls
    return best


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default); ``None``
    for an empty sequence."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q!r}")
    xs = sorted(float(v) for v in values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | int | None]:
    """``{"n", "p50", "p99", "mean"}`` of a list of latencies in milliseconds."""
    xs = [float(v) for v in latencies_ms]
    return {"n": len(xs), "p50": percentile(xs, 50), "p99": percentile(xs, 99),
            "mean": (sum(xs) / len(xs)) if xs else None}


def classification_summary(labels: Sequence[int], preds: Sequence[bool | int],
                           scores: Sequence[float] | None = None, *, max_fpr: float = 0.01) -> dict[str, object]:
    """Precision, recall, F1, FPR, confusion counts and (with scores) ROC-AUC and recall at ``max_fpr``."""
    c = confusion(labels, preds)
    out: dict[str, object] = {
        "n": c.n,
        "positives": c.tp + c.fn,
        "precision": c.tp / (c.tp + c.fp) if c.tp + c.fp else 0.0,
        "recall": c.tp / (c.tp + c.fn) if c.tp + c.fn else 0.0,
        "f1": 2 * c.tp / (2 * c.tp + c.fp + c.fn) if (2 * c.tp + c.fp + c.fn) else 0.0,
        "fpr": c.fp / (c.fp + c.tn) if c.fp + c.tn else 0.0,
        "confusion": c.to_dict(),
    }
    if scores is not None:
        out["roc_auc"] = roc_auc(labels, scores)
        out["recall_at_1pct_fpr" if max_fpr == 0.01 else f"recall_at_{max_fpr:g}_fpr"] = recall_at_fpr(labels, scores, max_fpr)
    return out
