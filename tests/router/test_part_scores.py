"""A tier's ``part_scores`` (the highest score of a text's paragraphs and lines) keep its allow
band from allowing the text; they never block and never decide a last tier."""

from __future__ import annotations

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


def test_part_scores_are_checked_like_scores():
    with pytest.raises(ValueError, match="outside"):
        TierResult(scores={"a": 0.1}, part_scores={"a": 1.5})
