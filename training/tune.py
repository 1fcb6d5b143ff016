"""``safecascade tune``: choose the escalation bands of a router on a cost / F1 Pareto front.

Score once, sweep cheaply: every non-final tier scores the labelled texts once (cached by text
hash and tier fingerprint, :mod:`~safecascade.training.tune_scores`); the final tier uses
recorded verdicts (``--replay``) where they exist and otherwise a logged assumption about its
confusion matrix (:mod:`~safecascade.training.tune_cost`); the bands are then swept over the
cached scores (:mod:`~safecascade.training.tune_sweep`), the chosen point written as a router
YAML, and everything logged to one MLflow run (:mod:`~safecascade.training.tune_report`), which
the tuned router is registered into (``safecascade-router``; ``--promote`` sets ``@champion``).

Library::

    from safecascade.training.tune import TuneOptions, tune
    result = tune(load_config("models/default.yaml"), examples, TuneOptions(objective=Objective(
        kind="max-f1", max_escalation=0.05)))
    result.write_yaml("router.yaml")

CLI::

    safecascade tune --objective max-f1 --max-escalation 0.03 [--config router.yaml]
                     [--benchmark jailbreak --split val --limit N] [--replay verdicts.csv]
                     [--assume-precision 0.634 --assume-recall 0.684] [--safeguard-ms 2500]
                     [--price-per-second X] [--price-per-1k-tokens Y] [--seed 0]
                     [--max-candidates 3000] [--grid 16] [--out router.yaml] [--promote | --no-register]
    safecascade tune --objective min-cost --min-f1 0.92
    safecascade tune --objective target-escalation 0.05
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from safecascade.training.tune_cost import SAFEGUARD_PRECISION, SAFEGUARD_RECALL, CostModel, SafeguardAssumption
from safecascade.training.tune_sweep import Candidates, Objective, SearchSpace, SweepModel

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TuneOptions:
    """Everything a tuning job takes besides the config and the data."""

    objective: Objective
    seed: int = 0
    max_candidates: int = 3000
    grid: int = 16
    replay: str | Path | None = None
    assume_precision: float = SAFEGUARD_PRECISION
    assume_recall: float = SAFEGUARD_RECALL
    assume_prevalence: float | None = None  # default: the data's
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
        """The tuned router config as a dict (see :func:`tune_report.tuned_config_dict`)."""
        from safecascade.training.tune_report import tuned_config_dict

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
        from safecascade.training.tune_report import write_tuned_yaml

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
    """TunedThresholdClassifierCV on the recorded verdicts of the texts the chosen bands escalate."""
    from safecascade.training.tune_sweep import reach_mask, tune_final_threshold

    reach = reach_mask(model, lo, hi)
    known = reach & np.isfinite(model.final_score)
    if known.sum() < 10:
        log.warning("--tune-final-threshold: only %d escalated texts have recorded verdicts; keeping the threshold", known.sum())
        return None
    return tune_final_threshold(model.final_score[known], model.table.labels[known])


def tune(config: Any, texts: Sequence[str], labels: Sequence[int], opts: TuneOptions) -> TuneResult:
    """Score (cached), sweep, choose; raises :class:`~tune_sweep.TuneInfeasible` when no
    candidate meets the constraint."""
    from safecascade.training.tune_scores import score_router
    from safecascade.training.tune_sweep import choose, config_bands, evaluate, pareto_front, search

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
    from safecascade.training.tune_report import (
        band_columns, candidate_rows, pareto_png, summary_json, write_csv)

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


# ---------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``safecascade tune``."""
    from safecascade.training.datasets import benchmark_names

    g = parser.add_argument_group("objective")
    g.add_argument("--objective", nargs="+", default=["max-f1"], metavar=("NAME", "VALUE"),
                   help="max-f1 | min-cost | target-escalation SHARE (default max-f1)")
    g.add_argument("--max-escalation", type=float, default=None, help="max-f1: at most this share reaches the final tier")
    g.add_argument("--min-f1", type=float, default=None, help="min-cost: F1 at least this")
    g.add_argument("--tolerance", type=float, default=0.005, help="target-escalation: accepted |escalation - target| (0.005)")
    d = parser.add_argument_group("data and router")
    d.add_argument("--config", default=None, help="router YAML to tune (default: the embedded models/default.yaml)")
    d.add_argument("--benchmark", default="jailbreak", choices=benchmark_names(), help="labelled benchmark (jailbreak)")
    d.add_argument("--split", default="val", choices=["train", "val", "test"], help="split to tune on (val)")
    d.add_argument("--limit", type=int, default=None, help="a seeded stratified sample of N texts")
    d.add_argument("--replay", default=None, help="recorded final-tier verdicts (replay CSV; optional latency_ms column)")
    d.add_argument("--batch-size", type=int, default=32, help="texts per tier call while scoring (32)")
    d.add_argument("--no-cache", action="store_true", help="re-score instead of reading the score cache")
    a = parser.add_argument_group("final tier assumption and cost")
    a.add_argument("--assume-precision", type=float, default=SAFEGUARD_PRECISION, help="final tier precision where no verdict is recorded (0.634)")
    a.add_argument("--assume-recall", type=float, default=SAFEGUARD_RECALL, help="final tier recall where no verdict is recorded (0.684)")
    a.add_argument("--assume-prevalence", type=float, default=None, help="prevalence at which --assume-precision holds (default: the data's)")
    a.add_argument("--safeguard-ms", type=float, default=2500.0, help="final tier latency per call where none is recorded (2500)")
    a.add_argument("--price-per-second", type=float, default=None, help="price of one compute-second (all tiers)")
    a.add_argument("--price-per-1k-tokens", type=float, default=None, help="final tier price per 1,000 tokens")
    a.add_argument("--safeguard-tokens", type=float, default=700.0, help="final tier tokens per call (700)")
    s = parser.add_argument_group("search and outputs")
    s.add_argument("--seed", type=int, default=0, help="search seed (0)")
    s.add_argument("--max-candidates", type=int, default=3000, help="random candidates before refinement (3000)")
    s.add_argument("--grid", type=int, default=16, help="quantile levels per threshold grid (16, plus tails)")
    s.add_argument("--tune-final-threshold", action="store_true", help="also tune the final tier's threshold on recorded verdicts")
    s.add_argument("--out", default=None, help="tuned router YAML (default <cache>/tune/<config>/<benchmark>-<split>/router.yaml)")
    s.add_argument("--name", default=None, help="name of the tuned router (default <config>-tuned)")
    s.add_argument("--model-name", default="safecascade-router", help="registered model name (safecascade-router)")
    s.add_argument("--promote", action="store_true", help="set the registered version's alias 'champion'")
    s.add_argument("--no-register", action="store_true", help="do not register the tuned router")
    s.add_argument("--no-mlflow", action="store_true", help="no MLflow run (implies --no-register)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")


