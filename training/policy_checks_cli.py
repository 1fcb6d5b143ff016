"""``safecascade policy-test``: the command line of the policy checks
(:mod:`safecascade.training.policy_checks`): A/B a policy edit, ablate rules, sweep length, and
exit 1 on a significant regression against a stored result."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from safecascade.paths import artifact_dir
from safecascade.router.policy import Policy, builtin_policies
from safecascade.training.datasets import load_benchmark
from safecascade.training.evaluate import stratified_sample
from safecascade.training.policy_checks import judge_scorer, load_labelled, report_markdown, run_suite
from safecascade.training.safeguard_cache import (
    SafeguardJudge,
    add_backend_arguments,
    backend_options_from_args,
    tier_options_from_args,
)


def load_policy(spec: str, name: str | None = None) -> Policy:
    """A shipped policy by name (jailbreak, harmful_content, pii) or a Markdown policy file."""
    shipped = builtin_policies()
    if spec in shipped:
        return Policy.from_file(name or spec, shipped[spec])
    p = Path(spec)
    return Policy.from_file(name or p.stem, p)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``safecascade policy-test``."""
    parser.add_argument("--policy", required=True, help="policy: a shipped name (jailbreak, harmful_content, pii) or a Markdown file")
    parser.add_argument("--against", default=None, help="A/B: a second policy file (B) scored on the same examples")
    parser.add_argument("--ablate", action="store_true", help="drop each rule in turn and measure the change")
    parser.add_argument("--lengths", default="", help="length sweep: comma-separated fractions of the policy's tokens, e.g. 0.5,0.75,1.5")
    parser.add_argument("--benchmark", default="jailbreak", help="labelled set from load_benchmark (default jailbreak)")
    parser.add_argument("--split", default="val", help="benchmark split (default val; the length sweep's pool is train)")
    parser.add_argument("--data", default=None, help="labelled CSV/JSONL (text,label[,id]) instead of a benchmark")
    parser.add_argument("--n", type=int, default=40, help="stratified sample size (0 = all)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level")
    parser.add_argument("--save", default=None, help="write this run's result JSON (a future --baseline)")
    parser.add_argument("--baseline", default=None, help="stored result JSON: exit 1 on a significant regression")
    parser.add_argument("--cache", default=None, help="SQLite cache of safeguard outputs (default: in SAFECASCADE_HOME)")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON instead of Markdown")
    add_backend_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``policy-test``: 0 = done, 1 = regression against --baseline, 2 = bad input."""
    try:
        policy = load_policy(args.policy)
        other = load_policy(args.against, name=policy.name) if args.against else None
        fractions = [float(x) for x in args.lengths.split(",") if x.strip()] if args.lengths else []
        examples, pool = _examples(args)
        baseline = json.loads(Path(args.baseline).read_text(encoding="utf-8")) if args.baseline else None
    except (ValueError, OSError) as exc:
        print(f"policy-test: {exc}", file=sys.stderr)
        return 2
    cache = Path(args.cache) if args.cache else artifact_dir("policy-test") / "safeguard-cache.sqlite"
    with SafeguardJudge(backend_options=backend_options_from_args(args), cache_path=cache,
                        tier_options=tier_options_from_args(args)) as judge:
        try:
            report = run_suite(policy, examples, judge_scorer(judge), against=other, ablate=args.ablate, fractions=fractions,
                               pool=pool, alpha=args.alpha, count_tokens=judge.backend.count_tokens, baseline=baseline)
        except ValueError as exc:  # e.g. a baseline without shared example ids, a cut that leaves no rule
            print(f"policy-test: {exc}", file=sys.stderr)
            return 2
        report["model"] = judge.fingerprint()
    if args.save:
        Path(args.save).write_text(json.dumps(report["reference"], indent=2), encoding="utf-8")
    print(json.dumps(report, indent=2) if args.json else report_markdown(report))
    return 1 if report.get("regression", {}).get("regressed") else 0


def _examples(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    if args.data:
        exs: list[Any] = load_labelled(args.data)
        pool: list[Any] = []
    else:
        exs = load_benchmark(args.benchmark, args.split)
        pool = stratified_sample(load_benchmark(args.benchmark, "train"), 60, seed="policy-test-pool") \
            if args.split != "train" else []
    if args.n and args.n < len(exs):
        exs = stratified_sample(exs, args.n, seed="policy-test")
    return exs, pool
