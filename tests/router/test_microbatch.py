"""Micro-batching: concurrent aclassify calls coalesce into classify_batch calls, same decisions."""

from __future__ import annotations

import asyncio

import pytest

from safecascade.router.cascade import Router
from safecascade.router.microbatch import MicroBatcher

TABLE = {f"t{i}": {"a": i / 40} for i in range(40)}


def _router(make_config) -> Router:
    return Router.load(make_config([
        {"name": "cheap", "type": "table", "options": {"table": TABLE}, "bands": {"default": [0.2, 0.8]}},
        {"name": "last", "type": "table", "options": {"table": {k: {"a": 1 - v["a"]} for k, v in TABLE.items()}},
         "threshold": 0.5},
    ]))


def _spy(router: Router) -> list[int]:
    sizes: list[int] = []
    real = router.classify_batch

    def spy(texts):
        sizes.append(len(texts))
        return real(texts)

    router.classify_batch = spy  # type: ignore[method-assign]
    return sizes


def test_coalesces_and_matches_classify(make_config):
    router = _router(make_config)
    texts = list(TABLE)
    ref = [router.classify(t) for t in texts]
    sizes = _spy(router)

    async def go():
        mb = MicroBatcher(router, max_batch=64, max_wait_ms=50)
        return await asyncio.gather(*(mb.aclassify(t) for t in texts)), mb

    got, mb = asyncio.run(go())
    assert [(d.action, d.tier, d.reason, d.score) for d in got] == [(d.action, d.tier, d.reason, d.score) for d in ref]
    assert sizes == [len(texts)] and mb.stats() == {"batches": 1, "texts": 40, "mean_batch": 40.0}


def test_max_batch_and_light_traffic(make_config):
    router = _router(make_config)
    sizes = _spy(router)

    async def go():
        mb = MicroBatcher(router, max_batch=8, max_wait_ms=1)
        burst = await asyncio.gather(*(mb.aclassify(f"t{i}") for i in range(20)))
        alone = await mb.aclassify("t3")  # light traffic: a batch of one after max_wait_ms
        return burst, alone

    burst, alone = asyncio.run(go())
    assert len(burst) == 20 and sizes[:3] == [8, 8, 4] and sizes[3] == 1
    assert alone.score == router.classify("t3").score


def test_bad_input_and_failures_stay_with_their_callers(make_config):
    router = _router(make_config)

    async def go():
        mb = MicroBatcher(router, max_batch=16, max_wait_ms=20)
        good = asyncio.ensure_future(mb.aclassify("t1"))
        await asyncio.sleep(0)  # t1 is waiting for its batch
        with pytest.raises(TypeError, match="str or bytes"):
            await mb.aclassify(42)  # type: ignore[arg-type]
        d = await good
        assert d.tier in ("cheap", "last")

        def broken(texts):
            raise RuntimeError("router down")

        router.classify_batch = broken  # type: ignore[method-assign]
        res = await asyncio.gather(mb.aclassify("t2"), mb.aclassify("t3"), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in res)

    asyncio.run(go())
    for bad in ({"max_batch": 0}, {"max_wait_ms": -1}):
        with pytest.raises(ValueError):
            MicroBatcher(router, **bad)
