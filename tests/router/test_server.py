"""The HTTP service on a real uvicorn server: OpenAI client compatibility, full decisions, auth,
limits, bad input (400, never 500), overload (429), metrics, verdict log, and the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from safecascade.router.budget import TokenBucketBudget
from safecascade.router.serve_setup import build_router
from safecascade.router.server import BackgroundServer, create_app
from safecascade.router.verdict_reader import VerdictReader
from tests.router.serving_helpers import JAILBREAK, write_router_config

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
SCORES = {"hello there": 0.1, "sneaky request": 0.9, "borderline": 0.55}


@pytest.fixture
def served(tmp_path):
    """A real router (heuristic -> replay) with cache and verdict log, served on a free port."""
    cfg = write_router_config(tmp_path / "cfg", SCORES, rule_ids={"sneaky request": "JB1.a"})
    router, vlog = build_router(str(cfg), log_path=str(tmp_path / "verdicts.db"), cache_size=100)
    app = create_app(router, token=TOKEN, max_body_bytes=4096, max_inputs=8)
    srv = BackgroundServer(app).start()
    yield srv, router, vlog
    srv.stop()
    vlog.close()
    router.close()


def _auth():
    return {"Authorization": f"Bearer {TOKEN}"}


def test_openai_client_moderations_unchanged(served):
    srv, router, vlog = served
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=TOKEN, max_retries=0)
    one = client.moderations.create(model="omni-moderation-latest", input="sneaky request")
    assert one.id.startswith("modr-") and one.model == "safecascade-serving-test"
    (r,) = one.results
    assert r.flagged is True and r.categories.jailbreak is True and r.category_scores.jailbreak == pytest.approx(0.9)
    assert r.safecascade["tier"] == "safeguard" and r.safecascade["rule_ids"] == ["JB1.a"]
    many = client.moderations.create(model="x", input=["hello there", JAILBREAK, {"type": "text", "text": "borderline"}])
    assert [x.flagged for x in many.results] == [False, True, True]
    assert many.results[1].safecascade["tier"] == "heuristic" and "HR-DAN-1" in many.results[1].safecascade["rule_ids"]
    bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.moderations.create(model="x", input="hello there")
    with pytest.raises(openai.BadRequestError, match="input"):
        client.moderations.create(model="x", input=[])



def test_moderations_list_the_sub_categories_a_tier_found(served):
    """A flagged policy also reports the sub-categories a tier found: the last tier's cited rule
    id, or the one a heuristic rule detects (HR-DAN-1 cites JB1.a), each with the policy's score,
    and the policy's own wording under ``safecascade.sub_categories``."""
    srv, router, vlog = served
    sneaky, jb, hello = httpx.post(srv.url + "/v1/moderations", json={"input": ["sneaky request", JAILBREAK, "hello there"]},
                                   headers=_auth()).json()["results"]
    wording = router.policies["jailbreak"].rule_text("JB1.a")
    assert wording.startswith("Named jailbreak personas")
    assert sneaky["categories"]["jailbreak/JB1.a"] is True and sneaky["category_scores"]["jailbreak/JB1.a"] == pytest.approx(0.9)
    assert sneaky["safecascade"]["sub_categories"] == {"jailbreak": {"JB1.a": wording}}
    assert jb["categories"]["jailbreak/JB1.a"] is True and jb["safecascade"]["tier"] == "heuristic"
    assert set(hello["categories"]) == {"jailbreak"} and hello["safecascade"]["sub_categories"] == {}

def test_classify_returns_full_decision_and_log_rows(served):
    srv, router, vlog = served
    resp = httpx.post(srv.url + "/v1/classify", json={"input": ["sneaky request", "hello there", "sneaky request"]}, headers=_auth())
    assert resp.status_code == 200
    results = resp.json()["results"]
    assert [d["action"] for d in results] == ["block", "allow", "block"]
    d = results[0]
    assert d["config_hash"] == router.config_hash and d["policy_hashes"] == router.policy_hashes
    assert [t["tier"] for t in d["path"]] == ["heuristic", "safeguard"] and d["path"][0]["outcome"] == "escalate"
    assert d["policies"]["jailbreak"] == {"score": 0.9, "flagged": True, "rule_ids": ["JB1.a"], "sub_categories": ["JB1.a"]}
    # the same request again: served from the cache, still logged
    again = httpx.post(srv.url + "/v1/classify", json={"input": "hello there"}, headers=_auth()).json()["results"][0]
    assert again["cache_hit"] is True and again["action"] == "allow"
    vlog.flush()
    rows = list(vlog.iter_rows())
    assert len(rows) == 4 and sum(r["cache_hit"] for r in rows) == 1
    assert all(r["text"] is None for r in rows)


