"""Threshold tuning: the sweep math on small score tables where the answer is known, the
final-tier assumption, objectives, the Pareto front, and agreement with the real Router."""

from __future__ import annotations

import numpy as np
import pytest

from safecascade.training.train_metrics import best_f1_threshold
from safecascade.training.tuning.cost import CostModel, SafeguardAssumption
from safecascade.training.tuning.scores import ScoreTable, TierScores
from safecascade.training.tuning.sweep import (
    Objective,
    SweepModel,
    TuneInfeasible,
    _recall_at_fpr,
    choose,
    evaluate,
    pareto_front,
    search,
)


def _tier(name: str, scores: np.ndarray, latency_ms: float, *, error: np.ndarray | None = None, on_error: str = "next") -> TierScores:
    n = len(scores)
    err = np.zeros(n, dtype=bool) if error is None else error
    s = np.where(err, np.nan, scores)[:, None]
    return TierScores(name=name, type="synthetic", fingerprint=name, scores=s, error=err,
                      latency_ms=np.full(n, float(latency_ms)), on_error=on_error)


def _table(labels: np.ndarray, tiers: list[TierScores], final_scores: np.ndarray | None = None) -> ScoreTable:
    n = len(labels)
    fs = np.full((n, 1), np.nan) if final_scores is None else final_scores[:, None].astype(float)
    final = TierScores(name="safeguard", type="safeguard", fingerprint="final", scores=fs,
                       error=np.isnan(fs[:, 0]), latency_ms=np.full(n, np.nan))
    return ScoreTable(text_hashes=tuple(str(i) for i in range(n)), labels=np.asarray(labels), policies=("jailbreak",),
                      input_action=np.full(n, -1, dtype=np.int8), tiers=tuple(tiers), final=final,
                      final_threshold=0.5, texts_hash="t", data_hash="d")


def _model(table: ScoreTable, **costs) -> SweepModel:
    prev = float(table.labels.mean())
    return SweepModel.build(table, assumption=SafeguardAssumption(prevalence=prev), costs=CostModel(**costs))


def _noisy(n: int = 400, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.12).astype(int)
    a = np.clip(0.55 * y + rng.normal(0.2, 0.18, n), 0, 1)
    b = np.clip(0.7 * y + rng.normal(0.15, 0.12, n), 0, 1)
    return y, a, b


# ---------------------------------------------------------------------------- assumption
def test_assumption_rates_reproduce_the_published_precision_and_recall():
    a = SafeguardAssumption(precision=0.634, recall=0.684, prevalence=0.093)
    assert a.tpr == pytest.approx(0.684)
    assert a.fpr == pytest.approx(0.684 * 0.093 * 0.366 / (0.634 * 0.907))
    assert 0.040 < a.fpr < 0.041
    pi = 0.093
    assert a.tpr * pi / (a.tpr * pi + a.fpr * (1 - pi)) == pytest.approx(0.634)  # precision back at that prevalence
    c = a.expected_counts(100, 900)
    assert c["tp"] == pytest.approx(68.4) and c["fn"] == pytest.approx(31.6)
    assert c["fp"] == pytest.approx(900 * a.fpr) and c["tp"] + c["fn"] + c["fp"] + c["tn"] == pytest.approx(1000)


def test_assumption_rejects_an_impossible_matrix():
    with pytest.raises(ValueError, match="impossible"):
        SafeguardAssumption(precision=0.01, recall=1.0, prevalence=0.5)
    with pytest.raises(ValueError, match="precision"):
        SafeguardAssumption(precision=0.0, recall=0.5)


def test_everything_escalated_gives_the_assumed_precision_and_recall_and_the_safeguard_cost():
    y, a, _ = _noisy()
    m = _model(_table(y, [_tier("a", a, 1.0), _tier("b", a, 10.0)]))
    nan = np.full((2, 1), np.nan)
    r = evaluate(m, nan, nan)
    assert r["escalation"][0] == 1.0 and r["assumed_share"][0] == 1.0
    assert r["precision"][0] == pytest.approx(0.634) and r["recall"][0] == pytest.approx(0.684)
    assert np.isnan(r["recall_at_1pct_fpr"][0])  # no ranking without recorded verdicts
    assert r["cost_per_1k"][0] == pytest.approx(1000 * (0.001 + 0.010 + 2.5))
    assert r["latency_p50_ms"][0] == pytest.approx(2511.0)
    priced = evaluate(_model(m.table, price_per_second=2.0), nan, nan)
    assert priced["cost_per_1k"][0] == pytest.approx(2 * 1000 * 2.511)
    tokens = evaluate(_model(m.table, price_per_1k_tokens=0.5, safeguard_tokens=700), nan, nan)
    assert tokens["cost_per_1k"][0] == pytest.approx(1000 * 0.35)  # only the token price is counted


