"""A tuning job: choose the escalation bands of a router on a cost / F1 Pareto front.

Score once, sweep cheaply: every non-final tier scores the labelled texts once (cached by text
hash and tier fingerprint, :mod:`~safecascade.training.tuning.scores`); the final tier uses
recorded verdicts (``replay``) where they exist and otherwise a logged assumption about its
confusion matrix (:mod:`~safecascade.training.tuning.cost`); the bands are then swept over the
cached scores (:mod:`~safecascade.training.tuning.sweep`), the chosen point written as a router
YAML, and everything logged to one MLflow run (:mod:`~safecascade.training.tuning.report`), which
the tuned router is registered into (``safecascade-router``). The command line is
:mod:`~safecascade.training.tuning.tune_cli` (``safecascade tune``).

Library::

    from safecascade.training.tuning import Objective, TuneOptions, tune
    result = tune(load_config("models/default.yaml"), texts, labels, TuneOptions(objective=Objective(
        kind="max-f1", max_escalation=0.05)))
    result.write_yaml("router.yaml")
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from safecascade.training.train_metrics import best_f1_threshold
from safecascade.training.tuning.cost import SAFEGUARD_PRECISION, SAFEGUARD_RECALL, CostModel, SafeguardAssumption
from safecascade.training.tuning.report import (
    band_columns,
    candidate_rows,
    pareto_png,
    summary_json,
    tuned_config_dict,
    write_csv,
    write_tuned_yaml,
)
from safecascade.training.tuning.scores import score_router
from safecascade.training.tuning.sweep import (
    Candidates,
    Objective,
    SearchSpace,
    SweepModel,
    choose,
    config_bands,
    evaluate,
    pareto_front,
    reach_mask,
    search,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TuneOptions:
    """Everything a tuning job takes besides the config and the data.

    Args:
        objective: What to optimise under which constraint (max-f1 | min-cost | target-escalation).
        seed: Seed of the random search.
        max_candidates: Random candidates drawn before refinement.
        grid: Quantile levels per threshold grid (plus tails).
        replay: Recorded final-tier verdicts (replay CSV; optional ``latency_ms`` column).
        assume_precision: Final-tier precision where no verdict is recorded.
        assume_recall: Final-tier recall where no verdict is recorded.
        assume_prevalence: Prevalence at which ``assume_precision`` holds (default: the data's).
        costs: The cost / latency model.
        cache_dir: Score cache directory (None: no cache).
        batch_size: Texts per tier call while scoring.
        progress: Show progress bars.
        tune_final_threshold: Also tune the final tier's threshold on recorded verdicts.
    """

    objective: Objective
    seed: int = 0
    max_candidates: int = 3000
    grid: int = 16
    replay: str | Path | None = None
    assume_precision: float = SAFEGUARD_PRECISION
    assume_recall: float = SAFEGUARD_RECALL
    assume_prevalence: float | None = None
    costs: CostModel = field(default_factory=CostModel)
    cache_dir: str | Path | None = None
    batch_size: int = 32
    progress: bool = True
    tune_final_threshold: bool = False


@dataclass(frozen=True, kw_only=True)
class TuneResult:
    """A finished sweep: the candidates, the Pareto front, the chosen one and its tuned config."""

    base_config: Any
    model: SweepModel
    space: SearchSpace
    candidates: Candidates
    front: np.ndarray
    chosen: int
    chosen_metrics: dict[str, float]
    final_threshold: float
    options: TuneOptions
    sweep_seconds: float

    @property
    def table(self) -> Any:
        return self.model.table

    def tuned_dict(self, name: str | None = None) -> dict[str, Any]:
        """The tuned router config as a dict (see :func:`~safecascade.training.tuning.report.tuned_config_dict`)."""
        thr = self.final_threshold if self.final_threshold != self.table.final_threshold else None
        return tuned_config_dict(self.base_config, self.candidates.lo[self.chosen], self.candidates.hi[self.chosen],
                                 self.space.active, name=name or f"{self.base_config.name}-tuned", final_threshold=thr)

    def header(self) -> list[str]:
        """Comment lines for the YAML (deterministic: no timestamps)."""
        m = self.chosen_metrics
        return [f"tuned by `safecascade tune` ({self.options.objective.describe()}; seed {self.options.seed})",
                f"from {self.base_config.name} ({self.base_config.sha}) on data {self.table.data_hash} "
                f"(n={self.table.n}, positives={int(self.table.labels.sum())})",
                f"expected: F1 {m['f1']:.4f}, precision {m['precision']:.4f}, recall {m['recall']:.4f}, "
                f"escalation {m['escalation']:.4f}, cost/1k {m['cost_per_1k']:.2f} {self.model.costs.unit}"]

    def write_yaml(self, path: str | Path, name: str | None = None) -> Path:
        """Write the tuned router YAML (validated; loadable with ``Router.load(path)``)."""
        return write_tuned_yaml(self.base_config, self.tuned_dict(name), path, header=self.header())

    def point(self, i: int) -> dict[str, float]:
        """Metrics of candidate ``i``."""
        return {k: float(v[i]) for k, v in self.candidates.metrics.items()}


def assumption_for(table: Any, opts: TuneOptions) -> SafeguardAssumption:
    """The final-tier assumption at the data's prevalence (unless given)."""
    prev = opts.assume_prevalence if opts.assume_prevalence is not None else float(table.labels.mean())
    if not 0.0 < prev < 1.0:
        raise ValueError(f"the tuning data needs both classes (prevalence {prev:.3f})")
    return SafeguardAssumption(precision=opts.assume_precision, recall=opts.assume_recall, prevalence=prev)


def _final_threshold(model: SweepModel, lo: np.ndarray, hi: np.ndarray, opts: TuneOptions) -> float | None:
    """The F1-best threshold (:func:`~safecascade.training.train_metrics.best_f1_threshold`) on the
    recorded verdicts of the texts the chosen bands escalate; None with fewer than 10 of them or
    without both classes among them."""
    reach = reach_mask(model, lo, hi)
    known = reach & np.isfinite(model.final_score)
    if known.sum() < 10:
        log.warning("--tune-final-threshold: only %d escalated texts have recorded verdicts; keeping the threshold", known.sum())
        return None
    labels = np.asarray(model.table.labels[known], dtype=np.int64)
    if len(np.unique(labels)) < 2:
        return None
    return best_f1_threshold(labels, np.asarray(model.final_score[known], dtype=np.float64))


def tune(config: Any, texts: Sequence[str], labels: Sequence[int], opts: TuneOptions) -> TuneResult:
    """Score (cached), sweep, choose; raises :class:`~safecascade.training.tuning.sweep.TuneInfeasible` when no
    candidate meets the constraint."""
    table = score_router(config, texts, labels, replay=opts.replay, cache_dir=opts.cache_dir,
                         batch_size=opts.batch_size, progress=opts.progress)
    assumption = assumption_for(table, opts)
    model = SweepModel.build(table, assumption=assumption, costs=opts.costs)
    unknown = int((np.isnan(model.final_score) & (table.input_action < 0)).sum())
    if unknown:
        log.warning("final tier %s: no recorded verdict for %d of %d texts; assuming precision %.3f, recall %.3f "
                    "(%s) -> TPR %.3f, FPR %.4f at prevalence %.3f", table.final.name, unknown, table.n,
                    assumption.precision, assumption.recall, assumption.source, assumption.tpr, assumption.fpr,
                    assumption.prevalence)
    t0 = time.perf_counter()
    cands, space = search(model, opts.objective, seed=opts.seed, max_candidates=opts.max_candidates, grid=opts.grid,
                          baseline=config_bands(config, table.policies))
    chosen = choose(cands, opts.objective)
    front = pareto_front(cands.metrics)
    chosen_metrics = {k: float(v[chosen]) for k, v in cands.metrics.items()}
    threshold = table.final_threshold
    if opts.tune_final_threshold:
        thr = _final_threshold(model, cands.lo[chosen], cands.hi[chosen], opts)
        if thr is not None:
            r = evaluate(model, cands.lo[chosen], cands.hi[chosen], threshold=thr)
            if r["f1"][0] > chosen_metrics["f1"] and opts.objective.feasible(r)[0]:
                threshold, chosen_metrics = thr, {k: float(v[0]) for k, v in r.items()}
    sweep_s = time.perf_counter() - t0
    log.info("sweep: %d candidates in %.1f s; front %d; chosen #%d (%s)", len(cands), sweep_s, len(front), chosen,
             cands.origin[chosen])
    return TuneResult(base_config=config, model=model, space=space, candidates=cands, front=front, chosen=chosen,
                      chosen_metrics=chosen_metrics, final_threshold=threshold, options=opts, sweep_seconds=sweep_s)


# ---------------------------------------------------------------------------- outputs


def write_outputs(result: TuneResult, out_dir: Path, yaml_path: Path, *, name: str | None = None) -> dict[str, Path]:
    """router YAML, pareto.csv, pareto.png, candidates.csv, tune_summary.json into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t = result.table
    names = [ts.name for ts in t.tiers]
    bands = band_columns(names, t.policies, result.space.active)
    reach = [f"reach.{n}" for n in names] + [f"reach.{t.final.name}"]
    front = set(int(i) for i in result.front)
    kw = dict(front=front, chosen=result.chosen)
    paths = {"yaml": result.write_yaml(yaml_path, name)}
    paths["pareto_csv"] = write_csv(candidate_rows(result.candidates, result.front, bands, reach, **kw), out_dir / "pareto.csv")
    paths["candidates_csv"] = write_csv(candidate_rows(result.candidates, range(len(result.candidates)), bands, reach, **kw),
                                        out_dir / "candidates.csv")
    paths["pareto_png"] = pareto_png(result.candidates.metrics, result.front, result.chosen, out_dir / "pareto.png",
                                     title=f"{result.base_config.name}: {result.options.objective.describe()}",
                                     cost_unit=result.model.costs.unit)
    paths["summary"] = summary_json(summary(result), out_dir / "tune_summary.json")
    return paths


def summary(result: TuneResult) -> dict[str, Any]:
    """Params-like facts of the job plus the chosen point (JSON-serialisable)."""
    t, o = result.table, result.options
    return {
        "objective": o.objective.describe(), "objective_kind": o.objective.kind, "seed": o.seed,
        "max_candidates": o.max_candidates, "grid": o.grid, "search_space": result.space.describe(),
        "n_candidates": len(result.candidates), "front_size": len(result.front),
        "data": {"n": t.n, "positives": int(t.labels.sum()), "data_hash": t.data_hash, "texts_hash": t.texts_hash},
        "config": {"name": result.base_config.name, "sha": result.base_config.sha},
        "policy_hashes": {k: p.sha for k, p in result.base_config.resolve_policies().items()},
        "tiers": {ts.name: {"type": ts.type, "fingerprint": ts.fingerprint, "cached": ts.cached,
                            "mean_latency_ms": float(np.nanmean(ts.latency_ms)) if np.isfinite(ts.latency_ms).any() else None}
                  for ts in (*t.tiers, t.final)},
        "final_tier": {"name": t.final.name, "source": t.final.source, "threshold": result.final_threshold,
                       "recorded_verdicts": int(np.isfinite(result.model.final_score).sum())},
        "safeguard_assumption": result.model.assumption.to_dict(), "cost_model": result.model.costs.to_dict(),
        "chosen": {"candidate": result.chosen, "origin": result.candidates.origin[result.chosen], **result.chosen_metrics},
        "score_seconds": t.score_seconds, "sweep_seconds": round(result.sweep_seconds, 3),
    }


def mlflow_params(result: TuneResult, args_view: dict[str, Any]) -> dict[str, Any]:
    """Flat params for the MLflow run (long values are also in tune_summary.json)."""
    s = summary(result)
    a = s["safeguard_assumption"]
    p = {"objective": s["objective"], "objective_kind": s["objective_kind"], "seed": s["seed"],
         "max_candidates": s["max_candidates"], "grid": s["grid"], "search_space": s["search_space"],
         "data_hash": s["data"]["data_hash"], "n": s["data"]["n"], "positives": s["data"]["positives"],
         "config_name": s["config"]["name"], "config_sha": s["config"]["sha"], "final_source": s["final_tier"]["source"],
         "final_threshold": s["final_tier"]["threshold"], "cost_unit": s["cost_model"]["unit"],
         "safeguard_ms": s["cost_model"]["safeguard_ms"], "assume_precision": a["precision"],
         "assume_recall": a["recall"], "assume_prevalence": round(a["prevalence"], 6), "assume_tpr": round(a["tpr"], 6),
         "assume_fpr": round(a["fpr"], 6), "assume_source": a["source"]}
    p.update({f"policy_sha.{k}": v for k, v in s["policy_hashes"].items()})
    p.update({f"tier.{k}": f"{v['type']}:{v['fingerprint']}" for k, v in s["tiers"].items()})
    p.update({k: v for k, v in args_view.items() if v is not None})
    return p