@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "not valid JSON"),
    (b"", "empty"),
    (b"[1, 2]", "JSON object"),
    (b'"just a string"', "JSON object"),
    (b'{"inputs": "typo"}', "'input' is required"),
    (b'{"input": 42}', "string or a list"),
    (b'{"input": null}', "string or a list"),
    (b'{"input": {"text": "x"}}', "string or a list"),
    (b'{"input": [["nested"]]}', "input[0]"),
    (b'{"input": ["ok", 3]}', "input[1]"),
    (b'{"input": [{"type": "image_url", "image_url": {"url": "http://x"}}]}', "only text"),
    (b'{"input": []}', "empty list"),
    (b'{"input": ["a","b","c","d","e","f","g","h","i"]}', "at most 8"),
    (b'{"input": "x", "model": 7}', "'model'"),
    (b'\xff\xfe\xfa{"input": "x"}', "not valid JSON"),
    (b"[" * 2040 + b"]" * 2040, "not valid JSON"),  # a nesting bomb under the size limit
])
def test_bad_requests_get_400_with_a_message(served, body, fragment):
    srv, _, _ = served
    for endpoint in ("/v1/moderations", "/v1/classify"):
        resp = httpx.post(srv.url + endpoint, content=body, headers={**_auth(), "Content-Type": "application/json"})
        assert resp.status_code == 400, resp.text
        err = resp.json()["error"]
        assert fragment in err["message"] and err["type"] == "invalid_request_error"


@pytest.mark.parametrize("text", ["", "   ", "a\x00b", "\ud800 lone surrogate", "\u200b" * 50, "é" * 500])
def test_odd_texts_get_a_decision(served, text):
    srv, _, _ = served
    body = json.dumps({"input": text}).encode()  # ASCII escapes, so a lone surrogate reaches the server
    resp = httpx.post(srv.url + "/v1/moderations", content=body, headers=_auth())
    assert resp.status_code == 200
    (r,) = resp.json()["results"]
    assert isinstance(r["flagged"], bool) and set(r["category_scores"]) == {"jailbreak"}


def test_auth_and_size_limits(served):
    srv, _, _ = served
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        resp = httpx.post(srv.url + "/v1/classify", json={"input": "x"}, headers=headers)
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
    assert httpx.get(srv.url + "/metrics").status_code == 401
    assert httpx.get(srv.url + "/healthz").status_code == 200  # health checks need no token
    big = httpx.post(srv.url + "/v1/moderations", json={"input": "x" * 5000}, headers=_auth())
    assert big.status_code == 413 and "4096" in big.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(10):
            yield b" " * 1000

    streamed = httpx.post(srv.url + "/v1/moderations", content=chunks(), headers=_auth())
    assert streamed.status_code == 413
    assert httpx.post(srv.url + "/v1/moderations", json={"input": "x" * 3000}, headers=_auth()).status_code == 200


def test_metrics_and_healthz(served):
    srv, router, _ = served
    httpx.post(srv.url + "/v1/moderations", json={"input": ["sneaky request", JAILBREAK, "hello there"]}, headers=_auth())
    httpx.post(srv.url + "/v1/moderations", json={"input": "hello there"}, headers=_auth())
    httpx.post(srv.url + "/v1/moderations", content=b"{", headers=_auth())
    text = httpx.get(srv.url + "/metrics", headers=_auth()).text
    assert 'safecascade_requests_total{endpoint="/v1/moderations",status="200"} 2' in text
    assert 'safecascade_requests_total{endpoint="/v1/moderations",status="400"} 1' in text
    assert 'safecascade_decisions_total{tier="heuristic",action="block"} 1' in text
    assert 'safecascade_decisions_total{tier="safeguard",action="allow"} 2' in text
    assert 'safecascade_escalations_total{tier="heuristic"} 2' in text
    assert "safecascade_cache_hits_total 1" in text
    assert re.search(r'safecascade_tier_latency_seconds_count\{tier="safeguard"\} 2\b', text)
    assert re.search(r'safecascade_decision_latency_seconds_bucket\{tier="heuristic",le="\+Inf"\} 1\b', text)
    assert "safecascade_cache_hit_rate 0.25" in text
    health = httpx.get(srv.url + "/healthz").json()
    assert health["status"] == "ok" and health["router"]["config_hash"] == router.config_hash
    assert health["router"]["tiers"] == ["heuristic", "safeguard"]
    assert health["verdict_log"]["acknowledged"] == 4 and health["verdict_log"]["store_text"] is False


