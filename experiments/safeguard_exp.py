"""Shared pieces of the safeguard-side experiments (reasoning effort, policy testing, multi-policy,
hallucination, instruction hierarchy): the model flags, the cached judge and the text samples.

Every safeguard output is cached (``experiments/results/_work/safeguard/cache.sqlite``, keyed by
model fingerprint + exact rendered prompt + decoding options; see
:mod:`safecascade.training.safeguard_cache`), so reruns only re-render and read.
"""

from __future__ import annotations

import argparse
from typing import Any

from experiments.common import work_dir

STAND_IN_NOTE = (
    "**Caveat.** Unless the parameters above name another model, these figures come from the stand-in GGUF "
    "(gemma-3 270m, Q4_K_M) - a tiny general model with no safety training, prompted through its own chat "
    "template with a JSON grammar. They measure the harness (prompting, parsing, caching, statistics), "
    "**not gpt-oss-safeguard**. Rerun with `--model-path <gpt-oss-safeguard GGUF>` or `--base-url ... --model ...` "
    "to measure the real model the same way."
)


def parser(description: str, *, n_default: int, n_quick: int) -> argparse.ArgumentParser:
    from safecascade.training.safeguard_cache import add_backend_arguments

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {n_quick} texts instead of {n_default}")
    ap.add_argument("--n", type=int, default=None, help=f"texts per labelled set (default {n_default})")
    ap.add_argument("--max-chars", type=int, default=2000,
                    help="only sample texts up to this many characters (0 = no limit; keeps stand-in runs short)")
    ap.add_argument("--cache", default=None, help="SQLite cache of safeguard outputs (default: results/_work/safeguard)")
    add_backend_arguments(ap)
    ap.set_defaults(_n_default=n_default, _n_quick=n_quick)
    return ap


def n_texts(args: argparse.Namespace) -> int:
    if args.n:
        return int(args.n)
    return int(args._n_quick if args.quick else args._n_default)


def judge(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from safecascade.training.safeguard_cache import SafeguardJudge, backend_options_from_args, tier_options_from_args

    cache = Path(args.cache) if args.cache else work_dir("safeguard") / "cache.sqlite"
    return SafeguardJudge(backend_options=backend_options_from_args(args), cache_path=cache,
                          tier_options=tier_options_from_args(args))


def model_label(args: argparse.Namespace) -> str:
    if args.base_url:
        return f"{args.model or '(default)'} at {args.base_url} ({args.endpoint})"
    return "stand-in (gemma-3 270m Q4_K_M)" if args.model_path == "stand-in" else args.model_path


def sample(benchmark: str, split: str, n: int, *, max_chars: int = 0, seed: str = "safeguard-exp") -> list[Any]:
    """A seeded, label-stratified sample of a benchmark split (texts up to ``max_chars``)."""
    from safecascade.training.datasets import load_benchmark
    from safecascade.training.evaluate import stratified_sample

    exs = load_benchmark(benchmark, split)
    if max_chars:
        exs = [e for e in exs if len(e.text) <= max_chars]
    return stratified_sample(exs, n, seed=seed)


def balanced_sample(benchmark: str, split: str, n: int, *, max_chars: int = 0, seed: str = "safeguard-exp") -> list[Any]:
    """``n`` texts, half label 1 and half label 0 (seeded; texts up to ``max_chars``)."""
    import hashlib

    from safecascade.training.datasets import load_benchmark

    exs = load_benchmark(benchmark, split)
    if max_chars:
        exs = [e for e in exs if len(e.text) <= max_chars]
    key = lambda e: hashlib.sha256(f"{seed}|{e.id}".encode()).hexdigest()  # noqa: E731
    pos = sorted((e for e in exs if e.label == 1), key=key)[: (n + 1) // 2]
    neg = sorted((e for e in exs if e.label == 0), key=key)[: n - len(pos)]
    return sorted(pos + neg, key=key)

BUDGET_NOTE = (
    "**Run time.** The five safeguard experiments (reasoning effort, policy testing, multi-policy, hallucination, "
    "instruction hierarchy) make about 310 distinct model calls cold at their default sizes: ~15-20 min on 2 idle "
    "cores at the stand-in's ~3 s a call (one llama.cpp thread per process; `--threads`), about an hour on the "
    "shared, oversubscribed machine these pages were produced on (8-18 s a call, 50-60 s for a three-policy joint "
    "call). Every output is cached, so a rerun takes seconds per experiment."
)
