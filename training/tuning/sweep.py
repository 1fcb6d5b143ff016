"""Sweep the bands of a cascade over cached scores: exact vectorised evaluation, a seeded search,
objectives with constraints, and the Pareto front.

A *candidate* is one ``(allow_below, block_above)`` per non-final tier and policy, held as two
``(tiers, policies)`` float arrays (``NaN`` = null = never). :func:`evaluate` replays the
router's semantics on the score table for many candidates at once (numpy, ``(candidates, texts)``
boolean arrays): at each tier a text is blocked when any policy's score ``>= block_above``,
allowed when every policy's score ``<= allow_below`` (a policy the tier did not score cannot be
allowed), passed on otherwise; a tier error applies the tier's ``on_error``; input rules decide
before any tier; the final tier decides from recorded verdicts where known, else from the
assumed confusion matrix (:class:`~safecascade.training.tuning.cost.SafeguardAssumption`), as
expected counts.

Search (:func:`search`): a coarse grid per tier and policy (quantiles of the observed scores,
denser in the tails, plus null), the config's own bands, ``max_candidates`` seeded random draws
on that grid, then coordinate-wise refinement of the best candidate under the objective on a
fine grid (every observed score, or 257 quantiles; one threshold at a time, every value, until
a round changes nothing). ``target-escalation`` adds RouteLLM-style candidates:
the last non-final tier's band is a window over the sorted scores of the texts reaching it that
sends exactly the target share of all texts onward, slid along the score axis. Everything is
seeded: a fixed seed and score table give the same candidates and the same choice.

The final tier's single threshold (``--tune-final-threshold``, on recorded verdicts) is the
project's one best-F1 threshold, :func:`~safecascade.training.train_metrics.best_f1_threshold`
(what scikit-learn's ``TunedThresholdClassifierCV`` with ``cv="prefit"`` computes on a score
column: the same threshold, ties to the lowest). The bands themselves are not a fit for
``TunedThresholdClassifierCV``: it tunes one cut-off of one estimator for an unconstrained score, while a band search is two
cut-offs per tier and policy, coupled across tiers (which texts reach a tier depends on the
bands before it) and judged on cascade-level cost and escalation constraints.
``FixedThresholdClassifier`` is not used either: it wraps an estimator to apply one known
threshold, while the evaluator applies thousands of candidate thresholds to cached score
arrays at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from safecascade.training.tuning.cost import CostModel, SafeguardAssumption
from safecascade.training.tuning.scores import INPUT_BLOCK, INPUT_NONE, ScoreTable

log = logging.getLogger(__name__)

OBJECTIVES = ("max-f1", "min-cost", "target-escalation")
TAIL_LEVELS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.95, 0.98, 0.99, 0.995, 0.998)
CHUNK = 128
FINE = 256


class TuneInfeasible(ValueError):
    """No candidate satisfies the objective's constraint (the message names the best achievable value)."""


# ---------------------------------------------------------------------------- evaluation
@dataclass(frozen=True, kw_only=True)
class SweepModel:
    """The score table turned into arrays, plus the cost model and the final-tier assumption."""

    table: ScoreTable
    assumption: SafeguardAssumption
    costs: CostModel
    latency: np.ndarray = field(repr=False)  # (tiers + 1, n) ms
    cost: np.ndarray = field(repr=False)  # (tiers + 1, n)
    final_score: np.ndarray = field(repr=False)  # (n,) max over policies, NaN = unknown

    @classmethod
    def build(cls, table: ScoreTable, *, assumption: SafeguardAssumption, costs: CostModel) -> "SweepModel":
        lat = costs.latency_matrix([t.latency_ms for t in table.tiers], table.final.latency_ms)
        lat[:, table.input_action != INPUT_NONE] = 0.0
        fs = table.final.scores
        final = np.where(np.isnan(fs).all(axis=1), np.nan, np.nanmax(np.where(np.isnan(fs), -np.inf, fs), axis=1))
        return cls(table=table, assumption=assumption, costs=costs, latency=lat, cost=costs.cost_matrix(lat),
                   final_score=final)

    @property
    def shape(self) -> tuple[int, int]:
        """(non-final tiers, policies)."""
        return len(self.table.tiers), len(self.table.policies)


