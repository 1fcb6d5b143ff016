"""``safecascade demo``: build any missing default artifact, then evaluate the default cascade.

This is the main job of ``make demo``: it builds the default static and fast tiers from the
bundled benchmark (first run only, with progress bars; reused afterwards from the cache dir),
assembles the stand-in GGUF for the safeguard tier, runs the cascade over the benchmark split and
prints the results table (also written as JSON + Markdown).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="router YAML (default: the embedded default)")
    parser.add_argument("--benchmark", default="jailbreak", help="benchmark name (default: jailbreak)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--limit", type=int, default=1000,
                        help="evaluate a seeded stratified sample of this many texts (0 = the whole split); "
                             "the stand-in safeguard tier makes the full split slow on 2 cores")
    parser.add_argument("--out", default=None, help="directory for report.json / report.md")


def _uses_default_models(config) -> bool:
    return any(t.type in ("fast", "static") and t.options.get("model", "default") == "default" for t in config.tiers)


def run(args: argparse.Namespace) -> int:
    from safecascade.paths import artifact_dir
    from safecascade.router.cascade import Router
    from safecascade.router.config import load_config
    from safecascade.training.datasets import benchmark_policy, load_benchmark
    from safecascade.training.evaluate import evaluate_router, stratified_sample

    config = load_config(args.config)
    t0 = time.perf_counter()
    if _uses_default_models(config):
        from safecascade.training.fast_train import ensure_default_models

        paths = ensure_default_models(progress=True)
        log.info("default models ready in %.0f s: %s", time.perf_counter() - t0, {k: str(v) for k, v in paths.items()})
    router = Router.load(config)
    try:
        examples = load_benchmark(args.benchmark, args.split)
        if args.limit and args.limit < len(examples):
            examples = stratified_sample(examples, args.limit, seed=0)
        report = evaluate_router(router, examples, policy=benchmark_policy(args.benchmark), progress=True,
                                 name=f"{config.name} on {args.benchmark}/{args.split}")
    finally:
        router.close()
    out = Path(args.out) if args.out else artifact_dir("eval", f"demo-{args.benchmark}-{args.split}")
    report.write(out)
    print(report.to_markdown())
    print(f"\nreport written to {out}")
    return 0
