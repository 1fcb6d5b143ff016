"""Metrics against hand-computed values (and sklearn / numpy as a cross-check)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from safecascade.training import metrics as M

LABELS = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
PREDS = [1, 1, 0, 1, 0, 0, 0, 0, 0, 0]  # tp 2, fn 1, fp 1, tn 6


def test_confusion_precision_recall_f1():
    c = M.confusion(LABELS, PREDS)
    assert (c.tp, c.fp, c.tn, c.fn, c.n) == (2, 1, 6, 1, 10)
    assert M.precision(LABELS, PREDS) == pytest.approx(2 / 3)
    assert M.recall(LABELS, PREDS) == pytest.approx(2 / 3)
    assert M.f1(LABELS, PREDS) == pytest.approx(2 / 3)
    assert M.false_positive_rate(LABELS, PREDS) == pytest.approx(1 / 7)
    # asymmetric case: tp 1, fp 3, fn 1 -> P 1/4, R 1/2, F1 2*1/(2+3+1) = 1/3
    y, p = [1, 1, 0, 0, 0], [True, False, True, True, True]
    assert M.precision(y, p) == pytest.approx(0.25)
    assert M.recall(y, p) == pytest.approx(0.5)
    assert M.f1(y, p) == pytest.approx(1 / 3)


def test_zero_division_is_zero():
    assert M.precision([1, 0], [0, 0]) == 0.0
    assert M.recall([0, 0], [1, 0]) == 0.0
    assert M.f1([0, 0], [0, 0]) == 0.0
    assert M.false_positive_rate([1, 1], [1, 0]) == 0.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 labels but 3"):
        M.confusion([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="0 or 1"):
        M.confusion([2, 0], [1, 0])
    with pytest.raises(ValueError, match="percentile q"):
        M.percentile([1.0], 101)


def test_roc_auc_hand_computed():
    # pairs (pos, neg): (0.35 vs 0.1) win, (0.35 vs 0.4) loss, (0.8 vs both) win -> 3/4
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert M.roc_auc([1, 1], [0.2, 0.3]) is None


def test_recall_at_1pct_fpr_hand_computed():
    neg = [i / 100 for i in range(100)]  # 0.00 .. 0.99
    pos = [0.995, 0.985, 0.5, 0.2]
    labels = [0] * 100 + [1] * 4
    # t=0.985: tp 2, fp 1 (0.99) -> FPR 0.01 allowed; t=0.98: fp 2 -> too many. Recall 2/4.
    assert M.recall_at_fpr(labels, neg + pos) == pytest.approx(0.5)
    assert M.recall_at_fpr(labels, neg + pos, max_fpr=0.0) == pytest.approx(0.25)
    assert M.recall_at_fpr(labels, neg + pos, max_fpr=0.5) == pytest.approx(0.75)


def test_recall_at_fpr_ties_are_not_split():
    # Two negatives tie with both positives at 0.9: any threshold admitting the positives has FPR 2%.
    scores = [0.9, 0.9] + [0.1] * 98 + [0.9, 0.9]
    labels = [0] * 100 + [1, 1]
    assert M.recall_at_fpr(labels, scores) == 0.0
    scores[1] = 0.1  # now only one negative ties: FPR 1% -> full recall
    assert M.recall_at_fpr(labels, scores) == 1.0
    assert M.recall_at_fpr([1, 1], [0.5, 0.6]) is None


@pytest.mark.parametrize("seed", range(3))
def test_rank_auc_fallback_matches_sklearn(seed):
    from sklearn.metrics import roc_auc_score

    rng = random.Random(seed)
    labels = [1 if rng.random() < 0.3 else 0 for _ in range(300)]
    scores = [round(rng.random() + 0.3 * y, 1) for y in labels]  # many ties
    assert M._rank_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert M._rank_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", range(5))
def test_recall_at_fpr_matches_sklearn_roc_curve(seed):
    from sklearn.metrics import roc_curve

    rng = random.Random(seed)
    labels = [1 if rng.random() < 0.2 else 0 for _ in range(600)]
    scores = [round(rng.random() * 0.6 + 0.4 * y * rng.random(), 2) for y in labels]  # rounding makes ties
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    expected = max(t for f, t in zip(fpr, tpr) if f <= 0.01)
    assert M.recall_at_fpr(labels, scores) == pytest.approx(expected)


def test_percentile_and_latency_summary_match_numpy():
    xs = [1.0, 2.0, 3.0, 4.0]
    assert M.percentile(xs, 50) == pytest.approx(2.5)
    assert M.percentile(xs, 99) == pytest.approx(3.97)
    assert M.percentile([], 50) is None
    rng = random.Random(1)
    ys = [rng.expovariate(1.0) for _ in range(101)]
    for q in (0, 50, 90, 99, 100):
        assert M.percentile(ys, q) == pytest.approx(float(np.percentile(ys, q)))
    s = M.latency_summary(xs)
    assert s == {"n": 4, "p50": pytest.approx(2.5), "p99": pytest.approx(3.97), "mean": pytest.approx(2.5)}
    assert M.latency_summary([]) == {"n": 0, "p50": None, "p99": None, "mean": None}


def test_classification_summary():
    scores = [0.9, 0.8, 0.3, 0.7, 0.1, 0.1, 0.2, 0.2, 0.05, 0.0]
    s = M.classification_summary(LABELS, PREDS, scores)
    assert s["n"] == 10 and s["positives"] == 3
    assert s["precision"] == pytest.approx(2 / 3) and s["f1"] == pytest.approx(2 / 3)
    assert s["confusion"] == {"tp": 2, "fp": 1, "tn": 6, "fn": 1}
    # negatives ranked below 0.3 except 0.7: 2 positives beat all 7, 0.3 beats 6 -> (7+7+6)/21
    assert s["roc_auc"] == pytest.approx(20 / 21)
    # 7 negatives: any FP already exceeds 1% -> only thresholds above 0.7 -> recall 2/3
    assert s["recall_at_1pct_fpr"] == pytest.approx(2 / 3)
    assert "roc_auc" not in M.classification_summary(LABELS, PREDS)
