"""Benchmark the safeguard tier on the stand-in GGUF (or any GGUF / endpoint via --model-path).

Measures, and prints as a table (also written as JSON with --out):

1. latency per call with the policy prefix's KV state reused vs a cold context each call
   (``prefix_reuse: false`` resets llama.cpp before every call);
2. the manipulation-set flip rate: for each item of ``models/manipulation_set.yaml`` the verdict
   on the base content vs the same content with the attack (a flip = different violation
   label; the mean absolute probability shift is reported too);
3. the malformed / error rate over all calls.

Caveat: the stand-in (gemma-3 270m) is not gpt-oss-safeguard; its verdicts are near chance,
so the figures measure the code path and the neutralisation, not the real model's robustness.

    .venv/bin/python experiments/bench_safeguard.py [--limit 12] [--latency-n 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from importlib import resources
from pathlib import Path

import yaml
from tqdm import tqdm

from safecascade.router.policy import Policy, builtin_policies
from safecascade.tiers.safeguard import SafeguardTier
from safecascade.tiers.safeguard.llama_backend import LlamaCppBackend
from safecascade.tiers.safeguard.stand_in import stand_in_path

LATENCY_TEXTS = [
    "How long should I boil an egg for a soft yolk?",
    "Write a short story about a dragon who learns to read.",
    "What are the side effects of ibuprofen?",
    "Explain how vaccines train the immune system.",
    "Give me tips to improve my sleep.",
    "How do I fix a leaking kitchen tap?",
    "Summarise the causes of the First World War.",
    "What's a polite way to decline a meeting?",
]


def _load_set(path: Path | None) -> dict:
    if path is None:
        path = Path(str(resources.files("safecascade.models").joinpath("manipulation_set.yaml")))
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def run(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", default="stand-in")
    ap.add_argument("--set", type=Path, default=None, help="manipulation set YAML (default: the shipped one)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N manipulation items")
    ap.add_argument("--latency-n", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=1536)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--effort", default="low")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    mset = _load_set(args.set)
    pol_name = mset.get("policy", "harmful_content")
    policy = Policy.from_file(pol_name, builtin_policies()[pol_name])
    path = stand_in_path() if args.model_path == "stand-in" else Path(args.model_path)
    opts = {"n_ctx": args.n_ctx, "max_tokens": args.max_tokens, "reasoning_effort": args.effort}
    results: dict = {"model": path.name, "policy": pol_name, "threads": args.threads}

    # 1. latency with and without prefix reuse
    lat: dict[str, list[float]] = {}
    for reuse in (True, False):
        backend = LlamaCppBackend(model_path=path, n_ctx=args.n_ctx, n_threads=args.threads, prefix_reuse=reuse)
        tier = SafeguardTier(name="safeguard", policies={pol_name: policy}, backend=backend, options=opts)
        tier.classify([LATENCY_TEXTS[-1]])  # warm-up (and, with reuse, the prefix)
        key = "prefix_reuse" if reuse else "cold"
        lat[key] = []
        cached = []
        for text in tqdm(LATENCY_TEXTS[: args.latency_n], desc=f"latency {key}"):
            t0 = time.perf_counter()
            r = tier.classify([text])[0]
            lat[key].append((time.perf_counter() - t0) * 1000.0)
            cached.append(r.cost.get("cached_tokens", 0))
            tqdm.write(f"{key}: {lat[key][-1]:.0f} ms, prompt {r.cost.get('prompt_tokens')} tokens, "
                       f"cached {cached[-1]}, error {r.error}")
        results[f"latency_ms_{key}"] = {"median": round(statistics.median(lat[key]), 1),
                                        "mean": round(statistics.fmean(lat[key]), 1),
                                        "all": [round(x, 1) for x in lat[key]],
                                        "mean_cached_prompt_tokens": round(statistics.fmean(cached), 1)}
        if not reuse:
            tier.close()
        else:
            reuse_tier = tier

    # 2. flip rate on the manipulation set (prefix reuse on)
    tier = reuse_tier
    items = mset["items"][: args.limit or None]
    rows = []
    for item in tqdm(items, desc="manipulation set"):
        base, attack = tier.classify([item["base"], item["attack"]])
        row = {"id": item["id"], "kind": item["kind"], "base_error": base.error, "attack_error": attack.error}
        if base.error is None and attack.error is None:
            vb = base.info["verdicts"][pol_name]["violation"]
            va = attack.info["verdicts"][pol_name]["violation"]
            row.update(base_violation=vb, attack_violation=va, flipped=vb != va,
                       base_p=round(base.scores[pol_name], 4), attack_p=round(attack.scores[pol_name], 4),
                       neutralised="content_neutralised" in attack.warnings)
        rows.append(row)
        tqdm.write(json.dumps(row))
    judged = [r for r in rows if "flipped" in r]
    results["manipulation"] = rows
    results["flip_rate"] = round(sum(r["flipped"] for r in judged) / len(judged), 3) if judged else None
    results["mean_abs_p_shift"] = round(statistics.fmean(abs(r["base_p"] - r["attack_p"]) for r in judged), 4) if judged else None
    by_kind: dict[str, list[bool]] = {}
    for r in judged:
        by_kind.setdefault(r["kind"], []).append(r["flipped"])
    results["flip_rate_by_kind"] = {k: round(sum(v) / len(v), 3) for k, v in by_kind.items()}
    st = tier.stats
    results["stats"] = dict(st)
    results["malformed_rate"] = round(st["malformed"] / max(1, st["calls"]), 3)
    results["error_rate"] = round(st["errors"] / max(1, st["texts"]), 3)
    tier.close()

    print(f"model {results['model']}  policy {pol_name}  threads {args.threads}")
    for key in ("prefix_reuse", "cold"):
        v = results[f"latency_ms_{key}"]
        print(f"latency/call {key:13s} median {v['median']:8.1f} ms  mean {v['mean']:8.1f} ms  cached prompt tokens {v['mean_cached_prompt_tokens']}")
    print(f"flip rate {results['flip_rate']} over {len(judged)}/{len(rows)} judged pairs; by kind {results['flip_rate_by_kind']}")
    print(f"mean |p(base) - p(attack)| {results['mean_abs_p_shift']}")
    print(f"malformed rate {results['malformed_rate']} per call; error rate {results['error_rate']} per text; stats {results['stats']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    run()
