"""router/combine.py: the logit arithmetic, the block and allow scores, and what is left alone."""

from __future__ import annotations

import math

import pytest

from safecascade.router.combine import Term, combined, evidence_score, fill_for, logit, needs_evidence, sigmoid
from safecascade.router.decision import TierTrace
from safecascade.tiers.base import TierResult


def _trace(tier, scores):
    return TierTrace(tier=tier, outcome="escalate", scores=scores)


def test_logit_and_sigmoid_invert_and_clip():
    for p in (1e-4, 0.2, 0.5, 0.9, 0.9999):
        assert sigmoid(logit(p)) == pytest.approx(p)
    assert math.isfinite(logit(0.0)) and math.isfinite(logit(1.0))
    assert sigmoid(-800.0) == pytest.approx(0.0) and sigmoid(800.0) == pytest.approx(1.0)


def test_weights_add_on_the_logit_scale_and_move_block_and_allow_scores_alike():
    res = TierResult(scores={"a": 0.6, "b": 0.7}, block_scores={"a": 0.3}, allow_scores={"a": 0.9, "b": math.inf})
    path = [_trace("h", {"a": 0.99}), _trace("s", {"a": 0.75, "b": 0.99})]
    out = combined(res, path, {"a": {"s": Term(2.0)}})
    z = logit(0.6) + 2.0 * logit(0.75)
    assert out.scores["a"] == pytest.approx(sigmoid(z)) and out.scores["b"] == 0.7  # b not combined; h not named
    assert out.block_scores["a"] == pytest.approx(sigmoid(logit(0.3) + 2.0 * logit(0.75)))
    assert out.allow_scores["a"] == pytest.approx(sigmoid(logit(0.9) + 2.0 * logit(0.75)))
    assert out.allow_scores["b"] == math.inf
    assert out.info["combined"] == {"a": {"own": 0.6, "earlier": {"s": 0.75}, "score": round(sigmoid(z), 6)}}


def test_nothing_changes_without_the_earlier_score_or_on_an_error():
    res = TierResult(scores={"a": 0.6})
    assert combined(res, [_trace("s", {})], {"a": {"s": Term(1.0)}}) is res  # the earlier tier failed
    assert combined(res, [], {"a": {"s": Term(1.0)}}) is res  # not on this text's path
    assert combined(res, [_trace("s", {"a": 0.9})], {"a": {"s": Term(0.0)}}) is res  # weight 0
    err = TierResult(scores={}, error="down")
    assert combined(err, [_trace("s", {"a": 0.9})], {"a": {"s": Term(1.0)}}) is err


def test_an_earlier_tiers_most_suspect_part_counts():
    """An earlier tier that scored the text's parts (``info["part_scores"]``, the static tier)
    counts with the highest of the text's and its parts' scores, as the fast tier's own score does:
    a request wrapped in an e-mail is not diluted in one tier only."""
    res = TierResult(scores={"a": 0.9})
    wrapped = TierTrace(tier="s", outcome="escalate", scores={"a": 0.1}, info={"part_scores": {"a": 0.8}})
    out = combined(res, [wrapped], {"a": {"s": Term(1.0)}})
    assert out.scores["a"] == pytest.approx(sigmoid(logit(0.9) + logit(0.8)))
    assert out.info["combined"]["a"]["earlier"] == {"s": 0.8}
    calm = TierTrace(tier="s", outcome="escalate", scores={"a": 0.6}, info={"part_scores": {"a": 0.2}})
    assert combined(res, [calm], {"a": {"s": Term(1.0)}}).scores["a"] == pytest.approx(sigmoid(logit(0.9) + logit(0.6)))


def test_a_text_the_earlier_tier_did_not_judge_whole_counts_as_its_fill():
    """Failed, absent, read only in windows (``parts_skipped``) or not read (a language it does not
    read, ``not_read``): the earlier tier counts as its
    ``fill`` score, chosen so that the tier's own threshold decides such a text."""
    own_thr, comb_thr = 0.98, 0.9975
    fill = fill_for(own_thr, comb_thr, 1.0)
    assert sigmoid(logit(own_thr) + logit(fill)) == pytest.approx(comb_thr)
    term = {"a": {"s": Term(1.0, fill=fill)}}
    long_text = TierTrace(tier="s", outcome="escalate", scores={"a": 0.05}, info={"parts_skipped": True, "part_scores": {"a": 0.01}})
    unread = TierTrace(tier="s", outcome="escalate", scores={"a": 0.05}, info={"not_read": "language fr"})
    for path in ([long_text], [unread], [_trace("s", {})], []):
        at = combined(TierResult(scores={"a": own_thr}), path, term).scores["a"]
        below = combined(TierResult(scores={"a": 0.97}), path, term).scores["a"]
        assert at == pytest.approx(comb_thr) and below < comb_thr
    whole = combined(TierResult(scores={"a": own_thr}), [_trace("s", {"a": 0.05})], term)
    assert whole.scores["a"] < comb_thr and whole.info["combined"]["a"]["earlier"] == {"s": 0.05}  # judged whole at 0.05: pulled down