def test_budget_refusals_through_the_server(tmp_path):
    texts = {f"needs the safeguard {i}": 0.9 for i in range(5)}
    router, vlog = build_router(str(write_router_config(tmp_path, texts)), log_path=str(tmp_path / "v.db"), cache_size=0)
    router.budget = TokenBucketBudget(rate_per_s=0.001, burst=2)
    with BackgroundServer(create_app(router)) as srv:
        resp = httpx.post(srv.url + "/v1/moderations", json={"input": list(texts)})
        metrics = httpx.get(srv.url + "/metrics").text
    results = resp.json()["results"]
    reasons = [r["safecascade"]["reason"] for r in results]
    assert reasons.count("last_tier") == 2 and reasons.count("budget_exhausted") == 3
    assert "safecascade_budget_refusals_total 3" in metrics
    vlog.close()
    assert VerdictReader(tmp_path / "v.db").count() == 5  # refused escalations are logged too
    router.close()


class _Gate:
    """A sink that holds decisions until released (unit-level fake to create overload)."""

    def __init__(self):
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def __call__(self, decision, text):
        self.entered.release()
        self.release.wait(20)


def test_overload_gets_429_and_the_event_loop_stays_free(tmp_path):
    router, _ = build_router(str(write_router_config(tmp_path, SCORES)), cache_size=0)
    gate = _Gate()
    router.sinks.append(gate)
    app = create_app(router, max_pending=2, workers=2)
    with BackgroundServer(app) as srv:
        results: list[int] = []

        def call():
            results.append(httpx.post(srv.url + "/v1/moderations", json={"input": "hello there"}, timeout=30).status_code)

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        assert gate.entered.acquire(timeout=10) and gate.entered.acquire(timeout=10)  # both being classified
        t0 = time.perf_counter()
        over = httpx.post(srv.url + "/v1/moderations", json={"input": "hello there"})
        health = httpx.get(srv.url + "/healthz")
        assert time.perf_counter() - t0 < 2.0  # answered while the router threads are busy
        assert over.status_code == 429 and over.headers["retry-after"] == "1"
        assert over.json()["error"]["code"] == "overloaded"
        assert health.status_code == 200 and health.json()["in_flight"] == 2
        gate.release.set()
        for t in threads:
            t.join(30)
        assert results == [200, 200]
        assert httpx.post(srv.url + "/v1/moderations", json={"input": "hello there"}).status_code == 200
    router.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_end_to_end(tmp_path):
    cfg = write_router_config(tmp_path / "cfg", SCORES)
    port = _free_port()
    db = tmp_path / "cli.db"
    env = dict(os.environ, PYTHONPATH=str(REPO), MY_TOKEN="cli-token")
    proc = subprocess.Popen([sys.executable, "-m", "safecascade.cli", "serve", "--config", str(cfg), "--port", str(port),
                             "--log", str(db), "--store-text", "--token-env", "MY_TOKEN", "--budget-rps", "100"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-2000:]
            time.sleep(0.1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="cli-token", max_retries=0)
        res = client.moderations.create(model="x", input=["sneaky request", "hello there"])
        assert [r.flagged for r in res.results] == [True, False]
        assert httpx.get(url + "/healthz").json()["budget"]["granted"] == 2
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    assert "serving serving-test" in out
    rows = list(VerdictReader(db).iter_rows())
    assert sorted(r["text"] for r in rows) == ["hello there", "sneaky request"]  # --store-text
    assert not list(Path(str(db) + ".journal.d").glob("seg-*.jsonl"))  # clean shutdown: journal drained