def test_recorded_final_verdicts_replace_the_assumption():
    y, a, _ = _noisy()
    m = _model(_table(y, [_tier("a", a, 1.0)], final_scores=y.astype(float)))  # a perfect recorded safeguard
    r = evaluate(m, np.full((1, 1), np.nan), np.full((1, 1), np.nan))
    assert r["f1"][0] == 1.0 and r["assumed_share"][0] == 0.0 and r["recall_at_1pct_fpr"][0] == 1.0


# ---------------------------------------------------------------------------- sweep math
def test_a_tier_that_separates_perfectly_decides_everything():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.1).astype(int)
    sep = np.where(y == 1, rng.uniform(0.9, 1.0, 300), rng.uniform(0.0, 0.1, 300))
    noise = rng.uniform(0, 1, 300)
    m = _model(_table(y, [_tier("sep", sep, 0.1), _tier("noise", noise, 50.0)]))
    for obj in (Objective(kind="max-f1", max_escalation=0.0), Objective(kind="min-cost", min_f1=1.0)):
        cands, _ = search(m, obj, seed=0, max_candidates=300, grid=12)
        i = choose(cands, obj)
        r = {k: v[i] for k, v in cands.metrics.items()}
        assert r["f1"] == 1.0 and r["escalation"] == 0.0
        assert r["reach.noise"] == 0.0  # the first tier decided every text
        assert r["cost_per_1k"] == pytest.approx(1000 * 0.0001)
        assert cands.lo[i, 0, 0] < 0.9 and cands.hi[i, 0, 0] > 0.1


def test_infeasible_constraints_name_the_best_achievable_value():
    y, a, b = _noisy()
    m = _model(_table(y, [_tier("a", a, 1.0), _tier("b", b, 10.0)]))
    obj = Objective(kind="min-cost", min_f1=0.9999)
    cands, _ = search(m, obj, seed=0, max_candidates=200, grid=8, max_rounds=1)
    with pytest.raises(TuneInfeasible, match=r"best achievable F1 is 0\.\d{4}") as exc:
        choose(cands, obj)
    assert f"{cands.metrics['f1'].max():.4f}" in str(exc.value)
    broken = _model(_table(y, [_tier("a", a, 1.0, error=np.ones(len(y), dtype=bool))]))  # always errors -> next
    obj = Objective(kind="max-f1", max_escalation=0.5)
    cands, _ = search(broken, obj, seed=0, max_candidates=50, grid=4, max_rounds=1)
    with pytest.raises(TuneInfeasible, match=r"lowest achievable escalation rate is 1\.0000"):
        choose(cands, obj)


@pytest.mark.parametrize("obj", [Objective(kind="max-f1", max_escalation=0.03), Objective(kind="min-cost", min_f1=0.8),
                                 Objective(kind="target-escalation", target=0.05)])
def test_objectives_respect_their_constraint_and_pick_the_best_feasible(obj):
    y, a, b = _noisy()
    m = _model(_table(y, [_tier("a", a, 0.5), _tier("b", b, 40.0)]))
    cands, _ = search(m, obj, seed=1, max_candidates=800, grid=12)
    i = choose(cands, obj)
    r, ok = cands.metrics, obj.feasible(cands.metrics)
    assert ok[i]
    if obj.kind == "min-cost":
        assert r["f1"][i] >= 0.8 and r["cost_per_1k"][i] == pytest.approx(r["cost_per_1k"][ok].min())
    else:
        assert r["f1"][i] == pytest.approx(r["f1"][ok].max())
    if obj.kind == "max-f1":
        assert r["escalation"][i] <= 0.03
    if obj.kind == "target-escalation":
        assert abs(r["escalation"][i] - 0.05) <= 0.005 + 1e-12
        assert "quantile-window" in set(cands.origin)


