"""exp_benign_cv: folds by a seeded hash of the text, and a held-out fold's prompts never move the
operating point they are measured at."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.exp_benign_cv import folds_of, take, tune_and_measure
from experiments.tune_policy_bands import POLICIES, build_parser


def test_folds_are_a_function_of_the_text_and_cover_every_fold():
    texts = [f"prompt number {i}" for i in range(500)]
    f = folds_of(texts, 5)
    assert f.min() == 0 and f.max() == 4
    assert all(60 <= (f == k).sum() <= 140 for k in range(5))  # about a fifth each
    assert np.array_equal(folds_of(list(reversed(texts)), 5), f[::-1])  # the same text, the same fold
    assert not np.array_equal(folds_of(texts, 5, salt="other"), f)


def _scores(benign_fast: list[float]) -> tuple[dict, int, dict, dict]:
    nv = 200  # labelled val texts: 100 violations scored 0.90-0.99 by the fast tier, 100 benign at 0.01
    fast = np.r_[np.linspace(0.90, 0.99, 100), np.full(100, 0.01), benign_fast]
    n = len(fast)
    flat = np.full(n, 0.5)  # the static tier: no precise block band, allows nothing
    sc = {"heuristic": {p: np.zeros(n) for p in POLICIES}, "fast": {p: fast for p in POLICIES},
          "static": {p: flat for p in POLICIES}, "static_allow": {p: flat for p in POLICIES},
          "static_block": {p: flat for p in POLICIES}, "static_parts": {p: flat for p in POLICIES},
          "static_skipped": {p: np.zeros(n, dtype=bool) for p in POLICIES},
          "static_evidence": {p: np.full(n, np.nan) for p in POLICIES},
          # the multilingual tier (read where a --combine names it): even odds, no evidence either way
          "multilingual": {p: flat for p in POLICIES}, "multilingual_parts": {p: flat for p in POLICIES},
          "multilingual_skipped": {p: np.zeros(n, dtype=bool) for p in POLICIES},
          "multilingual_evidence": {p: np.full(n, np.nan) for p in POLICIES},
          "multilingual_block": {p: np.zeros(n) for p in POLICIES}}  # every text English: its block band never acts
    y = {p: np.r_[np.ones(100, dtype=int), np.zeros(100, dtype=int)] for p in POLICIES}
    idx = {p: np.arange(nv) for p in POLICIES}
    return sc, nv, y, idx


def test_a_held_out_prompt_is_measured_at_a_point_tuned_without_it(tmp_path: Path):
    args = build_parser().parse_args(["--work", str(tmp_path), "--benign-smoothing", "none"])
    benign = [0.001] * 20 + [0.95]  # one edgy real prompt, scored among the violations
    sc, nv, y, idx = _scores(benign)
    pool = nv + np.arange(len(benign))
    edgy = pool[-1:]
    # the edgy prompt held out: the threshold is tuned without it (every violation flagged) and it is blocked
    held_out = tune_and_measure(sc, nv, y, idx, pool[:-1], edgy, args)
    assert all(held_out["chosen"][p]["fast_threshold"] < 0.95 for p in POLICIES)
    assert held_out["blocked"] == 1 and held_out["flagged"] == {p: 1 for p in POLICIES} and held_out["n_held"] == 1
    # the edgy prompt among the tuning prompts: the budget moves every threshold above it, and the
    # held-out prompts (all scored low) are allowed
    tuned_on = tune_and_measure(sc, nv, y, idx, pool[-6:], pool[:-6], args)
    assert all(tuned_on["chosen"][p]["fast_threshold"] > 0.95 for p in POLICIES)
    assert tuned_on["blocked"] == 0 and tuned_on["n_held"] == 15 and tuned_on["n_tune"] == 6
    assert tuned_on["val"]["jailbreak"]["recall"] < held_out["val"]["jailbreak"]["recall"] == 1.0


def test_take_keeps_the_rows_of_every_array():
    sc = {"fast": {p: np.arange(5.0) for p in POLICIES}, "static_skipped": {p: np.array([1, 0, 1, 0, 1], dtype=bool) for p in POLICIES}}
    sub = take(sc, np.array([4, 0]))
    assert sub["fast"]["jailbreak"].tolist() == [4.0, 0.0] and sub["static_skipped"]["harmful_request"].tolist() == [True, True]
