"""experiments/tier_cache.py: a cached result is the live one (scores, allow and block scores, evidence)."""

from __future__ import annotations

import math

from experiments.tier_cache import CachedTier
from tests.router.fakes import TableTier


def test_a_cache_hit_keeps_what_the_router_decides_on(tmp_path):
    inner = TableTier("fast", ["a"], {"long doc": {"a": 0.4}}, parts={"long doc": {"a": 0.9}},
                      blocks={"long doc": {"a": 0.1}}, windowed=["long doc"], evidence={"long doc": {"a": "the planted line"}})
    tier = CachedTier(inner=inner, fingerprint="f", path=tmp_path / "c.sqlite")
    live = tier.classify(["long doc"])[0]
    again = CachedTier(inner=inner, fingerprint="f", path=tmp_path / "c.sqlite")
    hit = again.classify(["long doc"])[0]
    assert again.hits == 1 and again.misses == 0 and hit.info["cached"] is True
    for field in ("scores", "allow_scores", "block_scores", "evidence", "rule_ids"):
        assert getattr(hit, field) == getattr(live, field), field
    assert hit.info["parts_skipped"] is True
    inf = TableTier("fast", ["a"], {"x": {"a": 0.2}}, parts={"x": {"a": math.inf}})  # "never allowed" survives JSON
    assert CachedTier(inner=inf, fingerprint="g", path=tmp_path / "d.sqlite").classify(["x"])[0].allow_scores == {"a": math.inf}
    assert CachedTier(inner=inf, fingerprint="g", path=tmp_path / "d.sqlite").classify(["x"])[0].allow_scores == {"a": math.inf}
