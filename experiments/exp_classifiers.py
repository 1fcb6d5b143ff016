"""Experiment 7: dedicated classifier comparison on the jailbreak benchmark's date-split test.

Rows: TF-IDF word+char logistic regression (``training/baseline.py``), frozen MiniLM + logistic
regression (window embeddings, max over windows, Platt/isotonic on val), the ``static`` tier
(model2vec distilled from MiniLM + MLP head, numpy), the ``fast`` tier (frozen MiniLM ONNX +
the default training config's head), and the safeguard tier.

How each number is obtained:

* Quality: every model is trained on the train split (the fast tier's default config also refits
  on train+val when the config says so; see the card), thresholds / calibration chosen on val, and
  scored once on the test split: precision / recall / F1 at probability 0.5, F1 at the val-best
  threshold, recall at 1% FPR. MiniLM rows reuse the embedding cache (``training/embed.py``) and
  score through the heads' float64 reference, which equals the served ONNX graph within 1e-4.
* Training time: wall seconds of the fit on this machine (2 shared cores); for the MiniLM rows the
  one-off embedding of train+val is reported separately (measured windows/s x windows).
* Latency: ms per text on the same seeded 192-text sample of the test split, batch 32, 2 threads,
  through the real served objects (sklearn pipeline, ``StaticTier``, ``FastTier``).
* Safeguard: **not run here** (gpt-oss-safeguard weights are not available on this machine). Its
  quality row is gpt-oss-safeguard-20b's *published* JailbreakHub precision / recall (0.634 /
  0.684); its latency row is the stand-in GGUF's measured p50 from the cascade demo (see
  ``exp_cascade``), which says nothing about the real model's quality.

    python -m experiments.exp_classifiers [--quick]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from experiments.common import ResultWriter

log = logging.getLogger("experiments.classifiers")

SAFEGUARD_PUBLISHED = {"precision": 0.634, "recall": 0.684}
STAND_IN_P50_MS = 2743.0  # README / make demo: safeguard (stand-in GGUF) p50 on 2 CPU cores
DEMO_FAST_P50_MS = 63.0  # the fast tier's p50 in the same make-demo run (the safeguard's cost ratio uses this pair)


def _metrics(labels: Sequence[int], scores: Sequence[float], thr: float) -> dict[str, float]:
    from safecascade.training.train_metrics import score_metrics

    m = score_metrics(list(labels), list(scores))
    mt = score_metrics(list(labels), list(scores), threshold=thr)
    return {"precision": m["precision"], "recall": m["recall"], "f1": m["f1"], "f1_at_val_thr": mt["f1"],
            "r_at_1fpr": m["recall_at_1pct_fpr"], "roc_auc": m["roc_auc"]}


def _latency(fn: Any, texts: list[str], batch: int = 32) -> float:
    fn(texts[:4])  # warm-up
    t0 = time.perf_counter()
    for s in range(0, len(texts), batch):
        fn(texts[s : s + batch])
    return (time.perf_counter() - t0) * 1000.0 / len(texts)


def _head_row(name: str, cfg: Any, data: dict, sample: list[str], fast_ms: float) -> dict[str, Any]:
    from safecascade.training.heads import evaluate_heads, train_heads
    from safecascade.training.train_metrics import best_f1_threshold
    from safecascade.training.train_rows import rows_from_examples

    (tr, tr_e), (va, va_e), (te, te_e) = data["train"], data["val"], data["test"]
    rows = rows_from_examples(tr, "jailbreak")
    vl, tl = {"jailbreak": [e.label for e in va]}, {"jailbreak": [e.label for e in te]}
    t0 = time.perf_counter()
    heads, _, cal = train_heads(cfg, tr_e, rows, va_e, vl, False)
    fit_s = time.perf_counter() - t0
    _, vs = evaluate_heads(heads, va_e, vl, oof_logits={p: c["val_logits_oof"] for p, c in cal.items() if "val_logits_oof" in c})
    _, ts = evaluate_heads(heads, te_e, tl)
    thr = best_f1_threshold(vl["jailbreak"], vs["jailbreak"])
    return {"classifier": name, **_metrics(tl["jailbreak"], ts["jailbreak"], thr), "train_s": fit_s, "ms_per_text": fast_ms,
            "val_is": "out-of-fold" if cfg.fit_on == "train+val" else "held-out",
            "val_f1": _metrics(vl["jailbreak"], vs["jailbreak"], 0.5)["f1"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip the model2vec distillation (reuse the default static model's matrix)")
    ap.add_argument("--n-latency", type=int, default=192)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from safecascade.tiers.fast import FastTier
    from safecascade.tiers.static import StaticTier
    from safecascade.training.baseline import make_pipeline
    from safecascade.training.embed import benchmark_embeddings
    from safecascade.training.default_models import ensure_default_models
    from safecascade.training.static_train import train_static
    from safecascade.training.train_config import TrainConfig
    from safecascade.training.train_metrics import best_f1_threshold

    cfg = TrainConfig()
    data = benchmark_embeddings("jailbreak", ("train", "val", "test"), window=cfg.window)
    (tr, tr_e), (va, va_e), (te, te_e) = data["train"], data["val"], data["test"]
    rng = np.random.default_rng(7)
    sample = [te[i].text for i in rng.choice(len(te), size=min(args.n_latency, len(te)), replace=False)]
    models = ensure_default_models(progress=False)
    rows: list[dict[str, Any]] = []

    with ResultWriter("classifiers", title="Dedicated classifier comparison (jailbreak, date-split test)",
                      params={"n_test": len(te), "n_latency": len(sample), "quick": args.quick,
                              "fast_config": {k: v for k, v in cfg.to_dict().items() if k in ("head", "hidden", "fit_on")}}) as rw:
        # TF-IDF + LR, on train (the reference) and refitted on train+val (same recipe as the fast tier's default)
        yte = [e.label for e in te]
        for fit_on, fit_ex in (("train", tr), ("train+val", tr + va)):
            t0 = time.perf_counter()
            pipe = make_pipeline().fit([e.text for e in fit_ex], [e.label for e in fit_ex])
            tfidf_fit = time.perf_counter() - t0
            ts = pipe.predict_proba([e.text for e in te])[:, 1]
            row = {"classifier": f"TF-IDF word+char LR ({fit_on})", "fit_on": fit_on, "train_s": tfidf_fit}
            if fit_on == "train":
                vs = pipe.predict_proba([e.text for e in va])[:, 1]
                row.update(_metrics(yte, ts, best_f1_threshold([e.label for e in va], vs)), val_f1=_metrics([e.label for e in va], vs, 0.5)["f1"],
                           ms_per_text=_latency(lambda b: pipe.predict_proba(b), sample))
                tfidf_ms = row["ms_per_text"]
            else:  # val is in its training data: no held-out val figure, threshold 0.5
                row.update(_metrics(yte, ts, 0.5), f1_at_val_thr=None, ms_per_text=tfidf_ms)
            rows.append(row)
        # served tiers' latency on the same sample
        fast = FastTier(model_dir=models["fast"], threads=2)
        fast_ms = _latency(fast.classify, sample)
        static = StaticTier(model_dir=models["static"])
        static_ms = _latency(static.classify, sample)
        n_windows = sum(e.shape[0] for e in tr_e) + sum(e.shape[0] for e in va_e)
        wins_per_text = float(np.mean([r.info["n_windows"] for r in fast.classify(sample[:64])]))
        embed_s = n_windows * fast_ms / wins_per_text / 1000.0
        # frozen MiniLM + LR, and the fast tier's default head
        for fit_on in ("train", "train+val"):
            rows.append(_head_row(f"frozen MiniLM + LR (windows, max; {fit_on})", replace(cfg, head="lr", fit_on=fit_on), data, sample, fast_ms))
        rows.append(_head_row(f"fast tier, previous default (MiniLM + {cfg.head} head; train)", replace(cfg, fit_on="train"), data, sample, fast_ms))
        rows.append(_head_row(f"fast tier, default (MiniLM + {cfg.head} head; {cfg.fit_on})", cfg, data, sample, fast_ms))
        # static tier: distil (unless --quick) + embed + head
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = train_static(replace(cfg, kind="static"), train=tr, val=va, test=te, out_dir=tmp, progress=False,
                               static_source=models["static"] if args.quick else None)
            st_s = time.perf_counter() - t0
        m = res.metrics["test"]["jailbreak"]
        rows.append({"classifier": f"static tier (model2vec + MLP head; {cfg.fit_on})" + (" [matrix reused]" if args.quick else ""),
                     "precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
                     "f1_at_val_thr": m["at_val_best_f1_threshold"]["f1"], "r_at_1fpr": m["recall_at_1pct_fpr"],
                     "roc_auc": m["roc_auc"], "val_f1": res.metrics["val"]["jailbreak"]["f1"], "train_s": st_s, "ms_per_text": static_ms})
        p, r = SAFEGUARD_PUBLISHED["precision"], SAFEGUARD_PUBLISHED["recall"]
        rows.append({"classifier": "safeguard: gpt-oss-safeguard-20b (published P/R; latency = stand-in p50)", "precision": p,
                     "recall": r, "f1": 2 * p * r / (p + r), "ms_per_text": STAND_IN_P50_MS, "train_s": 0.0})
        for row in rows:
            row["cost_vs_fast"] = row["ms_per_text"] / fast_ms
        rows[-1]["cost_vs_fast"] = STAND_IN_P50_MS / DEMO_FAST_P50_MS  # both from one make-demo run, not this one
        import os

        load = os.getloadavg()
        rw.text(__doc__.split("How each number is obtained:")[1].split("    python -m")[0].strip() + "\n")
        rw.text(f"Embedding train+val once through the ONNX encoder ({n_windows} windows) costs about {embed_s:.0f} s on "
                "this machine at this run's load; it is cached by content hash, so the MiniLM heads' `train_s` excludes it.\n")
        rw.text(f"**Load:** load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) at the end of the run "
                "on 2 cores that other jobs may share; when it is well above 2, absolute seconds and ms are inflated against an "
                "idle machine, so compare rows of one run with each other. The safeguard's `cost_vs_fast` is the stand-in's "
                "p50 over the fast tier's p50 (63 ms) from one `make demo` run.\n")
        rw.text("`val_f1` is on the held-out val split for models trained on train, and out-of-fold (heads trained on "
                "train + the other val folds) for the MiniLM heads refitted on train+val; `f1_at_val_thr` uses the "
                "threshold that maximises that val F1.\n")
        rw.table(rows, ["classifier", "precision", "recall", "f1", "f1_at_val_thr", "r_at_1fpr", "roc_auc", "val_f1",
                        "train_s", "ms_per_text", "cost_vs_fast"], caption="Test split (n=%d, %d jailbreaks)" % (len(te), sum(e.label for e in te)))
        rw.figure(_plot(rows), "quality_vs_cost.png", caption="test F1 vs ms per text")
        rw.text(_when_wins(rows))
        rw.metrics({f"f1_{i}": r["f1"] for i, r in enumerate(rows)})
    return 0


def _when_wins(rows: list[dict[str, Any]]) -> str:
    tf = next(r for r in rows if r["classifier"].startswith("TF-IDF"))
    fast = next(r for r in rows if r["classifier"].startswith("fast tier, default"))
    static = next(r for r in rows if r["classifier"].startswith("static"))
    lines = ["**When does each win.** "]
    lines.append(f"The static tier is the cheapest by far ({static['ms_per_text']:.2f} ms/text, "
                 f"{fast['ms_per_text'] / static['ms_per_text']:.0f}x cheaper than the fast tier) at F1 {static['f1']:.3f} "
                 f"(fast tier: {fast['f1']:.3f}): on this date split the frozen-MiniLM fast tier does not beat its own "
                 "distilled static model, so the static tier should decide the bulk of the traffic and the fast tier's value "
                 "is as a second opinion on the uncertain band, not better accuracy on its own. ")
    lines.append(f"TF-IDF word+char LR (F1 {tf['f1']:.3f}, R@1%FPR {tf['r_at_1fpr']:.3f}) is strong on this benchmark because "
                 "jailbreak templates share surface n-grams (\"DAN\", \"Developer Mode\", \"stay in character\"); it is cheap to "
                 "train and serve, but it needs scikit-learn at serving time, and n-gram overlap is exactly what paraphrased or "
                 "obfuscated jailbreaks remove (not measured here; the heuristic tier's de-obfuscation covers part of it). ")
    lines.append(f"The fast tier (F1 {fast['f1']:.3f}, R@1%FPR {fast['r_at_1fpr']:.3f}) is below TF-IDF on this split: its "
                 "encoder is frozen and the test months bring template families the train months lack; it is the tier the "
                 "cascade distils from safeguard verdicts, so it is the one that improves as verdicts accumulate "
                 "(experiment 8), and refitting on the latest data (train+val) is what moved it here. ")
    lines.append("The safeguard (gpt-oss-safeguard) wins where the policy changes or must be explained: it reads a policy text, "
                 "cites rule ids and needs no training data, but its published JailbreakHub F1 (0.658) is below every trained "
                 "classifier here and one call costs tens of fast-tier calls (the stand-in on CPU: ~44x) — which is why it "
                 "only sees the remainder the cheaper tiers cannot decide.\n")
    return "".join(lines)


def _plot(rows: list[dict[str, Any]]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows:
        ax.scatter(r["ms_per_text"], r["f1"], s=50)
        ax.annotate(r["classifier"].split(" (")[0].split(":")[0], (r["ms_per_text"], r["f1"]), fontsize=8,
                    xytext=(5, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("ms per text (batch 32, 2 CPU threads; safeguard: stand-in p50)")
    ax.set_ylabel("test F1 at 0.5")
    ax.grid(alpha=0.3)
    ax.set_title("classifiers on the jailbreak date-split test")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(main())
