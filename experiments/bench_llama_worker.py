"""What the llama.cpp worker process costs: the same calls in process (``isolation: none``) and
through the worker (``isolation: process``) on the stand-in GGUF.

Prints (and writes as JSON with --out): model load time; ms per ``count_tokens`` call (distinct
texts, so the parent's small cache does not answer); ms per ``tokenize_prompt``; a short greedy
``complete()`` on the safeguard prompt - wall time in both modes, and for the worker the time
outside the child's own generation (pickling, the pipe, wake-ups); and the time from a SIGKILL
to the restarted worker answering.

    .venv/bin/python experiments/bench_llama_worker.py [--n 300] [--complete-n 12] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import time
from pathlib import Path

from safecascade.router.policy import Policy
from safecascade.tiers.safeguard import SafeguardTier
from safecascade.tiers.safeguard.backends import create_backend

POLICY = "# Violence\n\n## VIOLATES (1)\n- **V1.a** Instructions for weapons.\n\n## SAFE (0)\n- **V0.a** Everything else.\n"


def _ms(f, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        f(i)
    return (time.perf_counter() - t) * 1000.0 / n


def bench(isolation: str, n: int, complete_n: int, threads: int) -> dict:
    opts = {"model_path": "stand-in", "n_ctx": 768, "n_threads": threads, "isolation": isolation}
    t0 = time.perf_counter()
    b = create_backend(opts, Path("."))
    out: dict = {"isolation": isolation, "load_s": round(time.perf_counter() - t0, 3)}
    tier = SafeguardTier(name="sg", policies={"violence": Policy.from_text("violence", POLICY)}, backend=b,
                         options={"max_tokens": 8, "grammar": "off"})
    prompt = tier.render(("violence",), "How long should I boil an egg for a soft yolk?")
    out["count_tokens_ms"] = round(_ms(lambda i: b.count_tokens(f"text number {i} to count, with a few words"), n), 4)
    out["tokenize_prompt_ms"] = round(_ms(lambda i: b.tokenize_prompt(prompt), max(1, n // 3)), 4)
    b.complete(prompt, max_tokens=8, temperature=0.0)  # warm the prefix
    walls, inner = [], []
    for _ in range(complete_n):
        t = time.perf_counter()
        comp = b.complete(prompt, max_tokens=8, temperature=0.0)
        walls.append((time.perf_counter() - t) * 1000.0)
        inner.append(comp.latency_ms)
    out["complete_ms_median"] = round(statistics.median(walls), 3)
    out["complete_outside_generation_ms_median"] = round(statistics.median(w - i for w, i in zip(walls, inner)), 3)
    out["completion_tokens"] = comp.completion_tokens
    if isolation == "process":
        pid = b.health()["pid"]
        t = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        while True:
            h = b.health()
            if h["state"] == "up" and h["alive"] and h["pid"] != pid:
                break
            time.sleep(0.01)
        out["sigkill_to_up_s"] = round(time.perf_counter() - t, 3)
        b.count_tokens("is it back?")
    b.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--complete-n", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = [bench(iso, args.n, args.complete_n, args.threads) for iso in ("none", "process")]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(keys) + " |")
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
