"""``safecascade tune``: the command line of a tuning job (:mod:`safecascade.training.tuning.job`).

::

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
import re
from pathlib import Path
from typing import Any

import numpy as np

from safecascade.paths import artifact_dir
from safecascade.router.config import load_config
from safecascade.training.datasets import benchmark_names, load_benchmark
from safecascade.training.evaluate import stratified_sample
from safecascade.training.tuning.cost import SAFEGUARD_PRECISION, SAFEGUARD_RECALL, CostModel
from safecascade.training.tuning.job import TuneOptions, TuneResult, mlflow_params, tune, write_outputs
from safecascade.training.tuning.report import log_tuning_run
from safecascade.training.tuning.sweep import Objective


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``safecascade tune``."""
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
    examples = load_benchmark(args.benchmark, args.split)
    if args.limit is not None:
        examples = stratified_sample(examples, args.limit)
    return list(examples)


def _options(args: argparse.Namespace) -> TuneOptions:
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
    opts = _options(args)
    config = load_config(args.config)
    examples = _load_examples(args)
    result = tune(config, [e.text for e in examples], [e.label for e in examples], opts)
    safe = re.sub(r"[^\w.-]+", "_", config.name) or "router"
    yaml_path = Path(args.out) if args.out else artifact_dir("tune", safe, f"{args.benchmark}-{args.split}") / "router.yaml"
    paths = write_outputs(result, yaml_path.parent, yaml_path, name=args.name)
    info: dict[str, Any] = {}
    if not args.no_mlflow:
        view = {"benchmark": args.benchmark, "split": args.split, "limit": args.limit, "replay": args.replay}
        info = log_tuning_run(params=mlflow_params(result, view), metrics=result.chosen_metrics | {
            "score_seconds": result.table.score_seconds, "sweep_seconds": result.sweep_seconds,
            "n_candidates": len(result.candidates), "front_size": len(result.front)},
            artifacts=list(paths.values()), yaml_path=paths["yaml"], run_name=f"tune-{config.name}-{result.options.objective.kind}",
            tags={"safecascade.kind": "tuning", "safecascade.data_hash": result.table.data_hash},
            register=not args.no_register, promote=args.promote, model_name=args.model_name)
    print_summary(result, paths, info)
    return 0
