"""Experiment 8: distillation curve — fast-tier quality vs the number of logged safeguard verdicts.

The fast tier is distilled from verdicts the safeguard tier logged. gpt-oss-safeguard-20b's
weights cannot be run here, so its verdicts are **simulated from the gold labels** at its
published JailbreakHub operating point (precision 0.634, recall 0.684): a jailbreak is flagged
with probability 0.684 and a benign text with the false-positive rate that gives precision 0.634
at the pool's prevalence (about 4%); seeded. The simulated verdicts are written as a replay-format
CSV (``text``, ``jailbreak`` = 0/1) and read through ``rows_from_verdicts``, exactly as
``safecascade train fast --from-log`` reads a real log. The pool is the benchmark's train split
(texts dated up to 2023-04, as "traffic seen so far"); the first ``n`` texts of a seeded shuffle are
the first ``n`` verdicts. For each ``n`` the fast tier's head (default training config) is trained
on the cached window embeddings, calibrated on the gold validation split (a small labelled set, as
an operator would keep), and scored on the gold test split; the clean-label curve (the same texts
with gold labels) is the ceiling. Scores come from the head's float64 reference, which equals the
served ONNX graph within 1e-4 (tests/training/test_export_parity.py).

    python -m experiments.exp_distillation_curve [--quick] [--seeds 2]
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from experiments.common import ResultWriter, work_dir

log = logging.getLogger("experiments.distillation_curve")

TEACHER_PRECISION = 0.634  # gpt-oss-safeguard-20b on JailbreakHub (OpenAI's technical report)
TEACHER_RECALL = 0.684
SIZES = (250, 500, 1000, 2000, 4000)


def teacher_rates(prevalence: float, precision: float = TEACHER_PRECISION, recall: float = TEACHER_RECALL) -> tuple[float, float]:
    """(true-positive rate, false-positive rate) that give ``precision``/``recall`` at ``prevalence``."""
    tp = recall * prevalence
    fp = tp * (1 - precision) / precision
    return recall, fp / (1 - prevalence)


def simulate_teacher(labels: Sequence[int], *, seed: int) -> np.ndarray:
    """Noisy 0/1 verdicts from gold labels at the teacher's published precision / recall."""
    y = np.asarray(labels, dtype=int)
    tpr, fpr = teacher_rates(float(y.mean()))
    u = np.random.default_rng(seed).random(len(y))
    return np.where(y == 1, u < tpr, u < fpr).astype(int)


def write_verdicts(path: Path, texts: Sequence[str], verdicts: Sequence[int]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "jailbreak"])
        w.writerows([t, int(v)] for t, v in zip(texts, verdicts))
    return path


