"""Post-moderation: provisional verdict now, last tier in the background, final verdict to the
callback and the verdict log; bounded queue with its overflow policies; clean shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from safecascade.router.budget import TokenBucketBudget
from safecascade.router.cache import LRUDecisionCache
from safecascade.router.cascade import Router
from safecascade.router.metrics import Metrics
from safecascade.router.postmod import PostModerator
from safecascade.router.verdict_log import VerdictLog
from safecascade.router.verdict_reader import VerdictReader
from safecascade.tiers.base import TierSpec, register_tier
from tests.router.fakes import TableTier

# --------------------------------------------------------------------------- a gated last tier
GATES: dict[str, threading.Event] = {}
ENTERED: dict[str, threading.Event] = {}


class GateTier(TableTier):
    """A table tier whose ``classify`` waits until its gate is open (unit-level control of timing)."""

    def classify(self, texts):
        ENTERED[self.name].set()
        assert GATES[self.name].wait(30), "gate never opened"
        return super().classify(texts)


@register_tier("postmod-gate")
def _make_gate(spec: TierSpec) -> GateTier:
    GATES.setdefault(spec.name, threading.Event())
    ENTERED.setdefault(spec.name, threading.Event())
    return GateTier(spec.name, list(spec.policies), spec.options.get("table", {}))


CHEAP = {"low": {"a": 0.05}, "high": {"a": 0.95}}  # anything else: 0.5 -> escalates, provisional block
JUDGE = {"low": {"a": 0.0}}  # anything else: 0.5 -> block; "ok*" texts get 0.1 -> allow


def _cfg(make_config, last_type="table", last_name="judge", table=None):
    table = table if table is not None else {f"ok{i}": {"a": 0.1} for i in range(50)}
    return make_config([
        {"name": "cheap", "type": "table", "options": {"table": {**CHEAP, **{f"ok{i}": {"a": 0.4} for i in range(50)}}},
         "bands": {"default": [0.1, 0.9]}},
        {"name": last_name, "type": last_type, "options": {"table": table}, "threshold": 0.5},
    ])


@pytest.fixture
def logged(tmp_path: Path):
    """(router factory, verdict log, metrics): the log and metrics are real sinks."""
    made = []

    def _make(cfg_path):
        router = Router.load(cfg_path)
        vlog = VerdictLog(tmp_path / f"v{len(made)}.db", flush_interval_s=0.01)
        metrics = Metrics()
        router.sinks += [vlog, metrics]
        made.append((router, vlog))
        return router, vlog, metrics

    yield _make
    for router, vlog in made:
        vlog.close()
        router.close()


def _rows(vlog: VerdictLog) -> list[dict]:
    assert vlog.flush(30)
    return list(VerdictReader(vlog.path).iter_rows())


class Collector:
    def __init__(self):
        self.events = []
        self.lock = threading.Lock()
        self.got = threading.Condition(self.lock)

    def __call__(self, event):
        with self.lock:
            self.events.append(event)
            self.got.notify_all()

    def wait(self, n, timeout=30.0):
        with self.lock:
            assert self.got.wait_for(lambda: len(self.events) >= n, timeout), f"{len(self.events)} of {n} events"
            return list(self.events)


# --------------------------------------------------------------------------- behaviour
def test_provisional_now_final_to_callback_and_log(make_config, logged):
    router, vlog, metrics = logged(_cfg(make_config))
    cb = Collector()
    with PostModerator(router, callback=cb) as pm:
        low, mid, ok = pm.submit_batch(["low", "mid text", "ok1"], contexts=["c-low", "c-mid", "c-ok"])
        # a cheap tier decided: final now
        assert (low.action, low.tier, low.reason, low.provisional) == ("allow", "cheap", "band", False)
        # escalations: the cheap tier's verdict at 0.5, marked provisional; the last tier is skipped for now
        assert mid.provisional and mid.reason == "provisional" and mid.tier == "cheap" and mid.action == "block"
        assert ok.provisional and ok.action == "allow"
        assert [(t.tier, t.outcome, t.error) for t in mid.path] == [("cheap", "escalate", None), ("judge", "skipped", "post_moderation")]
        assert mid.to_dict()["provisional"] is True and low.to_dict()["provisional"] is False
        events = cb.wait(2)
    by_ctx = {e.context: e for e in events}
    assert set(by_ctx) == {"c-mid", "c-ok"}  # exactly one callback per provisional decision, none for final-now
    fm, fo = by_ctx["c-mid"], by_ctx["c-ok"]
    assert (fm.final.tier, fm.final.reason, fm.final.action, fm.final.provisional) == ("judge", "last_tier", "block", False)
    assert [t.tier for t in fm.final.path] == ["cheap", "judge"] and fm.final.path[1].outcome == "block"
    assert not fm.changed and fm.provisional is mid
    assert fo.final.action == "allow" and not fo.changed  # provisional 0.4 < 0.5 -> allow; the judge agrees (0.1)
    assert fo.delay_ms >= 0 and fm.final.text_hash == mid.text_hash
    rows = _rows(vlog)
    reasons = sorted(r["reason"] for r in rows)
    assert reasons == ["band", "last_tier", "last_tier", "provisional", "provisional"]
    # metrics count the cheap tier's escalations once, not once per row
    assert metrics.escalations.value(tier="cheap") == 2
    assert metrics.reasons.value(reason="provisional") == 2 and metrics.reasons.value(reason="last_tier") == 2
    assert pm.stats()["delivered"] == 2 and pm.stats()["changed"] == 0


def test_changed_verdict_and_cache(make_config, logged):
    # the judge allows what the cheap tier provisionally blocked
    router, vlog, _ = logged(_cfg(make_config, table={"flip": {"a": 0.2}}))
    router.cache = LRUDecisionCache(100, None)
    cb = Collector()
    with PostModerator(router, callback=cb) as pm:
        prov = pm.submit("flip")
        assert prov.provisional and prov.action == "block"
        (ev,) = cb.wait(1)
        assert ev.changed and ev.final.action == "allow" and ev.final.reason == "last_tier"
        again = pm.submit("flip")  # the final verdict was cached; the provisional one never is
        assert again.cache_hit and again.reason == "last_tier" and not again.provisional and again.action == "allow"
        assert pm.drain(5)
    assert len(cb.events) == 1


def test_overflow_provisional_policy_logs_and_counts(make_config, logged):
    router, vlog, metrics = logged(_cfg(make_config, last_type="postmod-gate", last_name="gate-a"))
    gate, entered = GATES["gate-a"], ENTERED["gate-a"]
    gate.clear(), entered.clear()
    cb = Collector()
    pm = PostModerator(router, callback=cb, max_queue=2, batch_size=1)
    try:
        first = pm.submit("x0", context=0)
        assert entered.wait(10)  # the worker holds x0 inside the last tier
        out = [pm.submit(f"x{i}", context=i) for i in range(1, 5)]
        assert [d.reason for d in out] == ["provisional", "provisional", "postmod_overflow", "postmod_overflow"]
        assert not out[2].provisional and out[2].action == "block"  # the cheap verdict stands as final
        assert pm.pending() == 3 and pm.stats()["overflowed"] == 2
        gate.set()
        assert pm.drain(30)
    finally:
        gate.set()
        assert pm.close(30) == 0
    events = cb.wait(3)
    assert sorted(e.context for e in events) == [0, 1, 2]  # overflowed texts get no callback: submit returned their final
    assert first.provisional
    rows = _rows(vlog)
    reasons = sorted(r["reason"] for r in rows)
    assert reasons == ["last_tier"] * 3 + ["postmod_overflow"] * 2 + ["provisional"] * 3  # nothing lost
    assert metrics.reasons.value(reason="postmod_overflow") == 2


def test_overflow_block_policy_waits_then_falls_back(make_config, logged):
    router, vlog, _ = logged(_cfg(make_config, last_type="postmod-gate", last_name="gate-b"))
    gate, entered = GATES["gate-b"], ENTERED["gate-b"]
    gate.clear(), entered.clear()
    pm = PostModerator(router, max_queue=1, overflow="block", block_timeout_s=0.3, batch_size=1)
    try:
        pm.submit("y0")
        assert entered.wait(10)
        assert pm.submit("y1").provisional  # fills the queue
        t0 = time.monotonic()
        late = pm.submit("y2")  # waits block_timeout_s for room, then the provisional verdict stands
        waited = time.monotonic() - t0
        assert late.reason == "postmod_overflow" and waited >= 0.25
        # with room appearing while it waits, the text is queued instead
        threading.Timer(0.2, gate.set).start()
        pm.block_timeout_s = 10.0
        t0 = time.monotonic()
        queued = pm.submit("y3")
        assert queued.provisional and 0.1 <= time.monotonic() - t0 < 10
    finally:
        gate.set()
        assert pm.close(30) == 0
    assert pm.stats()["overflowed"] == 1 and pm.stats()["delivered"] == 3


def test_close_drains_and_reports_unjudged(make_config, logged):
    router, vlog, _ = logged(_cfg(make_config, last_type="postmod-gate", last_name="gate-c"))
    gate, entered = GATES["gate-c"], ENTERED["gate-c"]
    # 1) drain: everything queued gets judged by the last tier before close returns
    gate.set()
    cb = Collector()
    pm = PostModerator(router, callback=cb, max_queue=100, workers=2, batch_size=4)
    provs = pm.submit_batch([f"z{i}" for i in range(20)])
    assert all(d.provisional for d in provs)
    assert pm.close(30) == 0
    assert len(cb.events) == 20 and {e.final.reason for e in cb.events} == {"last_tier"}
    with pytest.raises(RuntimeError, match="closed"):
        pm.submit("z99")
    # 2) the timeout passes first: queued texts get their final verdict now (postmod_shutdown)
    gate.clear(), entered.clear()
    cb2 = Collector()
    pm2 = PostModerator(router, callback=cb2, max_queue=100, batch_size=1)
    pm2.submit("w0")
    assert entered.wait(10)
    pm2.submit_batch(["w1", "w2", "w3"])
    left = pm2.close(timeout=0.3)
    assert left == 3
    shut = cb2.wait(3)
    assert sorted(e.final.reason for e in shut) == ["postmod_shutdown"] * 3
    gate.set()  # the text inside the last tier still finishes and is delivered
    final = cb2.wait(4)
    assert sorted(e.final.reason for e in final) == ["last_tier"] + ["postmod_shutdown"] * 3
    rows = _rows(vlog)
    assert len(rows) == 20 * 2 + 4 * 2  # a provisional row and a final row for every text


def test_budget_applies_to_background_calls(make_config, logged):
    router, vlog, _ = logged(_cfg(make_config))
    router.budget = TokenBucketBudget(rate_per_s=0.001, burst=1)
    cb = Collector()
    with PostModerator(router, callback=cb, batch_size=8) as pm:
        pm.submit_batch(["b1", "b2", "b3"])
        events = cb.wait(3)
    assert sorted(e.final.reason for e in events) == ["budget_exhausted", "budget_exhausted", "last_tier"]
    assert router.budget.in_flight == 0


def test_asubmit_and_validation(make_config, logged):
    router, _, _ = logged(_cfg(make_config))

    async def go(pm):
        return await asyncio.gather(*(pm.asubmit(f"ok{i}", context=i) for i in range(5)))

    cb = Collector()
    with PostModerator(router, callback=cb) as pm:
        out = asyncio.run(go(pm))
        assert all(d.provisional for d in out)
        with pytest.raises(TypeError):
            pm.submit(123)  # type: ignore[arg-type]
        assert pm.submit("").reason == "empty_input"  # input rules decide now
    assert sorted(e.context for e in cb.events) == [0, 1, 2, 3, 4]
    for bad in ({"max_queue": 0}, {"overflow": "drop"}, {"workers": 0}, {"block_timeout_s": -1}):
        with pytest.raises(ValueError):
            PostModerator(router, **bad)


def test_callback_errors_are_counted_not_raised(make_config, logged):
    router, vlog, _ = logged(_cfg(make_config))

    def boom(event):
        raise RuntimeError("callback bug")

    with PostModerator(router, callback=boom) as pm:
        pm.submit("q1")
        assert pm.drain(10)
    assert pm.stats()["callback_errors"] == 1 and pm.stats()["delivered"] == 1
    assert sorted(r["reason"] for r in _rows(vlog)) == ["last_tier", "provisional"]


# --------------------------------------------------------------------------- the real stand-in safeguard
@pytest.mark.slow
def test_real_safeguard_in_background(tmp_path, logged):
    pytest.importorskip("llama_cpp")
    import yaml

    from safecascade.hashing import text_hash

    text = "My neighbour's dog barks all night and I am furious with him."
    (tmp_path / "violence.md").write_text(
        "# Violence\n\n## VIOLATES (1)\n- **V1.a** Instructions for making weapons.\n- **V1.b** Threats to hurt a person.\n\n"
        "## SAFE (0)\n- **V0.a** Everyday questions and complaints.\n", encoding="utf-8")
    (tmp_path / "replay.csv").write_text(f"text_hash,violence\n{text_hash(text)},0.4\n")
    cfg = {"name": "postmod-sg", "policies": {"violence": "violence.md"},
           "tiers": [{"name": "replay", "type": "replay", "options": {"path": "replay.csv", "missing": "error"},
                      "bands": {"default": [0.2, 0.8]}},
                     {"name": "safeguard", "type": "safeguard", "on_error": "fast-verdict",
                      "options": {"model_path": "stand-in", "n_ctx": 768, "n_threads": 2, "max_tokens": 96}}]}
    (tmp_path / "router.yaml").write_text(yaml.safe_dump(cfg))
    router, vlog, _ = logged(tmp_path / "router.yaml")
    cb = Collector()
    with PostModerator(router, callback=cb) as pm:
        t0 = time.perf_counter()
        prov = pm.submit(text)
        submit_ms = (time.perf_counter() - t0) * 1000
        assert prov.provisional and prov.action == "allow" and prov.tier == "replay"
        (ev,) = cb.wait(1, timeout=120)
    final = ev.final
    assert [t.tier for t in final.path] == ["replay", "safeguard"]
    sg = final.path[1]
    # the real llama.cpp call ran in the background and answered (no error, no fallback), with its cost
    assert sg.outcome in ("allow", "block") and sg.error is None, sg.error
    assert final.reason == "last_tier" and final.tier == "safeguard" and sg.cost["prompt_tokens"] > 50
    assert ev.delay_ms > submit_ms  # the caller did not wait for the LLM
    rows = _rows(vlog)
    assert sorted(r["reason"] for r in rows) == sorted(["provisional", final.reason])


# --------------------------------------------------------------------------- HTTP ?mode=post
def test_http_mode_post(make_config, logged):
    import httpx

    from safecascade.router.server import BackgroundServer, create_app

    router, vlog, metrics = logged(_cfg(make_config))
    pm = PostModerator(router)
    app = create_app(router, post_moderator=pm, metrics=metrics)
    with BackgroundServer(app) as srv:
        r = httpx.post(srv.url + "/v1/classify?mode=post", json={"input": ["low", "mid text"]})
        assert r.status_code == 200
        low, mid = r.json()["results"]
        assert (low["reason"], low["provisional"]) == ("band", False)
        assert (mid["reason"], mid["provisional"]) == ("provisional", True) and mid["path"][-1]["outcome"] == "skipped"
        m = httpx.post(srv.url + "/v1/moderations?mode=post", json={"input": "ok3"}).json()["results"][0]
        assert m["safecascade"]["reason"] == "provisional" and m["flagged"] is False
        sync = httpx.post(srv.url + "/v1/classify", json={"input": "mid text"}).json()["results"][0]
        assert sync["reason"] == "last_tier"  # the default mode waits for the last tier
        bad = httpx.post(srv.url + "/v1/classify?mode=later", json={"input": "x"})
        assert bad.status_code == 400 and "mode" in bad.json()["error"]["message"]
        assert pm.drain(10)
        health = httpx.get(srv.url + "/healthz").json()
        assert health["post_moderation"]["delivered"] == 2 and health["post_moderation"]["queue_depth"] == 0
    pm.close()
    reasons = sorted(r["reason"] for r in _rows(vlog))
    assert reasons == ["band", "last_tier", "last_tier", "last_tier", "provisional", "provisional"]
    plain = create_app(router)
    with BackgroundServer(plain) as srv:
        r = httpx.post(srv.url + "/v1/classify?mode=post", json={"input": "x"})
        assert r.status_code == 400 and "not enabled" in r.json()["error"]["message"]


def test_worker_survives_when_the_final_verdict_cannot_be_logged(make_config, logged):
    router, _, _ = logged(_cfg(make_config))

    def failing_for_finals(decision, text):
        if decision.reason != "provisional":
            raise OSError("disk full")

    def hook(err):  # an operator's hook that itself fails: the worker must not die of it
        raise RuntimeError("hook failed")

    router.sinks.append(failing_for_finals)
    router.on_sink_error = hook
    got = Collector()
    with PostModerator(router, callback=got) as pm:
        pm.submit("q1")
        assert pm.drain(10)
        pm.submit("q2")  # the worker thread must still be alive to judge this one
        assert pm.drain(10)
        events = got.wait(2)
    assert [e.final.reason for e in events] == ["postmod_error", "postmod_error"]
    assert pm.stats()["fallback_errors"] == 2
