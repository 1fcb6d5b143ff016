"""CPU cost of the obfuscation and length hardening, side by side in one run.

    python -m experiments.hardening_cost [--passes 2]

Runs the embedded default router and the same router with the hardening switched off (static and
fast ``deobfuscate: false``, fast ``segments: 0``, static ``max_windows: 8``) over the jailbreak
benchmark's test split, alternating, and prints the CPU milliseconds per text of each pass, the
blocks, and the ratio of the means (these machines are noisy: compare within one run).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from safecascade.router.cascade import Router
from safecascade.router.config import load_config
from safecascade.training.datasets import load_benchmark


def unhardened(config):  # type: ignore[no-untyped-def]
    """``config`` with the obfuscation readings, the line segments and the every-window static scan off."""
    off = {"static": {"deobfuscate": False, "max_windows": 8}, "fast": {"deobfuscate": False, "segments": 0}}
    tiers = tuple(replace(t, options={**t.options, **off.get(t.type, {})}) for t in config.tiers)
    return replace(config, name=f"{config.name}-unhardened", tiers=tiers)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=2)
    args = ap.parse_args(argv)
    texts = [e.text for e in load_benchmark("jailbreak", "test")]
    base = load_config(None)
    cost: dict[str, list[float]] = {"unhardened": [], "default": []}
    for _ in range(args.passes):
        for name, cfg in (("unhardened", unhardened(base)), ("default", base)):
            router = Router.load(cfg)
            router.classify_batch(texts[:50])  # warm up
            t0 = time.process_time()
            ds = router.classify_batch(texts)
            ms = (time.process_time() - t0) * 1000 / len(texts)
            router.close()
            cost[name].append(ms)
            print(f"{name}: {ms:.2f} CPU ms / text, {sum(d.action == 'block' for d in ds)} blocked of {len(texts)}")
    ratio = (sum(cost["default"]) / len(cost["default"])) / (sum(cost["unhardened"]) / len(cost["unhardened"]))
    print(f"ratio default / unhardened: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