def _fit_and_score(cfg: Any, rows: list, embs: list, val: tuple, test: tuple) -> dict[str, float]:
    from safecascade.training.heads import evaluate_heads, train_heads
    from safecascade.training.train_metrics import best_f1_threshold

    (_, val_embs, val_labels), (_, test_embs, test_labels) = val, test
    heads, _, _ = train_heads(cfg, embs, rows, val_embs, val_labels, False)
    vm, vs = evaluate_heads(heads, val_embs, val_labels)
    thr = {p: best_f1_threshold(val_labels[p], vs[p]) for p in vs}
    tm, _ = evaluate_heads(heads, test_embs, test_labels, thr)
    m = tm["jailbreak"]
    return {"f1": m["f1"], "precision": m["precision"], "recall": m["recall"], "r_at_1fpr": m["recall_at_1pct_fpr"],
            "roc_auc": m["roc_auc"], "val_f1": vm["jailbreak"]["f1"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="logistic head, sizes up to 1000, one seed")
    ap.add_argument("--seeds", type=int, default=3, help="teacher-noise / sampling seeds per point")
    ap.add_argument("--head", choices=["mlp", "lr"], default="lr",
                    help="head type (default lr: ~20x cheaper than the fast tier's mlp on 2 cores; "
                         "--head mlp uses the fast tier's own config)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from safecascade.training.embed import benchmark_embeddings
    from safecascade.training.train_config import TrainConfig
    from safecascade.training.train_rows import rows_from_examples, rows_from_verdicts

    # the student learns from verdicts only: val (gold) calibrates and thresholds, it is not refitted on
    cfg = replace(TrainConfig(), fit_on="train")
    if args.quick or args.head:
        cfg = replace(cfg, head=args.head or "lr")
    seeds = 1 if args.quick else max(1, args.seeds)
    data = benchmark_embeddings("jailbreak", ("train", "val", "test"), window=cfg.window)
    (pool, pool_embs), (val_ex, val_embs), (test_ex, test_embs) = data["train"], data["val"], data["test"]
    val = (val_ex, val_embs, {"jailbreak": [e.label for e in val_ex]})
    test = (test_ex, test_embs, {"jailbreak": [e.label for e in test_ex]})
    sizes = [n for n in SIZES if n < len(pool)] + [len(pool)]
    if args.quick:
        sizes = [n for n in sizes if n <= 1000]
    tpr, fpr = teacher_rates(float(np.mean([e.label for e in pool])))
    tmp = work_dir("distillation_curve")
    rows_out: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    with ResultWriter("distillation_curve", title="Distillation curve: fast-tier quality vs logged safeguard verdicts",
                      params={"head": cfg.head, "seeds": seeds, "sizes": sizes, "teacher_precision": TEACHER_PRECISION,
                              "teacher_recall": TEACHER_RECALL, "quick": args.quick}) as rw:
        for seed in range(seeds):
            order = np.random.default_rng(1000 + seed).permutation(len(pool))
            noisy_all = simulate_teacher([e.label for e in pool], seed=seed)
            for n in sizes:
                idx = order[:n]
                ex = [pool[i] for i in idx]
                embs = [pool_embs[i] for i in idx]
                noisy = noisy_all[idx]
                gold = np.array([e.label for e in ex])
                if gold.sum() < 2 or noisy.sum() < 2:
                    log.warning("n=%d seed=%d: too few positives, skipped", n, seed)
                    continue
                vpath = write_verdicts(tmp / f"verdicts-{seed}-{n}.csv", [e.text for e in ex], noisy)
                vrows = rows_from_verdicts(vpath, ["jailbreak"])
                keep = {e.text for e in ex}
                assert len(vrows) == len(ex) and all(r.text in keep for r in vrows)
                for teacher, rows in (("simulated gpt-oss-safeguard-20b", vrows), ("gold labels", rows_from_examples(ex, "jailbreak"))):
                    t0 = time.perf_counter()
                    m = _fit_and_score(cfg, rows, embs, val, test)
                    rows_out.append({"teacher": teacher, "verdicts": n, "seed": seed, **m, "fit_s": time.perf_counter() - t0,
                                     "teacher_precision": float(gold[noisy == 1].mean()) if teacher != "gold labels" else 1.0,
                                     "teacher_recall": float(noisy[gold == 1].mean()) if teacher != "gold labels" else 1.0})
                    log.info("%s n=%d seed=%d: test F1 %.3f R@1%%FPR %.3f", teacher, n, seed, m["f1"], m["r_at_1fpr"])
        summary = _summarise(rows_out)
        rw.text(f"Teacher simulated from gold at TPR {tpr:.3f} / FPR {fpr:.4f} (pool prevalence "
                f"{np.mean([e.label for e in pool]):.3f}), i.e. precision {TEACHER_PRECISION} / recall {TEACHER_RECALL} "
                "as published for gpt-oss-safeguard-20b on JailbreakHub. Head: the fast-tier training "
                f"config with head `{cfg.head}`{' (the default is `' + TrainConfig().head + '`)' if cfg.head != TrainConfig().head else ''}, fitted on the verdicts only, calibrated and thresholded on the gold val split; metrics on the gold "
                f"test split (n={len(test_ex)}, {sum(e.label for e in test_ex)} jailbreaks), mean over {seeds} seed(s). "
                "`teacher P/R` is what the simulated teacher achieved on that sample.\n")
        rw.table(summary, ["teacher", "verdicts", "f1", "precision", "recall", "r_at_1fpr", "roc_auc", "val_f1",
                           "teacher P", "teacher R"], caption="Test-split quality vs number of verdicts distilled from")
        rw.figure(_plot(summary), "curve.png", caption="fast-tier F1 and recall at 1% FPR vs verdicts")
        full = {r["teacher"]: r for r in summary if r["verdicts"] == max(sizes)}
        noisy_f1 = full.get("simulated gpt-oss-safeguard-20b", {}).get("f1")
        gold_f1 = full.get("gold labels", {}).get("f1")
        if noisy_f1 is not None and gold_f1 is not None:
            rw.text(f"With all {max(sizes)} verdicts the student distilled from the noisy teacher reaches test F1 "
                    f"{noisy_f1:.3f} (teacher's own F1 at P {TEACHER_PRECISION} / R {TEACHER_RECALL}: "
                    f"{2 * TEACHER_PRECISION * TEACHER_RECALL / (TEACHER_PRECISION + TEACHER_RECALL):.3f}); "
                    f"with gold labels {gold_f1:.3f}. Total run time {time.perf_counter() - t_all:.0f} s.\n")
            rw.text("Caveat: the simulated teacher's errors are independent of the text (label noise at fixed rates), "
                    "which a student can average out — hence the student beating its teacher with enough verdicts. A real "
                    "safeguard's errors are correlated with content (the same template family is misjudged every time), "
                    "so read the noisy curve as an upper bound on what distillation from gpt-oss-safeguard-20b buys, and "
                    "the gap to the gold curve as the price of the teacher's errors.\n")
            rw.metrics({"f1_noisy_all": noisy_f1, "f1_gold_all": gold_f1})
    return 0


def _summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for teacher in dict.fromkeys(r["teacher"] for r in rows):
        for n in sorted({r["verdicts"] for r in rows if r["teacher"] == teacher}):
            rs = [r for r in rows if r["teacher"] == teacher and r["verdicts"] == n]
            agg = {k: float(np.mean([r[k] for r in rs])) for k in ("f1", "precision", "recall", "r_at_1fpr", "roc_auc", "val_f1")}
            agg["f1_sd"] = float(np.std([r["f1"] for r in rs]))
            out.append({"teacher": teacher, "verdicts": n, **agg,
                        "teacher P": float(np.mean([r["teacher_precision"] for r in rs])),
                        "teacher R": float(np.mean([r["teacher_recall"] for r in rs]))})
    return out


def _plot(summary: list[dict[str, Any]]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "f1", "test F1"), (axes[1], "r_at_1fpr", "test recall at 1% FPR")):
        for teacher, style in (("gold labels", "o-"), ("simulated gpt-oss-safeguard-20b", "s--")):
            rs = [r for r in summary if r["teacher"] == teacher]
            if rs:
                ax.plot([r["verdicts"] for r in rs], [r[key] for r in rs], style, label=teacher)
        if key == "f1":
            tf1 = 2 * TEACHER_PRECISION * TEACHER_RECALL / (TEACHER_PRECISION + TEACHER_RECALL)
            ax.axhline(tf1, color="grey", ls=":", label=f"teacher F1 ({tf1:.3f})")
        ax.set_xscale("log")
        ticks = sorted({r["verdicts"] for r in summary})
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("verdicts distilled from")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("fast tier distilled from logged verdicts (jailbreak, date-split test)")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(main())