def objective_from_args(args: argparse.Namespace) -> Objective:
    """``--objective NAME [VALUE]`` plus the constraint flags -> :class:`Objective`."""
    name, *rest = args.objective
    if len(rest) > 1:
        raise ValueError(f"--objective takes a name and at most one value, got {args.objective}")
    value = None
    if rest:
        try:
            value = float(rest[0])
        except ValueError:
            raise ValueError(f"--objective {name}: value {rest[0]!r} is not a number") from None
    if name == "max-f1":
        return Objective(kind=name, max_escalation=args.max_escalation if value is None else value)
    if name == "min-cost":
        return Objective(kind=name, min_f1=args.min_f1 if value is None else value)
    return Objective(kind=name, target=value, tolerance=args.tolerance)


def _load_examples(args: argparse.Namespace) -> list[Any]:
    from safecascade.training.datasets import load_benchmark
    from safecascade.training.evaluate import stratified_sample

    examples = load_benchmark(args.benchmark, args.split)
    if args.limit is not None:
        examples = stratified_sample(examples, args.limit)
    return list(examples)


def _options(args: argparse.Namespace) -> TuneOptions:
    from safecascade.paths import artifact_dir

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    costs = CostModel(safeguard_ms=args.safeguard_ms, price_per_second=args.price_per_second,
                      price_per_1k_tokens=args.price_per_1k_tokens, safeguard_tokens=args.safeguard_tokens)
    return TuneOptions(objective=objective_from_args(args), seed=args.seed, max_candidates=args.max_candidates,
                       grid=args.grid, replay=args.replay, assume_precision=args.assume_precision,
                       assume_recall=args.assume_recall, assume_prevalence=args.assume_prevalence, costs=costs,
                       cache_dir=None if args.no_cache else artifact_dir("tune", "scores"), batch_size=args.batch_size,
                       progress=not args.no_progress, tune_final_threshold=args.tune_final_threshold)


