"""Token-bucket escalation budget, alone and inside a real router."""

from __future__ import annotations

import threading

import pytest

from safecascade.router.budget import TokenBucketBudget
from safecascade.router.cascade import Router
from tests.router.serving_helpers import write_router_config


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_burst_then_rate():
    clock = Clock()
    b = TokenBucketBudget(rate_per_s=10, burst=5, clock=clock)
    assert b.acquire(8) == 5  # the bucket starts full at `burst`
    b.release(5)
    assert b.acquire(1) == 0
    clock.t += 0.25  # 2.5 tokens
    assert b.acquire(3) == 2
    clock.t += 10  # refills up to burst, not beyond
    assert b.acquire(100) == 5
    assert (b.granted, b.refused, b.refused_rate, b.refused_in_flight) == (12, 1 + 3 + 1 + 95, 100, 0)


def test_in_flight_cap():
    clock = Clock()
    b = TokenBucketBudget(rate_per_s=1000, burst=1000, max_in_flight=3, clock=clock)
    assert b.acquire(2) == 2 and b.acquire(5) == 1 and b.acquire(1) == 0
    assert b.in_flight == 3 and b.refused_in_flight == 5
    b.release(2)
    assert b.acquire(4) == 2
    b.release(100)  # over-release never goes negative
    assert b.in_flight == 0
    assert b.acquire(0) == 0 and b.stats()["granted"] == 5


@pytest.mark.parametrize("args", [(0,), (-1,), (float("inf"),), (5, 0.5), (5, None, 0), (True,)])
def test_bad_arguments(args):
    with pytest.raises(ValueError):
        TokenBucketBudget(*args)


def test_concurrent_acquire_never_over_grants():
    clock = Clock()  # frozen: no refill, so exactly `burst` grants in total
    b = TokenBucketBudget(rate_per_s=1, burst=100, clock=clock)
    got = []

    def work():
        n = sum(b.acquire(1) for _ in range(100))
        got.append(n)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(got) == 100 and b.granted == 100 and b.refused == 300


def _with_budget_action(cfg_path, action):
    import yaml

    data = yaml.safe_load(cfg_path.read_text())
    data["tiers"][-1]["on_budget_exhausted"] = action
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg_path


def test_router_refusal_blocks_by_default(tmp_path):
    texts = {f"text {i}": 0.9 for i in range(4)}
    router = Router.load(write_router_config(tmp_path, texts))
    router.budget = TokenBucketBudget(rate_per_s=1, burst=1, clock=Clock())
    ds = router.classify_batch(list(texts))
    assert [d.reason for d in ds] == ["last_tier"] + ["budget_exhausted"] * 3
    assert all(d.action == "block" and d.tier == "safeguard" for d in ds[1:])
    assert ds[1].path[-1].info == {"on_budget_exhausted": "block"}
    router.close()


def test_router_refusal_keeps_previous_tier_verdict(tmp_path):
    texts = {f"text {i}": 0.9 for i in range(6)}
    router = Router.load(_with_budget_action(write_router_config(tmp_path, texts), "fast-verdict"))
    clock = Clock()
    router.budget = TokenBucketBudget(rate_per_s=1, burst=2, clock=clock)
    ds = router.classify_batch(list(texts))
    reasons = [d.reason for d in ds]
    assert reasons.count("last_tier") == 2 and reasons.count("budget_exhausted") == 4
    refused = [d for d in ds if d.reason == "budget_exhausted"]
    # the heuristic scored 0 (no rule matched): its verdict stands, recorded as such
    assert all(d.action == "allow" and d.tier == "heuristic" for d in refused)
    assert all(d.path[-1].outcome == "skipped" and d.path[-1].error == "budget_exhausted" for d in refused)
    assert router.budget.in_flight == 0 and router.budget.refused == 4
    router.close()
