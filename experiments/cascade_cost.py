"""CPU cost of the default cascade per text, side by side in one run: the current default, the same
router with the obfuscation and length hardening switched off, and a baseline (the default router
and shipped models of an earlier commit).

    python -m experiments.cascade_cost [--baseline REV] [--passes 2] [--limit N]

Two streams of texts: **real user prompts** (every ToxicChat prompt of the jailbreak benchmark's test
split, toxic and jailbreak ones included: the traffic a deployment sees) and the jailbreak
benchmark's whole test split (long persona templates). Each router classifies each stream once per
pass, the routers alternating within a pass (these machines are noisy: compare within one run).
Prints CPU milliseconds per text (the best pass, as ``timeit`` does: another process on the machine
only ever adds time; every pass is listed too), the share of texts that reached the fast tier,
the blocks, and the ratio of each router's best pass to the baseline's.

``--baseline REV``: ``models/default.yaml`` and the shipped ``models/{fast,static}-default`` of git
revision REV (``git archive``; its ``models/multilingual-default`` too where it has one), the models
pointed at by path, with the hardening off (it came later; ``e7c42a0`` is the last commit before it
and before the three policies) unless ``--baseline-as-is``. The baseline runs with today's code, so
an option it leaves at its default gets today's default (the fast tier's ``threads``: 1 since
session 54, 2 before; ``--baseline-fast-threads 2`` runs it as it shipped).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from safecascade.router.cascade import Router
from safecascade.router.config import RouterConfig, load_config
from safecascade.training.datasets import load_benchmark


def with_options(config: RouterConfig, per_type: dict[str, dict[str, Any]], name: str) -> RouterConfig:
    """``config`` named ``name``, each tier's options updated with ``per_type[its type]``."""
    tiers = tuple(replace(t, options={**t.options, **per_type.get(t.type, {})}) for t in config.tiers)
    return replace(config, name=name, tiers=tiers)


def unhardened(config: RouterConfig) -> RouterConfig:
    """``config`` with the obfuscation readings, the line segments and the every-window static scan off."""
    off = {"static": {"deobfuscate": False, "max_windows": 8, "allow_max_windows": 0}, "fast": {"deobfuscate": False, "segments": 0}}
    return with_options(config, off, f"{config.name}-unhardened")


def baseline_config(rev: str, work: Path) -> RouterConfig:
    """The default router of git revision ``rev``, its shipped models extracted under ``work``."""
    root = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True).stdout.strip())
    paths = ["models/default.yaml", "models/fast-default", "models/static-default"]
    has_ml = subprocess.run(["git", "-C", str(root), "ls-tree", "-d", rev, "models/multilingual-default"],
                            capture_output=True, text=True, check=True).stdout.strip()
    paths += ["models/multilingual-default"] if has_ml else []  # the multilingual tier joined in session 52
    blob = subprocess.run(["git", "-C", str(root), "archive", rev, *paths], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(work, filter="data")
    cfg = load_config(work / "models" / "default.yaml")
    tiers = tuple(replace(t, options={**t.options, "model": str(work / "models" / f"{t.type}-default")})
                  if t.options.get("model") == "default" else t for t in cfg.tiers)
    return replace(cfg, name=f"baseline@{rev}", tiers=tiers)


def measure(cfg: RouterConfig, texts: list[str]) -> dict[str, Any]:
    """CPU ms per text, blocks and the share of texts that reached the fast tier."""
    router = Router.load(cfg)
    try:
        router.classify_batch(texts[:50])  # warm up
        t0 = time.process_time()
        ds = router.classify_batch(texts)
        ms = (time.process_time() - t0) * 1000 / len(texts)
    finally:
        router.close()
    return {"ms": ms, "blocked": sum(d.action == "block" for d in ds),
            "reached_fast": sum(any(t.tier == "fast" for t in d.path) for d in ds) / len(ds)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=None, help="git revision whose default router and shipped models are the baseline")
    ap.add_argument("--baseline-as-is", action="store_true",
                    help="run the baseline with its hardening options as configured (a revision that has them)")
    ap.add_argument("--baseline-fast-threads", type=int, default=None,
                    help="the baseline's fast tier intra-op threads (2: as it shipped before session 54)")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="at most N texts per stream (quick runs)")
    args = ap.parse_args(argv)
    test = load_benchmark("jailbreak", "test")
    streams = {"real user prompts": [e.text for e in test if e.source == "toxicchat"], "jailbreak test split": [e.text for e in test]}
    if args.limit:
        streams = {k: v[:args.limit] for k, v in streams.items()}
    base = load_config(None)
    with tempfile.TemporaryDirectory(prefix="cascade-cost-") as td:
        routers = {"default": base, "default, hardening off": unhardened(base)}
        if args.baseline:
            # the tiers' obfuscation and length hardening came after the baseline: off, as it ran then
            old = baseline_config(args.baseline, Path(td))
            label = f"baseline {args.baseline}"
            if args.baseline_fast_threads:
                label += f" (fast threads {args.baseline_fast_threads})"
                old = with_options(old, {"fast": {"threads": args.baseline_fast_threads}}, label)
            routers = {label: old if args.baseline_as_is else unhardened(old), **routers}
        cost: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for _ in range(args.passes):
            for stream, texts in streams.items():
                for name, cfg in routers.items():
                    cost.setdefault((stream, name), []).append(measure(cfg, texts))
    ref = next(iter(routers))
    print("| stream | texts | router | CPU ms / text, best pass (each pass) | vs " + ref + " | reached fast | blocked |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for stream, texts in streams.items():
        ref_ms = min(r["ms"] for r in cost[(stream, ref)])
        for name in routers:
            rs = cost[(stream, name)]
            ms = min(r["ms"] for r in rs)
            spread = " / ".join(f"{r['ms']:.1f}" for r in rs)
            print(f"| {stream} | {len(texts)} | {name} | {ms:.2f} ({spread}) | {ms / ref_ms:.2f}x | {rs[-1]['reached_fast']:.1%} | {rs[-1]['blocked']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
