"""A tier's ``allow_scores`` (raised to the highest score of a text's paragraphs and lines, or inf)
keep its allow band from allowing the text; they never block and never decide a last tier."""

from __future__ import annotations

import math

import pytest

from safecascade.router.cascade import Router
from safecascade.tiers.base import TierResult


def _router(make_config):
    table = {"email": {"a": 0.05}, "plain": {"a": 0.05}, "hot": {"a": 0.05}}
    parts = {"email": {"a": 0.5}, "hot": {"a": 0.95}, "plain": {"a": 0.01}}
    tiers = [{"name": "cheap", "type": "table", "options": {"table": table, "parts": parts}, "bands": {"default": [0.1, 0.9]}},
             {"name": "last", "type": "table", "options": {"table": {"email": {"a": 0.7}, "hot": {"a": 0.2}}}, "threshold": 0.5}]
    return Router.load(make_config(tiers))


def test_a_part_in_the_uncertain_band_passes_the_text_on(make_config):
    router = _router(make_config)
    try:
        email, plain, hot = router.classify_batch(["email", "plain", "hot"])
    finally:
        router.close()
    assert (plain.tier, plain.action) == ("cheap", "allow")  # every part under the allow band too
    assert (email.tier, email.action) == ("last", "block")  # whole text 0.05, its part 0.5: passed on
    assert [t.outcome for t in email.path] == ["escalate", "block"]
    # a part above the block band does not block on its own: the text goes on to the next tier
    assert (hot.tier, hot.action) == ("last", "allow")


def test_allow_scores_are_checked():
    with pytest.raises(ValueError, match="outside"):
        TierResult(scores={"a": 0.1}, allow_scores={"a": 1.5})
    with pytest.raises(ValueError, match="below its score"):
        TierResult(scores={"a": 0.6}, allow_scores={"a": 0.5})
    r = TierResult(scores={"a": 0.1, "b": 0.2}, allow_scores={"a": math.inf})
    assert (r.allow_score("a"), r.allow_score("b")) == (math.inf, 0.2)


def test_an_infinite_allow_score_is_never_allowed_but_may_block(make_config):
    table = {"long": {"a": 0.01}, "long-hot": {"a": 0.95}}
    inf = {"long": {"a": math.inf}, "long-hot": {"a": math.inf}}
    tiers = [{"name": "cheap", "type": "table", "options": {"table": table, "parts": inf}, "bands": {"default": [0.94, 0.95]}},
             {"name": "last", "type": "table", "options": {"table": {"long": {"a": 0.2}}}, "threshold": 0.5}]
    router = Router.load(make_config(tiers))
    try:
        long, hot = router.classify_batch(["long", "long-hot"])
    finally:
        router.close()
    assert (long.tier, long.action) == ("last", "allow")  # 0.01 is under the allow band, its inf allow score is not
    assert (hot.tier, hot.action) == ("cheap", "block")
