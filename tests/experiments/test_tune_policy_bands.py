"""tune_policy_bands: the static allow band is tested on the parts' scores too, and the presets it
writes are router configs carrying the chosen numbers."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest

from experiments.tune_policy_bands import (POLICIES, allow_miss, block_band, build_parser, cascade_eval, choose, combine_scores, miss_text, out_of_sample,
                                          scores_key, write_presets)
from safecascade.router.combine import Term
from safecascade.router.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_the_allow_band_is_measured_on_what_it_is_tested_on():
    y = np.array([1] * 100 + [0] * 100)
    fast = np.r_[np.full(100, 0.99), np.full(100, 0.01)]
    static = np.r_[np.linspace(0.0, 0.5, 100), np.linspace(0.0, 0.6, 100)]  # no precise block band
    benign = np.zeros(10)
    kw = dict(prevalence=0.03, budget=0.0, block_precision=0.99, allow_miss=0.01)
    plain = choose(y, fast, static, benign, benign, **kw)
    # the positives scoring lowest on the whole text have a part scoring high (or may not be allowed at all)
    parts = static.copy()
    parts[:10] = 2.0
    with_parts = choose(y, fast, static, benign, benign, parts, **kw)
    assert with_parts["static_allow_below"] > plain["static_allow_below"]
    sc = {"heuristic": {p: np.zeros(200) for p in POLICIES}, "fast": {p: fast for p in POLICIES},
          "static": {p: static for p in POLICIES}, "static_allow": {p: parts for p in POLICIES}}
    chosen = {p: with_parts for p in POLICIES}
    _, reached, _ = cascade_eval({}, {}, sc, chosen, {})
    assert reached[:10].all()  # never allowed by the static band: their parts are over it


def test_a_withheld_static_block_is_passed_on_not_counted_as_a_block():
    """The cascade the tuner evaluates tests the static block band on ``static_block``
    (``TierResult.block_score``): a text the static tier passes on for its script reaches the fast tier."""
    static = np.array([0.999, 0.999, 0.1])
    withheld = np.array([0.999, 0.0, 0.1])  # the second text is written in another script
    sc = {"heuristic": {p: np.zeros(3) for p in POLICIES}, "fast": {p: np.array([0.2, 0.2, 0.2]) for p in POLICIES},
          "static": {p: static for p in POLICIES}, "static_allow": {p: static for p in POLICIES},
          "static_block": {p: withheld for p in POLICIES}}
    chosen = {p: {"static_block_above": 0.99, "static_allow_below": 0.05, "fast_threshold": 0.5} for p in POLICIES}
    block, reached, _ = cascade_eval({}, {}, sc, chosen, {})
    assert block.tolist() == [True, False, False] and reached.tolist() == [False, True, True]


def test_a_named_text_is_never_allowed_by_the_static_tier_and_meets_the_named_threshold():
    """As in the router: a text a heuristic rule matched without deciding (heuristic score above 0)
    is not allowed by the static band, and the fast tier decides that policy at ``named_threshold``."""
    heur = np.array([0.0, 0.5, 0.5, 0.0])
    sc = {"heuristic": {p: heur if p == "harmful_request" else np.zeros(4) for p in POLICIES},
          "fast": {p: np.array([0.6, 0.6, 0.3, 0.05]) for p in POLICIES},
          "static": {p: np.array([0.3, 0.01, 0.3, 0.01]) for p in POLICIES}}
    chosen = {p: {"static_block_above": 0.99, "static_allow_below": 0.05, "fast_threshold": 0.9} for p in POLICIES}
    block, reached, flags = cascade_eval({}, {}, sc, chosen, {}, {"default": 0.5})
    assert reached.tolist() == [True, True, True, False]  # the second text is named: the static tier may not allow it
    assert block.tolist() == [False, True, False, False] and flags["harmful_request"].tolist() == [False, True, False, False]
    assert not cascade_eval({}, {}, sc, chosen, {})[0].any()  # without a named threshold, 0.6 < 0.9


def test_written_presets_load_with_the_chosen_numbers(tmp_path: Path):
    shutil.copy(REPO / "models" / "with-safeguard.yaml", tmp_path / "with-safeguard.yaml")
    chosen = {p: {"fast_threshold": 0.9 + k / 100, "fast_allow_below": 0.01 * (k + 1), "static_block_above": 0.95,
                  "static_allow_below": 0.2 + k / 10} for k, p in enumerate(POLICIES)}
    val = {p: {"precision_at_prevalence": 0.9, "recall": 0.8, "f1_at_prevalence": 0.85} for p in POLICIES}
    val.update(benign_real_flag_rate=0.005, benign_real_n=388, reached_fast_benign_real=0.2)
    args = argparse.Namespace(prevalence=0.03, benign_budget={p: 0.001 for p in POLICIES}, block_precision=0.99,
                              allow_miss={"default": 0.01, "harmful_request": 0.03}, allow_max_windows=3, named_threshold={"default": 0.5, "jailbreak": 0.6},
                              heuristic_block={"jailbreak": 0.992, "prompt_injection": 0.99, "harmful_request": 0.99},
                              combine={"harmful_request": {"static": 1.0}}, static_languages=("en", "fr"), static_block_parts=False)
    report_fills = {"harmful_request": {"static": 0.89}}
    (tmp_path / "static-default").symlink_to(REPO / "models" / "static-default")  # its card's window layout
    write_presets({"chosen": chosen, "val": val, "fills": report_fills}, tmp_path, args)
    assert "up to 3 windows (about 704 tokens)" in (tmp_path / "default.yaml").read_text(encoding="utf-8")  # 256 + 2 x 224
    assert "1% (jailbreak), 1% (prompt_injection), 3% (harmful_request) of the violations" in (tmp_path / "default.yaml").read_text(encoding="utf-8")
    (tmp_path / "policies").symlink_to(REPO / "models" / "policies")
    for name in ("default.yaml", "with-safeguard.yaml"):
        cfg = load_config(tmp_path / name)
        tiers = {t.name: t for t in cfg.tiers}
        for k, p in enumerate(POLICIES):
            assert tiers["static"].band_for(p).allow_below == chosen[p]["static_allow_below"]
            assert tiers["heuristic"].band_for("prompt_injection").block_above == 0.99
            assert tiers["heuristic"].band_for("harmful_request").block_above == 0.99
        assert tiers["static"].options["allow_max_windows"] == 3 and tiers["static"].options["languages"] == ["en", "fr"]
        assert "block_parts" not in tiers["static"].options
        assert tiers["fast"].combine == {"harmful_request": {"static": Term(weight=1.0, fill=0.89)}}
        if name == "default.yaml":
            assert [tiers["fast"].threshold_for(p) for p in POLICIES] == [chosen[p]["fast_threshold"] for p in POLICIES]
            assert [tiers["fast"].named_threshold_for(p) for p in POLICIES] == [0.6, 0.5, 0.5]
        else:
            assert [tiers["fast"].band_for(p).block_above for p in POLICIES] == [chosen[p]["fast_threshold"] for p in POLICIES]
            assert "safeguard" in tiers


def test_allow_miss_is_one_number_or_per_policy():
    assert allow_miss(0.02, "jailbreak") == 0.02 and miss_text(0.02) == "2%"
    spec = {"default": 0.01, "harmful_request": 0.03}
    assert [allow_miss(spec, p) for p in POLICIES] == [0.01, 0.01, 0.03]
    y = np.array([1] * 100 + [0] * 100)
    fast, static, benign = np.r_[np.full(100, 0.99), np.full(100, 0.01)], np.r_[np.linspace(0, 0.5, 100), np.linspace(0, 0.6, 100)], np.zeros(10)
    kw = dict(prevalence=0.03, budget=0.0, block_precision=0.99)
    assert choose(y, fast, static, benign, benign, allow_miss=0.03, **kw)["static_allow_below"] > \
        choose(y, fast, static, benign, benign, allow_miss=0.01, **kw)["static_allow_below"]


def test_combined_scores_are_what_the_router_decides_on():
    """The tuner chooses the fast threshold on the scores the router decides on with ``combine``
    (router/combine.py), computed the same way for the policies named, and leaves the others."""
    from safecascade.router.combine import combined, logit, sigmoid
    from safecascade.router.decision import TierTrace
    from safecascade.tiers.base import TierResult

    fast = {p: np.array([0.3, 0.9, 0.999]) for p in POLICIES}
    static = {p: np.array([0.9, 0.2, 0.5]) for p in POLICIES}
    parts = {p: np.array([0.1, 0.7, 0.5]) for p in POLICIES}  # the second text's most suspect part: 0.7
    skipped = {p: np.array([False, False, True]) for p in POLICIES}  # the third: a long text, read in windows only
    sc = {"fast": fast, "static": static, "static_parts": {p: np.maximum(static[p], parts[p]) for p in POLICIES}, "static_skipped": skipped}
    out = combine_scores(sc, {"harmful_request": {"static": 1.5}}, {"harmful_request": {"static": 0.8}})
    assert np.array_equal(out["jailbreak"], fast["jailbreak"])
    for i in range(3):
        trace = TierTrace(tier="static", outcome="escalate", scores={"harmful_request": float(static["harmful_request"][i])},
                          info={"part_scores": {"harmful_request": float(parts["harmful_request"][i])}, "parts_skipped": bool(skipped["harmful_request"][i])})
        want = combined(TierResult(scores={"harmful_request": float(fast["harmful_request"][i])}), [trace],
                        {"harmful_request": {"static": Term(1.5, fill=0.8)}}).scores["harmful_request"]
        assert out["harmful_request"][i] == pytest.approx(want)
    # the static tier's score of the fast tier's evidence for a long text counts as the router's does
    sc["static_evidence"] = {p: np.array([np.nan, np.nan, 0.97]) for p in POLICIES}
    out = combine_scores(sc, {"harmful_request": {"static": 1.5}}, {"harmful_request": {"static": 0.8}})
    assert out["harmful_request"][2] == pytest.approx(sigmoid(logit(0.999) + 1.5 * logit(0.97)))
    assert out["harmful_request"][1] == pytest.approx(sigmoid(logit(0.9) + 1.5 * logit(0.7)))
    # the threshold is a val text's score, kept to 6 decimals (rounded down): near 1, where combined
    # scores crowd, 4 decimals put it below a benign prompt the budget had excluded (0.99754 -> 0.9975)
    y = np.array([1, 0])
    thr = choose(y, np.array([0.9975512, 0.1]), np.array([0.5, 0.5]), np.array([0.99754]), np.zeros(1),
                 prevalence=0.03, budget=0.0, block_precision=0.99, allow_miss=0.01)["fast_threshold"]
    assert thr == 0.997551 and thr > 0.99754 and thr <= 0.9975512


def test_fills_decide_a_text_not_judged_whole_at_the_fast_tiers_own_threshold():
    """tune_fills: the fill makes a text the static tier read only in windows meet the combined
    threshold exactly when its fast score meets the threshold the fast tier alone would get."""
    from experiments.tune_policy_bands import tune_fills
    from safecascade.router.combine import logit, sigmoid

    rng = np.random.default_rng(0)
    n = 400
    fast = {p: rng.uniform(0, 1, n) for p in POLICIES}
    static = {p: rng.uniform(0, 1, n) for p in POLICIES}
    sc = {"fast": fast, "static": static, "static_skipped": {p: np.arange(n) % 4 == 0 for p in POLICIES}}
    def pick(p, s):  # a stand-in for the tuned threshold: the 90th percentile of the scores
        return float(np.quantile(s, 0.9))
    comb, fills = tune_fills(sc, {"harmful_request": {"static": 1.0}}, pick)
    f = fills["harmful_request"]["static"].fill
    own, thr = pick("harmful_request", fast["harmful_request"]), pick("harmful_request", comb["harmful_request"])
    assert sigmoid(logit(own) + logit(f)) == pytest.approx(thr, abs=2e-3)
    assert np.array_equal(comb["jailbreak"], fast["jailbreak"])


def test_with_two_earlier_tiers_a_text_one_did_not_read_is_decided_as_without_it():
    """Two combined tiers: the fill of the one that did not read a text (the multilingual tier's
    documents) makes it meet the combined threshold exactly when the fast and the other tier's
    logits meet the threshold tuned for the cascade without it, not a share of the shift to the
    fast tier alone (which decided such texts more strictly than either cascade)."""
    from experiments.tune_policy_bands import combine_scores, tune_fills
    from safecascade.router.combine import logit, sigmoid

    rng = np.random.default_rng(1)
    n = 600
    sc = {"fast": {p: rng.uniform(0, 1, n) for p in POLICIES}, "static": {p: rng.uniform(0, 1, n) for p in POLICIES},
          "multilingual": {p: rng.uniform(0, 1, n) for p in POLICIES},
          "static_skipped": {p: np.zeros(n, dtype=bool) for p in POLICIES},
          "multilingual_skipped": {p: np.arange(n) % 3 == 0 for p in POLICIES}}

    def pick(p, s):
        return float(np.quantile(s, 0.9))
    both = {"harmful_request": {"static": 1.0, "multilingual": 1.0}}
    comb, fills = tune_fills(sc, both, pick)
    alone, _ = tune_fills(sc, {"harmful_request": {"static": 1.0}}, pick)
    thr, thr_without = pick("harmful_request", comb["harmful_request"]), pick("harmful_request", alone["harmful_request"])
    f = fills["harmful_request"]["multilingual"].fill
    assert sigmoid(logit(thr_without) + logit(f)) == pytest.approx(thr, abs=2e-3)
    unread = sc["multilingual_skipped"]["harmful_request"]
    z = logit(thr)
    decided = np.array([logit(v) >= z for v in comb["harmful_request"]])[unread]
    as_without = np.array([logit(v) >= logit(thr_without) for v in alone["harmful_request"]])[unread]
    assert (decided == as_without).mean() >= 0.98  # up to rounding of the fill at the threshold
    assert np.array_equal(combine_scores(sc, both, fills)["harmful_request"], comb["harmful_request"])
    # a text neither tier judged: each counts as its fill_none, together the shift to the fast tier's own threshold
    own = pick("harmful_request", sc["fast"]["harmful_request"])
    fs, fm = fills["harmful_request"]["static"].fill_none, fills["harmful_request"]["multilingual"].fill_none
    assert sigmoid(logit(own) + logit(fs) + logit(fm)) == pytest.approx(thr, abs=2e-3)
    assert alone and fills["harmful_request"]["static"].fill is not None


def test_a_smoothed_benign_budget_keeps_the_threshold_off_a_cluster_of_benign_scores():
    """Counted, a threshold inside a cluster of benign scores flags one of them (the budget); smoothed
    (Gaussian kernel on the logit scale, Silverman's bandwidth), prompts just under it count in
    part, so the threshold moves above the cluster and the estimate at it stays within the budget."""
    from experiments.tune_policy_bands import benign_rate, silverman_bandwidth

    rng = np.random.default_rng(0)
    benign = np.r_[1 / (1 + np.exp(-rng.normal(-4.0, 1.5, 397))), [0.970, 0.972, 0.974]]  # a cluster near the top
    y = np.array([1] * 200 + [0] * 200)
    fast = np.r_[np.linspace(0.90, 0.9999, 200), 1 / (1 + np.exp(-rng.normal(-5.0, 1.0, 200)))]
    kw = dict(prevalence=0.03, budget=0.0026, block_precision=0.99, allow_miss=0.01)
    counted = choose(y, fast, np.zeros(400), benign, np.zeros(400), **kw)
    smoothed = choose(y, fast, np.zeros(400), benign, np.zeros(400), smooth_benign=True, **kw)
    assert 0.972 < counted["fast_threshold"] <= 0.974  # inside the cluster: counted, it flags one of 400 (the budget)
    assert smoothed["fast_threshold"] > 0.974  # above the whole cluster
    bw = silverman_bandwidth(benign)
    assert bw > 0 and smoothed["benign_bandwidth"] == round(bw, 4)
    assert benign_rate(benign, smoothed["fast_threshold"], bw) <= 0.0026 < benign_rate(benign, counted["fast_threshold"], bw)
    assert benign_rate(benign, 0.973, 0.0) == 0.0025  # counted: the one prompt at 0.974 of 400


def test_with_no_threshold_inside_the_benign_budget_the_strictest_is_chosen():
    """Benign prompts scored at the top (1.0, as a saturated head gives): no threshold flags none of
    them, and the tuner takes the strictest candidate, never a looser default."""
    y = np.array([1] * 50 + [0] * 50)
    fast = np.r_[np.linspace(0.6, 1.0, 50), np.full(50, 0.01)]
    benign = np.r_[np.full(5, 1.0), np.full(95, 0.01)]
    got = choose(y, fast, np.zeros(100), benign, np.zeros(100), prevalence=0.03, budget=0.001, block_precision=0.99, allow_miss=0.01)
    assert got["fast_threshold"] == 1.0 and got["val_weighted_f1_fast"] > 0


def test_the_threshold_is_chosen_without_the_rows_left_out_and_the_bands_on_all():
    """Violations scored near 1 because train holds them pull the F1-best threshold up past the
    ones it has not seen; left out of ``threshold_rows`` they no longer do, and the static bands,
    chosen on every row, stay where they were."""
    rng = np.random.default_rng(1)
    seen, unseen, neg = np.full(300, 0.999), np.linspace(0.5, 0.99, 100), np.r_[rng.uniform(0.0, 0.3, 1960), np.linspace(0.6, 0.95, 40)]
    y = np.r_[np.ones(400, int), np.zeros(2000, int)]
    fast = np.r_[seen, unseen, neg]
    static = np.r_[np.linspace(0.5, 1.0, 400), np.linspace(0.0, 0.6, 2000)]
    benign = np.full(100, 0.01)
    kw = dict(prevalence=0.03, budget=0.01, block_precision=0.99, allow_miss=0.01)
    every = choose(y, fast, static, benign, benign, **kw)
    keep = np.r_[np.zeros(300, bool), np.ones(2100, bool)]
    apart = choose(y, fast, static, benign, benign, threshold_rows=keep, **kw)
    assert apart["fast_threshold"] < every["fast_threshold"]
    assert apart["fast_threshold"] <= 0.6 < every["fast_threshold"]
    assert apart["static_block_above"] == every["static_block_above"]


def test_out_of_sample_leaves_out_only_a_policys_violations_that_train_holds():
    """A val attack train holds is left out of the threshold of the policy it violates, and kept as a
    negative of another policy; every other row is kept."""
    from safecascade.training.policy_data import PolicyExample

    ex = [PolicyExample(text="a", labels={"prompt_injection": 1, "harmful_request": 0}, source="bipia", id="1", meta={"attack_in_train": "1"}),
          PolicyExample(text="b", labels={"prompt_injection": 1, "harmful_request": 0}, source="bipia", id="2", meta={"attack_in_train": "0"}),
          PolicyExample(text="c", labels={"prompt_injection": 0, "harmful_request": 0}, source="bipia", id="3"),
          PolicyExample(text="d", labels={"harmful_request": 1}, source="other", id="4")]
    y = {"prompt_injection": np.array([1, 1, 0]), "harmful_request": np.array([0, 0, 0, 1])}
    idx = {"prompt_injection": np.array([0, 1, 2]), "harmful_request": np.array([0, 1, 2, 3])}
    got = out_of_sample(ex, y, idx)
    assert got["prompt_injection"].tolist() == [False, True, True]
    assert got["harmful_request"].tolist() == [True, True, True, True]


def test_the_score_cache_is_keyed_on_the_models_not_the_number_of_texts(tmp_path: Path):
    """A model rebuilt in place (new card) or other texts or static options invalidate the cached
    val scores; the same inputs hit them. Keyed on the count of texts alone, the previous build's
    scores were read back after ``make models`` and the presets tuned on them."""
    twins = {k: tmp_path / f"{k}-default" for k in ("static", "fast")}
    for d in twins.values():
        d.mkdir()
        (d / "card.json").write_text('{"metrics": 1}', encoding="utf-8")
    args = build_parser().parse_args(["--work", str(tmp_path)])
    texts = ["a text", "another"]
    first = scores_key(args, twins, texts)
    assert scores_key(args, twins, list(texts)) == first
    (twins["fast"] / "card.json").write_text('{"metrics": 2}', encoding="utf-8")
    rebuilt = scores_key(args, twins, texts)
    assert rebuilt != first
    assert scores_key(args, twins, ["a text", "another!"]) != rebuilt
    assert scores_key(args, twins, ["a textanother"]) != scores_key(args, twins, ["a text", "another"])
    args.allow_max_windows += 1
    assert scores_key(args, twins, texts) != rebuilt
    assert not args.static_block_parts  # the default: scored without the static tier's block_parts
    without = scores_key(args, twins, texts)
    args.static_block_parts = True
    assert scores_key(args, twins, texts) != without


def test_two_earlier_tiers_add_their_evidence_and_the_presets_carry_the_multilingual_tier(tmp_path: Path):
    """With ``combine`` naming the static and the multilingual tier, each adds its logit (its own
    parts, skip flag and evidence score); the presets then hold the multilingual tier before the
    fast tier, deciding nothing alone but jailbreaks in another language than English."""
    from safecascade.router.combine import logit, sigmoid

    fast = {p: np.array([0.6, 0.6]) for p in POLICIES}
    sc = {"fast": fast, "static": {p: np.array([0.7, 0.7]) for p in POLICIES},
          "multilingual": {p: np.array([0.2, 0.9]) for p in POLICIES},
          "multilingual_parts": {p: np.array([0.2, 0.9]) for p in POLICIES},
          "multilingual_skipped": {p: np.array([False, True]) for p in POLICIES},
          "multilingual_evidence": {p: np.array([np.nan, 0.95]) for p in POLICIES}}
    out = combine_scores(sc, {"prompt_injection": {"multilingual": 1.0}, "harmful_request": {"static": 1.0, "multilingual": 0.5}})
    assert np.array_equal(out["jailbreak"], fast["jailbreak"])
    assert out["prompt_injection"][0] == pytest.approx(sigmoid(logit(0.6) + logit(0.2)))
    assert out["prompt_injection"][1] == pytest.approx(sigmoid(logit(0.6) + logit(0.95)))  # its score of the evidence
    assert out["harmful_request"][0] == pytest.approx(sigmoid(logit(0.6) + logit(0.7) + 0.5 * logit(0.2)))

    shutil.copy(REPO / "models" / "with-safeguard.yaml", tmp_path / "with-safeguard.yaml")
    chosen = {p: {"fast_threshold": 0.9, "fast_allow_below": 0.01, "static_block_above": 0.95, "static_allow_below": 0.2} for p in POLICIES}
    chosen["jailbreak"]["multilingual_block_above"] = 0.97
    val = {p: {"precision_at_prevalence": 0.9, "recall": 0.8, "f1_at_prevalence": 0.85} for p in POLICIES}
    val.update(benign_real_flag_rate=0.005, benign_real_n=388, reached_fast_benign_real=0.2)
    args = build_parser().parse_args(["--work", str(tmp_path), "--combine",
                                      '{"prompt_injection": {"multilingual": 1.0}, "harmful_request": {"static": 1.0, "multilingual": 1.0}}'])
    defaults = build_parser().parse_args(["--work", str(tmp_path)])  # the shipped default's, since session 52
    assert defaults.combine == args.combine and defaults.multilingual_options["documents"]["harmful_request"] == "evidence"
    assert "multilingual" not in str(build_parser().parse_args(["--work", str(tmp_path), "--combine", '{"harmful_request": {"static": 1.0}}']).combine)
    (tmp_path / "static-default").symlink_to(REPO / "models" / "static-default")
    (tmp_path / "policies").symlink_to(REPO / "models" / "policies")
    fills = {"prompt_injection": {"multilingual": 0.5}, "harmful_request": {"static": 0.8, "multilingual": 0.6}}
    write_presets({"chosen": chosen, "val": val, "fills": fills}, tmp_path, args)
    for name in ("default.yaml", "with-safeguard.yaml"):
        cfg = load_config(tmp_path / name)
        assert [t.name for t in cfg.tiers][:4] == ["heuristic", "static", "multilingual", "fast"]
        ml = cfg.tiers[2]
        # it blocks jailbreaks from its own band (the default --multilingual-block), on text in another language than English
        assert ml.type == "multilingual" and all(ml.band_for(p).allow_below is None for p in POLICIES)
        assert [ml.band_for(p).block_above for p in POLICIES] == [0.97, None, None]
        assert ml.options["block_except_languages"] == ["en"]
        assert cfg.tiers[3].combine["harmful_request"] == {"static": Term(1.0, fill=0.8), "multilingual": Term(1.0, fill=0.6)}


def test_the_multilingual_block_band_is_tuned_as_the_static_one_and_acts_after_it():
    """``block_band``: the lowest score with precision (positives weighted) >= the target and no more
    benign real prompts than the budget; a block score of 0 (a language the band does not act in) is
    never a band. In the cascade the tuner evaluates, the multilingual tier blocks after the static
    tier (which may allow first) and before the fast tier, on its block score."""
    y = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([0.99, 0.95, 0.0, 0.9, 0.5, 0.0])
    assert block_band(y, s, np.array([0.1]), w_pos=1.0, block_precision=0.99, budget=0.0) == 0.95
    assert block_band(y, s, np.array([0.96]), w_pos=1.0, block_precision=0.99, budget=0.0) == 0.99  # a benign prompt at 0.96
    assert block_band(y, np.zeros(6), np.zeros(1), w_pos=1.0, block_precision=0.99, budget=0.0) == 1.0
    # with positives weighted 20 times, one false positive at 0.9 keeps precision 40/41 < 0.99: still 0.95
    assert block_band(y, s, np.zeros(1), w_pos=20.0, block_precision=0.99, budget=0.0) == 0.95
    assert block_band(y, s, np.zeros(1), w_pos=60.0, block_precision=0.99, budget=0.0) == 0.9  # 120 / 121; at 0.5 120 / 122

    n = 4
    sc = {"heuristic": {p: np.zeros(n) for p in POLICIES}, "fast": {p: np.full(n, 0.2) for p in POLICIES},
          "static": {p: np.array([0.5, 0.5, 0.01, 0.5]) for p in POLICIES},
          "multilingual_block": {p: np.array([0.98, 0.0, 0.99, 0.5]) if p == "jailbreak" else np.zeros(n) for p in POLICIES}}
    chosen = {p: {"static_block_above": 0.99, "static_allow_below": 0.05, "fast_threshold": 0.5} for p in POLICIES}
    assert not cascade_eval({}, {}, sc, chosen, {})[0].any()  # no multilingual band: nothing blocks
    chosen["jailbreak"]["multilingual_block_above"] = 0.97
    block, reached, flags = cascade_eval({}, {}, sc, chosen, {})
    # the third text is allowed by the static tier before the multilingual one reads it
    assert block.tolist() == [True, False, False, False] and reached.tolist() == [False, True, False, True]
    assert flags["jailbreak"].tolist() == [True, False, False, False] and not flags["harmful_request"].any()
