"""Cross-validated benign-flag rate on real user prompts: the default cascade's operating points
tuned on some benign real prompts and measured on others, fold by fold.

    python -m experiments.exp_benign_cv [--models models] [--folds 5] [--quick]

The shipped operating points are tuned (experiments/tune_policy_bands.py) on the val split's ~390
benign real user prompts (ToxicChat, neither toxic nor a jailbreak) and a benign-flag budget of a
few tenths of a percent per policy: one or two prompts decide each threshold, so which ~390 prompts
those are moves the rate measured on the others. Here the benign real prompts of the val **and**
test splits (none of them trained on: the shipped heads and the encoder's fine-tune are fit on
train) are pooled and cut into ``--folds`` folds by a seeded hash of the text. For each fold the
tuner's own procedure (:func:`experiments.tune_policy_bands.tune`: the val split's labelled texts,
positives at 3% prevalence, each policy's benign budget spent on the other folds' prompts) picks
the bands, thresholds and fills, and the cascade so tuned (:func:`~experiments.tune_policy_bands.cascade_eval`,
which decides as the router does) is run on the held-out fold's prompts. Reported per fold: the
thresholds chosen, the held-out prompts blocked (overall and per policy flag) and the val figures
of each policy's own flag at that operating point; then the pooled out-of-fold rate with its 95%
Wilson interval, and, for comparison, the shipped way (tuned on the val prompts, measured on the
test prompts). The learned tiers are the shipped ones throughout (``--models``, fit on train); only
the operating point is cross-validated.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Sequence

import numpy as np

from experiments.common import ResultWriter, wilson, work_dir
from experiments.tune_policy_bands import (POLICIES, build_parser, cascade_eval, cached_scores, combine_scores, models_to_tune, out_of_sample,
                                           tune, val_figures, val_labels)
from safecascade.training.datasets import split_hash
from safecascade.training.policy_data import real_user_benign, training_split

log = logging.getLogger("experiments.benign_cv")


def folds_of(texts: Sequence[str], k: int, salt: str = "benign-cv") -> np.ndarray:
    """Each text's fold, 0..k-1, by a seeded hash of the text (the same text, the same fold)."""
    return np.array([min(k - 1, int(split_hash(t, salt=salt) * k)) for t in texts], dtype=int)