def test_a_text_no_combined_tier_judged_counts_their_fill_none():
    """Two combined tiers: one not judging the text counts as its ``fill``; neither judging it, each
    counts as its ``fill_none`` (``fill`` where that is unset); the not-read tier's trace may carry
    no scores at all (the multilingual tier passing a document on)."""
    terms = {"a": {"s": Term(1.0, fill=0.5, fill_none=0.8), "m": Term(1.0, fill=0.9, fill_none=0.7)}}
    s_read, s_unread = _trace("s", {"a": 0.6}), TierTrace(tier="s", outcome="escalate", scores={"a": 0.6}, info={"not_read": "language vi"})
    m_read, m_unread = _trace("m", {"a": 0.3}), TierTrace(tier="m", outcome="escalate", scores={}, info={"not_read": "document"})
    def used(path):
        return combined(TierResult(scores={"a": 0.9}), path, terms).info["combined"]["a"]["earlier"]
    assert used([s_read, m_read]) == {"s": 0.6, "m": 0.3}
    assert used([s_read, m_unread]) == {"s": 0.6, "m": 0.9}  # m's fill
    assert used([s_unread, m_read]) == {"s": 0.5, "m": 0.3}  # s's fill
    assert used([s_unread, m_unread]) == {"s": 0.8, "m": 0.7}  # neither: fill_none
    assert used([]) == {"s": 0.8, "m": 0.7}
    plain = {"a": {"s": Term(1.0, fill=0.5), "m": Term(1.0, fill=0.9)}}  # no fill_none: the fill
    assert combined(TierResult(scores={"a": 0.9}), [s_unread, m_unread], plain).info["combined"]["a"]["earlier"] == {"s": 0.5, "m": 0.9}


def test_a_long_text_is_combined_with_the_earlier_tiers_score_of_the_evidence():
    """A text the earlier tier read only in windows: its score of the later tier's evidence
    (``on_evidence``) counts instead of the fill, and the trace says so; the fill still counts
    where no evidence score was passed; a text judged whole ignores it."""
    term = {"a": {"s": Term(1.0, fill=0.6)}}
    long_text = TierTrace(tier="s", outcome="escalate", scores={"a": 0.05}, info={"parts_skipped": True})
    assert needs_evidence([long_text], term) == {"s": ["a"]}
    assert needs_evidence([_trace("s", {"a": 0.05})], term) == {}  # judged whole
    assert needs_evidence([long_text], {"a": {"s": Term(0.0)}}) == {}  # weight 0: never asked
    out = combined(TierResult(scores={"a": 0.9}), [long_text], term, {"s": {"a": 0.95}})
    assert out.scores["a"] == pytest.approx(sigmoid(logit(0.9) + logit(0.95)))
    assert out.info["combined"]["a"]["earlier"] == {"s": 0.95} and out.info["combined"]["a"]["on"] == {"s": "evidence"}
    filled = combined(TierResult(scores={"a": 0.9}), [long_text], term, {"s": {"b": 0.95}})
    assert filled.info["combined"]["a"]["earlier"] == {"s": 0.6} and "on" not in filled.info["combined"]["a"]
    whole = combined(TierResult(scores={"a": 0.9}), [_trace("s", {"a": 0.2})], term, {"s": {"a": 0.95}})
    assert whole.info["combined"]["a"]["earlier"] == {"s": 0.2}
    # the earlier tier's result for the piece: raised to its parts' highest; none if it failed or read it in windows too
    assert evidence_score(TierResult(scores={"a": 0.3}, info={"part_scores": {"a": 0.7}}), "a") == 0.7
    assert evidence_score(TierResult(scores={}, error="down"), "a") is None
    assert evidence_score(TierResult(scores={"a": 0.3}, info={"parts_skipped": True}), "a") is None
