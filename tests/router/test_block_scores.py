"""A tier's ``block_scores`` (lowered where it cannot read a text well enough to block it) keep its
block band from blocking the text, which is passed on; the last tier still decides on its scores."""

from __future__ import annotations

import pytest

from safecascade.router.cascade import Router
from safecascade.tiers.base import TierResult


def _router(make_config, last_table):
    table = {"withheld": {"a": 0.97, "b": 0.02}, "plain": {"a": 0.97, "b": 0.02}, "both": {"a": 0.97, "b": 0.96}}
    blocks = {"withheld": {"a": 0.0}, "both": {"a": 0.0}}
    tiers = [{"name": "cheap", "type": "table", "options": {"table": table, "blocks": blocks, "policies": ["a", "b"]},
              "bands": {"default": [0.1, 0.9]}},
             {"name": "last", "type": "table", "options": {"table": last_table, "policies": ["a", "b"]}, "threshold": 0.5}]
    return Router.load(make_config(tiers, policies=("a", "b")))


def test_a_withheld_block_passes_the_text_on(make_config):
    router = _router(make_config, {"withheld": {"a": 0.2, "b": 0.1}})
    try:
        withheld, plain, both = router.classify_batch(["withheld", "plain", "both"])
    finally:
        router.close()
    assert (plain.tier, plain.action) == ("cheap", "block")
    # the same scores with policy a's block withheld: neither blocked nor allowed here, the last tier decides
    assert (withheld.tier, withheld.action) == ("last", "allow")
    assert [t.outcome for t in withheld.path] == ["escalate", "allow"]
    assert withheld.path[0].scores == {"a": 0.97, "b": 0.02}  # the trace keeps the tier's own scores
    # b blocks on its own; a, withheld, is not reported as flagged
    assert (both.tier, both.action) == ("cheap", "block")
    assert (both.policies["a"].flagged, both.policies["b"].flagged) == (False, True)


def test_the_last_tier_decides_on_its_scores(make_config):
    tiers = [{"name": "only", "type": "table", "options": {"table": {"x": {"a": 0.97}}, "blocks": {"x": {"a": 0.0}}, "policies": ["a"]},
              "threshold": 0.5}]
    router = Router.load(make_config(tiers, policies=("a",)))
    try:
        (d,) = router.classify_batch(["x"])
    finally:
        router.close()
    assert (d.tier, d.action, d.reason) == ("only", "block", "last_tier")


def test_block_scores_are_checked():
    with pytest.raises(ValueError, match="block score"):
        TierResult(scores={"a": 0.5}, block_scores={"a": 0.6})
    with pytest.raises(ValueError, match="block score"):
        TierResult(scores={"a": 0.5}, block_scores={"a": -0.1})
    r = TierResult(scores={"a": 0.9, "b": 0.2}, block_scores={"a": 0.0})
    assert (r.block_score("a"), r.block_score("b")) == (0.0, 0.2)
