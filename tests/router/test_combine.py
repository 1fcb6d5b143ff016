"""router/combine.py: the logit arithmetic, the block and allow scores, and what is left alone."""

from __future__ import annotations

import math

import pytest

from safecascade.router.combine import combined, logit, sigmoid
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
    out = combined(res, path, {"a": {"s": 2.0}})
    z = logit(0.6) + 2.0 * logit(0.75)
    assert out.scores["a"] == pytest.approx(sigmoid(z)) and out.scores["b"] == 0.7  # b not combined; h not named
    assert out.block_scores["a"] == pytest.approx(sigmoid(logit(0.3) + 2.0 * logit(0.75)))
    assert out.allow_scores["a"] == pytest.approx(sigmoid(logit(0.9) + 2.0 * logit(0.75)))
    assert out.allow_scores["b"] == math.inf
    assert out.info["combined"] == {"a": {"own": 0.6, "earlier": {"s": 0.75}, "score": round(sigmoid(z), 6)}}


def test_nothing_changes_without_the_earlier_score_or_on_an_error():
    res = TierResult(scores={"a": 0.6})
    assert combined(res, [_trace("s", {})], {"a": {"s": 1.0}}) is res  # the earlier tier failed
    assert combined(res, [], {"a": {"s": 1.0}}) is res  # not on this text's path
    assert combined(res, [_trace("s", {"a": 0.9})], {"a": {"s": 0.0}}) is res  # weight 0
    err = TierResult(scores={}, error="down")
    assert combined(err, [_trace("s", {"a": 0.9})], {"a": {"s": 1.0}}) is err