def _fmt(m: dict[str, float], unit: str) -> str:
    r1 = m.get("recall_at_1pct_fpr", float("nan"))
    return (f"F1 {m['f1']:.4f}  P {m['precision']:.4f}  R {m['recall']:.4f}  escalation {m['escalation']:.4f}  "
            f"cost/1k {m['cost_per_1k']:.2f} {unit}  p50 {m['latency_p50_ms']:.1f} ms  p99 {m['latency_p99_ms']:.1f} ms"
            + ("" if np.isnan(r1) else f"  R@1%FPR {r1:.4f}"))


def print_summary(result: TuneResult, paths: dict[str, Path], info: dict[str, Any]) -> None:
    """The CLI's final summary: the chosen point, the Pareto front, outputs, MLflow run."""
    unit = result.model.costs.unit
    print(f"objective: {result.options.objective.describe()}  ({len(result.candidates)} candidates, "
          f"scoring {result.table.score_seconds:.1f} s, sweep {result.sweep_seconds:.1f} s)")
    print(f"chosen #{result.chosen} ({result.candidates.origin[result.chosen]}): {_fmt(result.chosen_metrics, unit)}")
    print(f"Pareto front ({len(result.front)} points, by cost):")
    for i in result.front:
        mark = "*" if i == result.chosen else " "
        print(f" {mark} #{int(i)}: {_fmt(result.point(int(i)), unit)}")
    for key, p in paths.items():
        print(f"{key}: {p}")
    if info:
        print(f"mlflow run: {info['run_id']} (experiment safecascade-tuning, artifacts {info['artifact_uri']})")
        if info.get("registered"):
            print(f"registered: {info['registered']}")


def run(args: argparse.Namespace) -> int:
    """Run ``safecascade tune``."""
    from safecascade.paths import artifact_dir
    from safecascade.router.config import load_config

    opts = _options(args)
    config = load_config(args.config)
    examples = _load_examples(args)
    result = tune(config, [e.text for e in examples], [e.label for e in examples], opts)
    safe = re.sub(r"[^\w.-]+", "_", config.name) or "router"
    yaml_path = Path(args.out) if args.out else artifact_dir("tune", safe, f"{args.benchmark}-{args.split}") / "router.yaml"
    paths = write_outputs(result, yaml_path.parent, yaml_path, name=args.name)
    info: dict[str, Any] = {}
    if not args.no_mlflow:
        from safecascade.training.tune_report import log_tuning_run

        view = {"benchmark": args.benchmark, "split": args.split, "limit": args.limit, "replay": args.replay}
        info = log_tuning_run(params=mlflow_params(result, view), metrics=result.chosen_metrics | {
            "score_seconds": result.table.score_seconds, "sweep_seconds": result.sweep_seconds,
            "n_candidates": len(result.candidates), "front_size": len(result.front)},
            artifacts=list(paths.values()), yaml_path=paths["yaml"], run_name=f"tune-{config.name}-{result.options.objective.kind}",
            tags={"safecascade.kind": "tuning", "safecascade.data_hash": result.table.data_hash},
            register=not args.no_register, promote=args.promote, model_name=args.model_name)
    print_summary(result, paths, info)
    return 0