def test_objective_validation():
    with pytest.raises(ValueError, match="min-f1"):
        Objective(kind="min-cost")
    with pytest.raises(ValueError, match="target"):
        Objective(kind="target-escalation")
    with pytest.raises(ValueError, match="objective must be"):
        Objective(kind="fastest")


def test_search_is_deterministic_for_a_seed():
    y, a, b = _noisy()
    m = _model(_table(y, [_tier("a", a, 0.5), _tier("b", b, 40.0)]))
    obj = Objective(kind="max-f1", max_escalation=0.05)
    c1, _ = search(m, obj, seed=7, max_candidates=300, grid=10)
    c2, _ = search(m, obj, seed=7, max_candidates=300, grid=10)
    assert np.array_equal(c1.lo, c2.lo, equal_nan=True) and np.array_equal(c1.hi, c2.hi, equal_nan=True)
    assert choose(c1, obj) == choose(c2, obj)


def test_pareto_front_is_exactly_the_non_dominated_set():
    y, a, b = _noisy()
    m = _model(_table(y, [_tier("a", a, 0.5), _tier("b", b, 40.0)]))
    cands, _ = search(m, Objective(kind="max-f1"), seed=2, max_candidates=400, grid=8, max_rounds=1)
    r = cands.metrics
    front = pareto_front(r)
    pts = np.column_stack([r["cost_per_1k"], -r["f1"], r["escalation"]]).round(12)
    fp = pts[front]
    for i in range(len(pts)):
        dominated = ((fp <= pts[i]).all(axis=1) & (fp < pts[i]).any(axis=1)).any()
        on_front = (fp == pts[i]).all(axis=1).any()
        assert dominated != on_front  # every point is either on the front or dominated by it
    assert np.all(np.diff(r["cost_per_1k"][front]) >= 0)


def test_vectorised_recall_at_fpr_matches_the_metrics_module():
    from safecascade.training.metrics import recall_at_fpr

    rng = np.random.default_rng(5)
    y = (rng.random(500) < 0.2).astype(int)
    rows = np.round(np.clip(0.3 * y[None, :] + rng.random((6, 500)), 0, 1), 2)  # ties on purpose
    got = _recall_at_fpr(rows, y, 0.01)
    for k in range(6):
        assert got[k] == pytest.approx(recall_at_fpr(y.tolist(), rows[k].tolist(), 0.01))


def test_final_threshold_is_the_f1_best_cut_as_sklearn_tunes_it():
    """The one best-threshold function (the trainer's card and --tune-final-threshold alike) picks
    the F1-best observed score, ties to the lowest: what TunedThresholdClassifierCV(cv="prefit")
    picks on the same score column (the tuner used it before)."""
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.model_selection import TunedThresholdClassifierCV

    class Recorded(ClassifierMixin, BaseEstimator):
        def fit(self, X, y):
            self.classes_ = np.array([0, 1])
            return self

        def predict_proba(self, X):
            return np.column_stack([1.0 - X[:, 0], X[:, 0]])

    def sklearn_threshold(s: np.ndarray, y: np.ndarray) -> float:
        X = s[:, None]
        tuned = TunedThresholdClassifierCV(Recorded().fit(X, y), scoring="f1", cv="prefit", refit=False, thresholds=np.unique(s))
        return float(tuned.fit(X, y).best_threshold_)

    rng = np.random.default_rng(9)
    y = (rng.random(300) < 0.3).astype(int)
    s = np.clip(0.35 * y + rng.random(300) * 0.7, 0, 1)
    thr = best_f1_threshold(y, s)

    def f1(t: float) -> float:
        p = s >= t
        tp = (p & (y == 1)).sum()
        return 2 * tp / (p.sum() + y.sum())

    assert f1(thr) == pytest.approx(max(f1(t) for t in np.unique(s)))
    assert thr == sklearn_threshold(s, y)
    ties = np.round(s, 1)  # many equal scores and equal-F1 cuts
    assert best_f1_threshold(y, ties) == sklearn_threshold(ties, y)
    assert best_f1_threshold([1, 0, 0, 1, 1, 0], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]) == 0.1  # F1 2/3 at 0.1 and at 0.7: the lowest wins