def _tier_step(S: np.ndarray, err: np.ndarray, on_error: str, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block / allow masks ``(C, n)`` of one tier for ``C`` candidates' bands ``lo``/``hi`` ``(C, P)``."""
    with np.errstate(invalid="ignore"):
        blk = (S[None, :, :] >= hi[:, None, :]).any(axis=2)
        alw = (S[None, :, :] <= lo[:, None, :]).all(axis=2) & ~blk
    if on_error == "block":
        blk = blk | err[None, :]
    elif on_error == "allow":
        alw = alw | err[None, :]
    return blk, alw


def _recall_at_fpr(score: np.ndarray, y: np.ndarray, max_fpr: float = 0.01) -> np.ndarray:
    """Row-wise recall at ``max_fpr`` (ties kept together, as :func:`metrics.recall_at_fpr`);
    NaN for rows with an undefined score."""
    out = np.full(score.shape[0], np.nan)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    ok_rows = ~np.isnan(score).any(axis=1)
    if not ok_rows.any() or n_pos == 0 or n_neg == 0:
        return out
    s = score[ok_rows]
    order = np.argsort(-s, axis=1, kind="stable")
    ss = np.take_along_axis(s, order, axis=1)
    ys = y[order]
    tp, fp = np.cumsum(ys, axis=1), np.cumsum(1 - ys, axis=1)
    last = np.ones_like(ss, dtype=bool)
    last[:, :-1] = ss[:, :-1] != ss[:, 1:]
    good = last & (fp / n_neg <= max_fpr)
    out[ok_rows] = np.where(good, tp / n_pos, 0.0).max(axis=1)
    return out


def _evaluate_chunk(m: SweepModel, lo: np.ndarray, hi: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    t = m.table
    C, n = lo.shape[0], t.n
    y = t.labels.astype(np.float64)
    reach = np.broadcast_to(t.input_action == INPUT_NONE, (C, n)).copy()
    pred = np.broadcast_to((t.input_action == INPUT_BLOCK).astype(np.float64), (C, n)).copy()
    score = np.broadcast_to(np.where(t.input_action == INPUT_BLOCK, 1.0, 0.0), (C, n)).copy()
    lat, cost = np.zeros((C, n)), np.zeros((C, n))
    out: dict[str, np.ndarray] = {}
    for k, ts in enumerate(t.tiers):
        out[f"reach.{ts.name}"] = reach.mean(axis=1)
        lat += reach * m.latency[k]
        cost += reach * m.cost[k]
        blk, alw = _tier_step(ts.scores, ts.error, ts.on_error, lo[:, k, :], hi[:, k, :])
        dec_b, dec = reach & blk, reach & (blk | alw)
        tier_score = np.where(ts.error, np.nan, np.nanmax(np.where(np.isnan(ts.scores), -np.inf, ts.scores), axis=1))
        tier_score = np.where(np.isfinite(tier_score), tier_score, np.nan)
        score = np.where(dec, np.where(np.isnan(tier_score)[None, :], dec_b.astype(np.float64), tier_score[None, :]), score)
        pred = np.where(dec, dec_b.astype(np.float64), pred)
        reach = reach & ~dec
    out[f"reach.{t.final.name}"] = esc = reach.mean(axis=1)
    lat += reach * m.latency[-1]
    cost += reach * m.cost[-1]
    known = ~np.isnan(m.final_score)
    a = m.assumption
    expected = np.where(t.labels == 1, a.tpr, a.fpr)
    final_pred = np.where(known, (np.nan_to_num(m.final_score, nan=0.0) >= threshold).astype(np.float64), expected)
    pred = np.where(reach, final_pred[None, :], pred)
    score = np.where(reach, m.final_score[None, :], score)
    tp, fp = (pred * y).sum(axis=1), (pred * (1 - y)).sum(axis=1)
    n_pos, n_neg = y.sum(), n - y.sum()
    fn, tn = n_pos - tp, n_neg - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        out["precision"] = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        out["recall"] = np.where(n_pos > 0, tp / max(n_pos, 1), 0.0)
        out["f1"] = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        out["fpr"] = np.where(n_neg > 0, fp / max(n_neg, 1), 0.0)
    out.update(tp=tp, fp=fp, fn=fn, tn=tn, escalation=esc, assumed_share=(reach & ~known[None, :]).mean(axis=1),
               recall_at_1pct_fpr=_recall_at_fpr(score, t.labels),
               cost_per_1k=cost.sum(axis=1) * 1000.0 / n,
               latency_p50_ms=np.percentile(lat, 50, axis=1), latency_p99_ms=np.percentile(lat, 99, axis=1),
               latency_mean_ms=lat.mean(axis=1))
    return out


def evaluate(m: SweepModel, lo: np.ndarray, hi: np.ndarray, *, threshold: float | None = None) -> dict[str, np.ndarray]:
    """Metrics of ``C`` candidates (``lo``/``hi``: ``(C, tiers, policies)``; NaN = never) as
    ``name -> (C,)`` arrays: precision, recall, f1, fpr, expected tp/fp/fn/tn, recall_at_1pct_fpr
    (NaN unless every final-tier verdict is recorded), escalation (share reaching the final
    tier), ``reach.<tier>`` for every tier, assumed_share, cost_per_1k, latency p50/p99/mean."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    if lo.ndim == 2:
        lo, hi = lo[None], hi[None]
    if lo.shape != hi.shape or lo.shape[1:] != m.shape:
        raise ValueError(f"bands must have shape (C, {m.shape[0]}, {m.shape[1]}), got {lo.shape} / {hi.shape}")
    thr = m.table.final_threshold if threshold is None else float(threshold)
    parts = [_evaluate_chunk(m, lo[s:s + CHUNK], hi[s:s + CHUNK], thr) for s in range(0, lo.shape[0], CHUNK)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ---------------------------------------------------------------------------- objectives
@dataclass(frozen=True, kw_only=True)
class Objective:
    """``max-f1`` (optionally ``escalation <= max_escalation``), ``min-cost`` (``f1 >= min_f1``)
    or ``target-escalation`` (``|escalation - target| <= tolerance``, then max F1)."""

    kind: str
    max_escalation: float | None = None
    min_f1: float | None = None
    target: float | None = None
    tolerance: float = 0.005

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.kind!r}")
        if self.kind == "min-cost" and self.min_f1 is None:
            raise ValueError("objective min-cost needs a constraint: --min-f1 F (e.g. --objective min-cost --min-f1 0.92)")
        if self.kind == "target-escalation" and self.target is None:
            raise ValueError("objective target-escalation needs the target share (e.g. --objective target-escalation 0.05)")
        for key in ("max_escalation", "min_f1", "target"):
            v = getattr(self, key)
            if v is not None and not (0.0 <= v <= 1.0):
                raise ValueError(f"{key.replace('_', '-')} must be in [0, 1], got {v!r}")

    def feasible(self, r: dict[str, np.ndarray]) -> np.ndarray:
        eps = 1e-12
        if self.kind == "max-f1":
            return r["escalation"] <= self.max_escalation + eps if self.max_escalation is not None else np.ones_like(r["f1"], dtype=bool)
        if self.kind == "min-cost":
            return r["f1"] >= self.min_f1 - eps
        return np.abs(r["escalation"] - self.target) <= self.tolerance + eps

    def order(self, r: dict[str, np.ndarray]) -> np.ndarray:
        """Candidate indices, best first (ties: cheaper, fewer escalations, earlier candidate)."""
        idx = np.arange(len(r["f1"]))
        f1, cost, esc = np.round(r["f1"], 12), np.round(r["cost_per_1k"], 9), np.round(r["escalation"], 12)
        if self.kind == "min-cost":
            return np.lexsort((idx, esc, -f1, cost))
        return np.lexsort((idx, esc, cost, -f1))

    def best(self, r: dict[str, np.ndarray]) -> int | None:
        """The best feasible candidate, or None."""
        ok = self.feasible(r)
        for i in self.order(r):
            if ok[i]:
                return int(i)
        return None

    def describe(self) -> str:
        if self.kind == "max-f1":
            return "max F1" + (f" with escalation <= {self.max_escalation:g}" if self.max_escalation is not None else "")
        if self.kind == "min-cost":
            return f"min cost with F1 >= {self.min_f1:g}"
        return f"max F1 at escalation {self.target:g} +/- {self.tolerance:g}"

    def infeasible_message(self, r: dict[str, np.ndarray]) -> str:
        n = len(r["f1"])
        if self.kind == "max-f1":
            return (f"no candidate among {n} has escalation <= {self.max_escalation:g}; the lowest achievable "
                    f"escalation rate is {r['escalation'].min():.4f}")
        if self.kind == "min-cost":
            return f"no candidate among {n} reaches F1 >= {self.min_f1:g}; the best achievable F1 is {r['f1'].max():.4f}"
        closest = r["escalation"][np.argmin(np.abs(r["escalation"] - self.target))]
        return (f"no candidate among {n} has escalation within {self.tolerance:g} of {self.target:g}; the closest "
                f"achievable escalation rate is {closest:.4f}")


# ---------------------------------------------------------------------------- search space
def band_grid(scores: np.ndarray, size: int) -> np.ndarray:
    """Candidate thresholds of one tier and policy: observed-score quantiles (``size`` evenly
    spaced levels plus tail levels), unique, ascending."""
    s = scores[np.isfinite(scores)]
    if not len(s):
        return np.array([])
    levels = np.unique(np.concatenate([np.linspace(0.0, 1.0, max(size, 2)), TAIL_LEVELS]))
    return np.unique(np.quantile(s, levels, method="inverted_cdf"))


def fine_grid(scores: np.ndarray, size: int = FINE) -> np.ndarray:
    """The refinement grid: every observed score when there are at most ``2 * size`` distinct
    ones, else ``size + 1`` evenly spaced quantiles plus the tail levels."""
    s = np.unique(scores[np.isfinite(scores)])
    return s if len(s) <= 2 * size else band_grid(s, size + 1)


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """Per (tier, policy) grids: ``grids`` (coarse, for the random draws) and ``fine`` (for the
    coordinate-wise refinement); ``active[k, p]`` is False where the tier never scores the policy."""

    grids: tuple[tuple[np.ndarray, ...], ...]
    fine: tuple[tuple[np.ndarray, ...], ...]
    active: np.ndarray

    @classmethod
    def build(cls, table: ScoreTable, size: int) -> "SearchSpace":
        P = range(len(table.policies))
        grids = tuple(tuple(band_grid(ts.scores[:, p], size) for p in P) for ts in table.tiers)
        fine = tuple(tuple(fine_grid(ts.scores[:, p]) for p in P) for ts in table.tiers)
        active = np.array([[len(g) > 0 for g in row] for row in grids], dtype=bool).reshape(len(grids), len(table.policies))
        return cls(grids=grids, fine=fine, active=active)

    def describe(self) -> dict[str, Any]:
        return {"grid_sizes": [[len(g) for g in row] for row in self.grids],
                "fine_grid_sizes": [[len(g) for g in row] for row in self.fine]}


def _random_bands(space: SearchSpace, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    K, P = space.active.shape
    lo, hi = np.full((count, K, P), np.nan), np.full((count, K, P), np.nan)
    for k in range(K):
        for p in range(P):
            g = space.grids[k][p]
            if not space.active[k, p]:
                continue
            a = rng.integers(-1, len(g), size=count)  # -1 = null
            b = rng.integers(-1, len(g), size=count)
            la, lb = np.where(a >= 0, g[np.maximum(a, 0)], np.nan), np.where(b >= 0, g[np.maximum(b, 0)], np.nan)
            both = (a >= 0) & (b >= 0)
            lo[:, k, p] = np.where(both, np.minimum(la, lb), la)
            hi[:, k, p] = np.where(both, np.maximum(la, lb), lb)
            same = both & (a == b)
            hi[same, k, p] = np.nan
    return lo, hi


def _coordinate_variants(space: SearchSpace, lo: np.ndarray, hi: np.ndarray, k: int, p: int, which: str) -> tuple[np.ndarray, np.ndarray]:
    """Copies of one candidate with one threshold set to every valid grid value (and null)."""
    vals = np.concatenate([[np.nan], space.fine[k][p]])
    other = hi[k, p] if which == "lo" else lo[k, p]
    if not np.isnan(other):
        vals = vals[np.isnan(vals) | ((vals < other) if which == "lo" else (vals > other))]
    L, H = np.repeat(lo[None], len(vals), axis=0), np.repeat(hi[None], len(vals), axis=0)
    (L if which == "lo" else H)[:, k, p] = vals
    return L, H


@dataclass
class Candidates:
    """Every evaluated candidate: bands ``(C, tiers, policies)``, origin, and metrics."""

    lo: np.ndarray
    hi: np.ndarray
    origin: list[str]
    metrics: dict[str, np.ndarray]

    def add(self, m: SweepModel, lo: np.ndarray, hi: np.ndarray, origin: str) -> None:
        r = evaluate(m, lo, hi)
        self.lo, self.hi = np.concatenate([self.lo, lo]), np.concatenate([self.hi, hi])
        self.origin += [origin] * len(lo)
        self.metrics = {k: np.concatenate([self.metrics[k], r[k]]) if self.metrics else r[k] for k in r}

    def __len__(self) -> int:
        return len(self.origin)


def _refine(m: SweepModel, space: SearchSpace, cands: Candidates, obj: Objective, start: int, max_rounds: int) -> None:
    """Coordinate-wise improvement of candidate ``start`` (every evaluated variant is kept)."""
    lo, hi = cands.lo[start].copy(), cands.hi[start].copy()
    best = start
    for rnd in range(max_rounds):
        changed = False
        for k, p in zip(*np.nonzero(space.active)):
            for which in ("lo", "hi"):
                L, H = _coordinate_variants(space, lo, hi, int(k), int(p), which)
                first = len(cands)
                cands.add(m, L, H, f"refine{rnd}")
                pick = _pick(obj, cands.metrics)
                if pick != best and pick >= first:
                    best, lo, hi, changed = pick, cands.lo[pick].copy(), cands.hi[pick].copy(), True
        if not changed:
            return


def reach_mask(m: SweepModel, lo: np.ndarray, hi: np.ndarray, *, upto: int | None = None) -> np.ndarray:
    """``(n,)`` mask of the texts that reach tier ``upto`` (default: the final tier) under one
    candidate's bands ``(tiers, policies)``."""
    t = m.table
    reach = t.input_action == INPUT_NONE
    for k in range(len(t.tiers) if upto is None else upto):
        ts = t.tiers[k]
        blk, alw = _tier_step(ts.scores, ts.error, ts.on_error, lo[None, k], hi[None, k])
        reach = reach & ~(blk[0] | alw[0])
    return reach


def _window_bands(m: SweepModel, lo: np.ndarray, hi: np.ndarray, target: float, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """RouteLLM-style candidates: the last non-final tier's band (one for all its policies) is a
    window over the sorted max-scores of the texts reaching it, sized to send ``target`` of all
    texts onward, at ``positions`` evenly spaced places along the score axis."""
    t = m.table
    K = len(t.tiers)
    reach = reach_mask(m, lo, hi, upto=K - 1)
    last = t.tiers[-1]
    forced = reach & last.error if last.on_error == "next" else np.zeros_like(reach)
    v = np.max(np.where(np.isnan(last.scores), -np.inf, last.scores), axis=1)[reach & ~forced]
    v = np.sort(v[np.isfinite(v)])
    size = int(round(target * t.n)) - int(forced.sum())
    if size <= 0 or size >= len(v):
        return np.empty((0,) + lo.shape), np.empty((0,) + lo.shape)
    starts = np.unique(np.linspace(0, len(v) - size, min(positions, len(v) - size + 1)).round().astype(int))
    L, H = np.repeat(lo[None], len(starts), axis=0), np.repeat(hi[None], len(starts), axis=0)
    cols = np.flatnonzero(np.isfinite(last.scores).any(axis=0))
    for j, i in enumerate(starts):
        a = v[i - 1] if i > 0 else np.nan
        b = v[i + size] if i + size < len(v) else np.nan
        if np.isfinite(a) and np.isfinite(b) and not a < b:
            b = np.nan
        L[j, K - 1, cols], H[j, K - 1, cols] = a, b
    return L, H


def config_bands(config: Any, policies: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The bands of a router config's non-final tiers as ``(tiers, policies)`` arrays."""
    tiers = config.tiers[:-1]
    lo, hi = np.full((len(tiers), len(policies)), np.nan), np.full((len(tiers), len(policies)), np.nan)
    for k, tc in enumerate(tiers):
        for p, pol in enumerate(policies):
            band = tc.band_for(pol)
            lo[k, p] = np.nan if band.allow_below is None else band.allow_below
            hi[k, p] = np.nan if band.block_above is None else band.block_above
    return lo, hi


def search(m: SweepModel, obj: Objective, *, seed: int = 0, max_candidates: int = 3000, grid: int = 16,
           baseline: tuple[np.ndarray, np.ndarray] | None = None, max_rounds: int = 4,
           window_positions: int = 101) -> tuple[Candidates, SearchSpace]:
    """Evaluate the baseline, ``max_candidates`` seeded random candidates, RouteLLM windows (for
    ``target-escalation``) and a coordinate-wise refinement of the best; returns them all."""
    if max_candidates < 1:
        raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
    space = SearchSpace.build(m.table, grid)
    rng = np.random.default_rng(seed)
    K, P = m.shape
    cands = Candidates(lo=np.empty((0, K, P)), hi=np.empty((0, K, P)), origin=[], metrics={})
    if baseline is not None:
        cands.add(m, baseline[0][None], baseline[1][None], "config")
    cands.add(m, *_random_bands(space, rng, max_candidates), "random")
    if obj.kind == "target-escalation":
        upstream = Objective(kind="max-f1", max_escalation=obj.target + obj.tolerance)
        ok = upstream.feasible(cands.metrics)
        bases = [int(i) for i in upstream.order(cands.metrics) if ok[i]][:10]
        for i in bases:
            L, H = _window_bands(m, cands.lo[i], cands.hi[i], obj.target, window_positions)
            if len(L):
                cands.add(m, L, H, "quantile-window")
    _refine(m, space, cands, obj, _pick(obj, cands.metrics), max_rounds)
    return cands, space


def _violation(obj: Objective, r: dict[str, np.ndarray]) -> np.ndarray:
    if obj.kind == "max-f1":
        return np.maximum(r["escalation"] - (obj.max_escalation or 0.0), 0.0)
    if obj.kind == "min-cost":
        return np.maximum(obj.min_f1 - r["f1"], 0.0)
    return np.abs(r["escalation"] - obj.target)


def _pick(obj: Objective, r: dict[str, np.ndarray]) -> int:
    """The best feasible candidate; while none is feasible, the least violating one (so the
    refinement walks toward feasibility first)."""
    best = obj.best(r)
    if best is not None:
        return best
    v = np.round(_violation(obj, r), 12)
    least = v == v.min()
    return int(next(i for i in obj.order(r) if least[i]))


def choose(cands: Candidates, obj: Objective) -> int:
    """The chosen candidate; :class:`TuneInfeasible` when none satisfies the constraint."""
    best = obj.best(cands.metrics)
    if best is None:
        raise TuneInfeasible(obj.infeasible_message(cands.metrics))
    return best


# ---------------------------------------------------------------------------- Pareto front
def pareto_front(r: dict[str, np.ndarray], keys: Sequence[tuple[str, str]] = (("cost_per_1k", "min"), ("f1", "max"), ("escalation", "min"))) -> np.ndarray:
    """Indices of the non-dominated candidates (duplicates of a point: the first one only),
    sorted by the first key."""
    cols = np.column_stack([np.round(r[k], 12) * (1 if d == "min" else -1) for k, d in keys])  # all "min"
    _, first = np.unique(cols, axis=0, return_index=True)
    first = np.sort(first)
    pts = cols[first]
    keep = np.ones(len(pts), dtype=bool)
    for s in range(0, len(pts), 256):
        blk = pts[s:s + 256]
        le = (pts[None, :, :] <= blk[:, None, :]).all(axis=2)
        lt = (pts[None, :, :] < blk[:, None, :]).any(axis=2)
        keep[s:s + 256] = ~(le & lt).any(axis=1)
    front = first[keep]
    return front[np.lexsort((front, cols[front, 1], cols[front, 0]))]
