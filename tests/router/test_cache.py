"""LRU + TTL decision cache, alone and inside a real router."""

from __future__ import annotations

import threading

import pytest

from safecascade.router.cache import LRUDecisionCache
from safecascade.router.cascade import Router
from tests.router.serving_helpers import write_router_config


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


@pytest.fixture
def router(tmp_path):
    r = Router.load(write_router_config(tmp_path, {"hello there": 0.1, "sneaky": 0.9}))
    yield r
    r.close()


def test_lru_eviction_and_counters(router):
    d = router.classify("hello there")
    cache = LRUDecisionCache(max_items=2, ttl_s=None)
    cache.put("a", d)
    cache.put("b", d)
    assert cache.get("a") is d  # a is now most recent
    cache.put("c", d)  # evicts b
    assert cache.get("b") is None and cache.get("c") is d and cache.get("a") is d
    assert (cache.hits, cache.misses, cache.evictions, len(cache)) == (3, 1, 1, 2)
    assert cache.hit_rate == pytest.approx(0.75)
    assert cache.stats()["hit_rate"] == pytest.approx(0.75)


def test_ttl_expiry(router):
    clock = Clock()
    cache = LRUDecisionCache(max_items=10, ttl_s=5, clock=clock)
    cache.put("k", router.classify("hello there"))
    clock.t = 5.0
    assert cache.get("k") is not None
    clock.t = 5.01
    assert cache.get("k") is None and cache.expirations == 1 and len(cache) == 0


@pytest.mark.parametrize("kwargs", [{"max_items": 0}, {"max_items": 1.5}, {"max_items": 3, "ttl_s": 0}, {"max_items": 3, "ttl_s": -1}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        LRUDecisionCache(**kwargs)


def test_thread_safety_under_contention(router):
    d = router.classify("hello there")
    cache = LRUDecisionCache(max_items=50, ttl_s=None)

    def work(k):
        for i in range(2000):
            key = f"{(i * 7 + k) % 120}"
            if cache.get(key) is None:
                cache.put(key, d)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50
    assert cache.hits + cache.misses == 8000


def test_router_serves_hits_and_keys_on_config(router):
    cache = LRUDecisionCache(max_items=100, ttl_s=60)
    router.cache = cache
    first = router.classify("sneaky")
    second = router.classify("sneaky")
    assert not first.cache_hit and second.cache_hit
    assert second.action == first.action == "block" and second.score == first.score
    assert cache.hits == 1 and cache.misses == 1
    # the key carries the config and policy hashes: another config never sees this entry
    key = router.cache_key(first.text_hash)
    assert router.config_hash in key and cache.get(key) is not None
    assert cache.get(key.replace(router.config_hash, "other")) is None
