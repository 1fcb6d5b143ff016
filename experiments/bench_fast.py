"""Speed and coverage of the fast (ONNX) and static (model2vec) tiers, side by side in one run.

    python experiments/bench_fast.py --fast DIR --static DIR [--n-speed 96] [--n-share 1500] [--threads 2]

1. Throughput on the same texts (a seeded sample of the jailbreak benchmark's test split):
   ONNX fast tier vs the same model through sentence-transformers/torch (same token windows,
   same head) at batch 1 and 32, and the int8 graph when the model offers one; static tier vs ONNX
   fast tier.
2. Mean tier cost per prompt on the benchmark mix (ms, windows, tokens).
3. Share of the test split the static tier can decide alone at the fast tier's precision (block
   side) and negative predictive value (allow side), with those bands tuned on the same sample.
Prints a Markdown table and writes JSON next to it with --out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np


def _throughput(fn, texts: list[str], batch: int, min_seconds: float = 2.0) -> float:
    """Texts per second over whole passes on ``texts``, repeated until ``min_seconds`` have passed
    (one pass of the static tier takes milliseconds: a single pass is mostly timer noise)."""
    done, t0 = 0, time.perf_counter()
    while True:
        for s in range(0, len(texts), batch):
            fn(texts[s : s + batch])
        done += len(texts)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return done / elapsed


def _band_share(labels: np.ndarray, s: np.ndarray, precision: float, npv: float) -> dict[str, float]:
    """Widest static band whose block side keeps ``precision`` and allow side keeps ``npv``."""
    order = np.unique(s)
    hi = next((t for t in order if (s >= t).any() and labels[s >= t].mean() >= precision and
               all(labels[s >= u].mean() >= precision for u in order[order > t])), None)
    lo = None
    for t in order:
        m = s <= t
        if (1 - labels[m]).mean() >= npv:
            lo = t
        else:
            break
    block = (s >= hi) if hi is not None else np.zeros_like(s, bool)
    allow = (s <= lo) if lo is not None else np.zeros_like(s, bool)
    allow &= ~block
    return {"block_above": None if hi is None else float(hi), "allow_below": None if lo is None else float(lo),
            "decided_share": float((block | allow).mean()), "block_share": float(block.mean()), "allow_share": float(allow.mean())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", required=True)
    ap.add_argument("--static", required=True)
    ap.add_argument("--n-speed", type=int, default=96)
    ap.add_argument("--n-share", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from safecascade.tiers.fast import FastTier
    from safecascade.tiers.lexical import features
    from safecascade.tiers.static import StaticTier
    from safecascade.training.datasets import load_benchmark

    test = load_benchmark("jailbreak", "test")
    rng = random.Random(0)
    speed_texts = [e.text for e in rng.sample(test, args.n_speed)]
    fast = FastTier(model_dir=args.fast, threads=args.threads)
    static = StaticTier(model_dir=args.static)
    res: dict = {"n_speed": len(speed_texts), "threads": args.threads}

    # torch reference: same windows, same head weights, sentence-transformers forward
    import torch

    torch.set_num_threads(args.threads)
    from safecascade.training.export_onnx import torch_embed_windows
    from safecascade.training.encoder import load_st
    from safecascade.training.train_metrics import score_metrics

    # a fine-tuned encoder's directory is recorded in the card (encoder.path)
    st = load_st(fast.card.get("encoder", {}).get("path") or fast.card["config"].get("encoder", "default"))
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(Path(args.fast) / "model.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer if i.name.startswith("head0_")}

    def torch_pipeline(batch: list[str]) -> list[float]:
        wins = fast.windower.windows(batch)
        flat = [w for ws in wins for w in ws.ids]
        e = torch_embed_windows(st, flat, batch_size=32)
        h = e
        k = 0
        while f"head0_W{k}" in inits:
            h = h @ inits[f"head0_W{k}"] + inits[f"head0_b{k}"]
            if f"head0_W{k + 1}" in inits:
                h = np.maximum(h, 0)
            k += 1
        if fast.lexical is not None:  # the same lexical block the served tier stacks (numpy in both)
            for ws, t in zip(wins, batch):
                fast.lexical.logits(*features(ws.content, t, fast.lexical.config)[:2])
        return h[:, 0].tolist()

    fast8 = FastTier(model_dir=args.fast, threads=args.threads, quantized="auto")  # int8 when the card offers it
    fast.classify(speed_texts[:4]); torch_pipeline(speed_texts[:4]); static.classify(speed_texts[:4]); fast8.classify(speed_texts[:4])  # warm-up
    for b in (1, 32):
        onnx_tp = _throughput(fast.classify, speed_texts, b)
        torch_tp = _throughput(torch_pipeline, speed_texts, b)
        res[f"batch{b}"] = {"onnx_texts_per_s": onnx_tp, "torch_texts_per_s": torch_tp, "speedup": onnx_tp / torch_tp}
        if fast8.quantized:
            res[f"batch{b}"]["int8_texts_per_s"] = _throughput(fast8.classify, speed_texts, b)
    static_tp = _throughput(static.classify, speed_texts, 32)
    res["static_texts_per_s"] = static_tp
    res["static_vs_fast_speedup"] = static_tp / res["batch32"]["onnx_texts_per_s"]
    if fast8.quantized:
        res["static_vs_int8_speedup"] = static_tp / res["batch32"]["int8_texts_per_s"]
    # tokenizers' own thread pool, on and off: on few cores its idle workers can spin against the
    # threaded work that follows each batch (an operator's setting; the variable is read at each
    # call, so it is set here only around this one measurement)
    prev = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        res["static_texts_per_s_tokenizers_sequential"] = _throughput(static.classify, speed_texts, 32)
    finally:
        if prev is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = prev

    # cost per prompt + static coverage on a stratified test sample
    share = test if args.n_share >= len(test) else rng.sample(test, args.n_share)
    texts = [e.text for e in share]
    y = np.array([e.label for e in share])
    t0 = time.perf_counter()
    fr = fast.classify(texts)
    fast_ms = (time.perf_counter() - t0) * 1000 / len(texts)
    t0 = time.perf_counter()
    sr = static.classify(texts)
    static_ms = (time.perf_counter() - t0) * 1000 / len(texts)
    fs = np.array([r.scores["jailbreak"] for r in fr])
    ss = np.array([r.scores["jailbreak"] for r in sr])
    lex_ms = None
    if fast.lexical is not None:  # the lexical block's share of the fast tier's cost
        wins = fast.windower.windows(texts)
        t0 = time.perf_counter()
        for ws, t in zip(wins, texts):
            fast.lexical.logits(*features(ws.content, t, fast.lexical.config)[:2])
        lex_ms = (time.perf_counter() - t0) * 1000 / len(texts)
    int8_ms = None
    if fast8.quantized:
        t0 = time.perf_counter()
        f8 = np.array([r.scores["jailbreak"] for r in fast8.classify(texts)])
        int8_ms = (time.perf_counter() - t0) * 1000 / len(texts)
        res["int8_metrics"] = {k: v for k, v in score_metrics(y.tolist(), f8.tolist()).items()
                               if k in ("precision", "recall", "f1", "recall_at_1pct_fpr")}
    res["cost_per_prompt"] = {"fast_int8_ms": int8_ms,
        "fast_ms": fast_ms, "static_ms": static_ms, "fast_lexical_block_ms": lex_ms,
        "fast_windows": float(np.mean([r.info["n_windows"] for r in fr])),
        "tokens": float(np.mean([r.info["tokens"] for r in fr])),
        "truncated_share": float(np.mean([r.info["truncated"] for r in fr])),
    }

    fm = score_metrics(y.tolist(), fs.tolist())
    sm = score_metrics(y.tolist(), ss.tolist())
    pred = fs >= 0.5
    fast_prec = float(y[pred].mean()) if pred.any() else 1.0
    fast_npv = float((1 - y[~pred]).mean()) if (~pred).any() else 1.0
    res["n_share"] = len(texts)
    res["fast_metrics"] = {k: fm[k] for k in ("precision", "recall", "f1", "recall_at_1pct_fpr")}
    res["static_metrics"] = {k: sm[k] for k in ("precision", "recall", "f1", "recall_at_1pct_fpr")}
    res["static_alone"] = {"fast_precision": fast_prec, "fast_npv": fast_npv, **_band_share(y, ss, fast_prec, fast_npv)}

    b1, b32 = res["batch1"], res["batch32"]
    print(f"| measure | value |\n|---|---|\n"
          f"| fast ONNX batch 1 (texts/s) | {b1['onnx_texts_per_s']:.1f} |\n| same model, torch batch 1 | {b1['torch_texts_per_s']:.1f} (ONNX x{b1['speedup']:.2f}) |\n"
          f"| fast ONNX batch 32 (texts/s) | {b32['onnx_texts_per_s']:.1f} |\n| same model, torch batch 32 | {b32['torch_texts_per_s']:.1f} (ONNX x{b32['speedup']:.2f}) |\n"
          + "".join(f"| fast ONNX int8 batch {b} (texts/s) | {res[f'batch{b}']['int8_texts_per_s']:.1f} (x{res[f'batch{b}']['int8_texts_per_s'] / res[f'batch{b}']['onnx_texts_per_s']:.2f} vs fp32) |\n"
                    for b in (1, 32) if "int8_texts_per_s" in res[f"batch{b}"]) +
          f"| static batch 32 (texts/s) | {static_tp:.0f} (x{res['static_vs_fast_speedup']:.0f} vs ONNX fast"
          + (f", x{res['static_vs_int8_speedup']:.0f} vs int8" if "static_vs_int8_speedup" in res else "") + ") |\n"
          f"| static batch 32, TOKENIZERS_PARALLELISM=false (texts/s) | {res['static_texts_per_s_tokenizers_sequential']:.0f} |\n"
          f"| cost/prompt fast, static (ms) | {fast_ms:.2f}, {static_ms:.3f} |\n"
          f"| of which the fast tier's lexical block (ms) | {'-' if lex_ms is None else f'{lex_ms:.2f}'} |\n"
          f"| windows/prompt, tokens/prompt, truncated | {res['cost_per_prompt']['fast_windows']:.2f}, {res['cost_per_prompt']['tokens']:.0f}, {res['cost_per_prompt']['truncated_share']:.3f} |\n"
          + (f"| cost/prompt fast int8 (ms) | {int8_ms:.2f} (x{int8_ms / static_ms:.0f} the static tier's) |\n| fast int8 P/R/F1/R@1%FPR | " + "/".join(f"{res['int8_metrics'][k]:.3f}" for k in ("precision", "recall", "f1", "recall_at_1pct_fpr")) + " |\n"
             if int8_ms is not None else "") +
          f"| fast P/R/F1/R@1%FPR (n={len(texts)}) | {fm['precision']:.3f}/{fm['recall']:.3f}/{fm['f1']:.3f}/{fm['recall_at_1pct_fpr']:.3f} |\n"
          f"| static P/R/F1/R@1%FPR | {sm['precision']:.3f}/{sm['recall']:.3f}/{sm['f1']:.3f}/{sm['recall_at_1pct_fpr']:.3f} |\n"
          f"| static decides alone at fast precision/NPV | {res['static_alone']['decided_share']:.3f} (allow {res['static_alone']['allow_share']:.3f}, block {res['static_alone']['block_share']:.3f}) |")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