def take(sc: dict[str, dict[str, np.ndarray]], rows: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """The rows ``rows`` of every array of :func:`~experiments.tune_policy_bands.score_all`'s scores."""
    return {t: {p: v[rows] for p, v in d.items()} for t, d in sc.items()}


def tune_and_measure(sc: dict[str, dict[str, np.ndarray]], nv: int, y: dict[str, np.ndarray], idx: dict[str, np.ndarray],
                     tune_rows: np.ndarray, held_rows: np.ndarray, args: argparse.Namespace,
                     threshold_rows: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Tune on the labelled val texts (rows ``0..nv``) and the benign prompts at ``tune_rows``;
    decide the benign prompts at ``held_rows`` with that cascade. Returns the chosen operating
    points, the val figures, and the held-out prompts blocked (overall, per policy flag, reaching
    the fast tier). ``threshold_rows``: as :func:`~experiments.tune_policy_bands.tune`'s."""
    val_rows = np.arange(nv)
    sub = take(sc, np.r_[val_rows, tune_rows])
    chosen, fills, sub["fast"] = tune(sub, nv, y, idx, args, threshold_rows)
    _, _, flags = cascade_eval(y, idx, sub, chosen, args.heuristic_block, args.named_threshold)
    held = take(sc, held_rows)
    held["fast"] = combine_scores(held, args.combine, fills)
    block, reached, hflags = cascade_eval(y, idx, held, chosen, args.heuristic_block, args.named_threshold)
    return {"chosen": chosen, "val": val_figures(y, idx, flags, nv, chosen), "n_tune": int(len(tune_rows)),
            "n_held": int(len(held_rows)), "blocked": int(block.sum()), "reached": int(reached.sum()),
            "flagged": {p: int(hflags[p].sum()) for p in POLICIES}}


def row(name: str, r: dict[str, Any]) -> dict[str, Any]:
    """One table row of :func:`tune_and_measure`'s result."""
    out: dict[str, Any] = {"run": name, "benign_tune": r["n_tune"], "benign_held_out": r["n_held"], "blocked": r["blocked"],
                           "benign_flag_rate": r["blocked"] / max(1, r["n_held"]), "reach_fast": r["reached"] / max(1, r["n_held"])}
    for p in POLICIES:
        out[f"flagged_{p}"] = r["flagged"][p]
    for p in POLICIES:
        out[f"threshold_{p}"] = r["chosen"][p]["fast_threshold"]
    for p in POLICIES:
        out[f"val_F1@3%_{p}"] = r["val"][p]["f1_at_prevalence"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="models", help="the shipped models (DIR/static-default, DIR/fast-default; fit on train)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--combine", default=None, help="the tuner's --combine (JSON; default: the tuner's), e.g. "
                    "'{\"harmful_request\": {\"static\": 1.0}}' for a model set without the multilingual tier")
    ap.add_argument("--multilingual-options", default=None, help="the tuner's --multilingual-options (JSON; default: the tuner's)")
    ap.add_argument("--quick", action="store_true", help="accepted for run_all; the scores are cached after the first run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = work_dir("benign_cv")
    targs = build_parser().parse_args(["--work", str(work), "--models", args.models,  # the tuner's defaults
                                       *(["--combine", args.combine] if args.combine else []),
                                       *(["--multilingual-options", args.multilingual_options] if args.multilingual_options else [])])
    twins = models_to_tune(targs)
    val = training_split("val")
    pool_val = [e.text for e in real_user_benign("val")]
    pool_test = [e.text for e in real_user_benign("test")]
    pool = pool_val + pool_test
    sc = cached_scores(targs, twins, [e.text for e in val] + pool, work / "scores.npz")
    nv = len(val)
    y, idx = val_labels(val)
    keep = out_of_sample(val, y, idx)  # the tuner's rows for the fast threshold
    rows_pool = nv + np.arange(len(pool))
    folds = folds_of(pool, args.folds)
    rows: list[dict[str, Any]] = []
    total_blocked = 0
    per_policy = {p: 0 for p in POLICIES}
    for f in range(args.folds):
        r = tune_and_measure(sc, nv, y, idx, rows_pool[folds != f], rows_pool[folds == f], targs, keep)
        rows.append(row(f"fold {f + 1} of {args.folds}", r))
        total_blocked += r["blocked"]
        for p in POLICIES:
            per_policy[p] += r["flagged"][p]
        log.info("fold %d: %d of %d held-out benign prompts blocked", f + 1, r["blocked"], r["n_held"])
    lo, hi = wilson(total_blocked, len(pool))
    cv = {"run": f"pooled out-of-fold ({args.folds} folds)", "benign_tune": "–", "benign_held_out": len(pool),
          "blocked": total_blocked, "benign_flag_rate": total_blocked / len(pool),
          **{f"flagged_{p}": per_policy[p] for p in POLICIES}}
    rows.append(cv)
    shipped = tune_and_measure(sc, nv, y, idx, rows_pool[:len(pool_val)], rows_pool[len(pool_val):], targs, keep)
    rows.append(row("as shipped: tuned on val prompts, measured on test prompts", shipped))
    cols = ["run", "benign_tune", "benign_held_out", "blocked", "benign_flag_rate", "reach_fast",
            *[f"flagged_{p}" for p in POLICIES], *[f"threshold_{p}" for p in POLICIES], *[f"val_F1@3%_{p}" for p in POLICIES]]
    with ResultWriter("benign_cv", params={"models": args.models, "folds": args.folds}) as rw:
        rw.text(__doc__.split("\n\n", 2)[2])
        rw.table(rows, columns=cols)
        rw.text(f"Pooled out-of-fold benign-flag rate: {total_blocked} of {len(pool)} = {total_blocked / len(pool):.2%} "
                f"(95% Wilson interval {lo:.2%} - {hi:.2%}); per policy flag: "
                + ", ".join(f"{p} {per_policy[p]} ({per_policy[p] / len(pool):.2%})" for p in POLICIES) + ".")
        rw.metrics({"cv_benign_flag_rate": total_blocked / len(pool), "cv_benign_flag_rate_lo": lo, "cv_benign_flag_rate_hi": hi,
                    **{f"cv_flag_rate_{p}": per_policy[p] / len(pool) for p in POLICIES}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
