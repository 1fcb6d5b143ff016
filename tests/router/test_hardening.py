"""Fail closed at the edges of ``safecascade serve``: token variables, exposure warning, budget flags,
client disconnects (499), body read timeouts (408), rationale redaction, verdict-log failures (503)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from safecascade.router.budget import TokenBucketBudget
from safecascade.router.decision import Decision, TierTrace
from safecascade.router.http_api import public_decision
from safecascade.router.serve_cli import add_arguments, is_loopback, resolve_token, warn_if_exposed
from safecascade.router.serve_setup import build_router
from safecascade.router.server import BackgroundServer, create_app
from safecascade.router.verdict_reader import VerdictReader
from safecascade.tiers.base import TierResult
from tests.router.serving_helpers import write_router_config

REPO = Path(__file__).resolve().parents[2]
SCORES = {"hello there": 0.1, "sneaky request": 0.9}


# ---------------------------------------------------------------------- auth
@pytest.mark.parametrize("token_env, environ, expected", [
    ("MY_TOKEN", {"MY_TOKEN": "abc"}, "abc"),
    ("MY_TOKEN", {"MY_TOKEN": "abc\n"}, "abc"),
    (None, {"SAFECASCADE_API_TOKEN": "dflt"}, "dflt"),  # the default variable, when set, is used
    (None, {}, None),  # nothing named, nothing set: no auth (loopback default)
])
def test_resolve_token(token_env, environ, expected):
    assert resolve_token(token_env, environ) == expected


@pytest.mark.parametrize("token_env, environ, word", [
    ("MY_TOKEN", {}, "unset"),
    ("MY_TOKEN", {"MY_TOKEN": ""}, "empty"),
    ("MY_TOKEN", {"MY_TOKEN": "  \n"}, "empty"),
    (None, {"SAFECASCADE_API_TOKEN": ""}, "empty"),  # set but empty: a misconfiguration, refused too
    ("", {}, "name"),
])
def test_token_env_unset_or_empty_is_refused(token_env, environ, word):
    with pytest.raises(ValueError, match=word):
        resolve_token(token_env, environ)


def _cli(*args: str, env_extra: dict | None = None, unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "safecascade.cli", "serve", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_refuses_to_start_with_an_unset_token_variable(tmp_path):
    proc = _cli("--token-env", "SAFECASCADE_TEST_UNSET_TOKEN", "--port", "1", unset=("SAFECASCADE_TEST_UNSET_TOKEN",))
    assert proc.returncode != 0
    assert "SAFECASCADE_TEST_UNSET_TOKEN" in proc.stderr and "unset" in proc.stderr and "refusing" in proc.stderr
    assert "serving" not in proc.stdout


def test_cli_warns_when_binding_a_public_address_without_a_token(tmp_path):
    # the warning comes before the router loads; a missing config then stops it before binding
    proc = _cli("--host", "0.0.0.0", "--config", str(tmp_path / "missing.yaml"), unset=("SAFECASCADE_API_TOKEN",))
    assert proc.returncode != 0
    assert "WARNING" in proc.stderr and "without authentication" in proc.stderr


@pytest.mark.parametrize("host, exposed", [("127.0.0.1", False), ("127.1.2.3", False), ("::1", False),
                                           ("[::1]", False), ("localhost", False), ("0.0.0.0", True),
                                           ("::", True), ("10.0.0.5", True), ("example.com", True)])
def test_exposure_warning(host, exposed, caplog):
    assert is_loopback(host) is not exposed
    with caplog.at_level(logging.WARNING, logger="safecascade.router.serve_cli"):
        assert warn_if_exposed(host, None) is exposed
        assert warn_if_exposed(host, "tok") is False
    assert [r.levelname for r in caplog.records] == (["WARNING"] if exposed else [])


# ---------------------------------------------------------------------- budget flags
def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="serve")
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("argv, fragment", [
    (("--budget-rps", "0"), "--budget-rps"),
    (("--budget-rps", "-1"), "--budget-rps"),
    (("--budget-rps", "nan"), "--budget-rps"),
    (("--budget-rps", "inf"), "--budget-rps"),
    (("--budget-rps", "x"), "--budget-rps"),
    (("--budget-in-flight", "0"), "--budget-in-flight"),
    (("--budget-in-flight", "-2"), "--budget-in-flight"),
    (("--budget-in-flight", "1.5"), "--budget-in-flight"),
    (("--budget-burst", "0.5"), "--budget-burst"),
    (("--body-timeout", "0"), "--body-timeout"),
    (("--workers", "0"), "--workers"),
])
def test_nonsensical_budget_and_limit_flags_are_rejected(argv, fragment, capsys):
    with pytest.raises(SystemExit) as info:
        _parse(*argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and ("must be" in err or "expected a number" in err)


def test_budget_in_flight_alone_caps_in_flight_calls(tmp_path):
    args = _parse("--budget-in-flight", "1")
    assert args.budget_in_flight == 1 and args.budget_rps is None
    router, _ = build_router(str(write_router_config(tmp_path, SCORES)), budget_rps=args.budget_rps,
                             budget_burst=args.budget_burst, budget_in_flight=args.budget_in_flight, cache_size=0)
    try:
        budget = router.budget
        assert isinstance(budget, TokenBucketBudget)
        assert budget.stats()["max_in_flight"] == 1 and budget.stats()["rate_per_s"] is None
        assert budget.acquire(3) == 1 and budget.acquire(1) == 0  # one in flight at a time
        assert budget.stats()["refused_in_flight"] == 3
        budget.release(1)
        assert [budget.acquire(1) for _ in range(1)] == [1]  # no rate limit: never refused by rate
        budget.release(1)
        for _ in range(1000):
            assert budget.acquire(1) == 1
            budget.release(1)
        assert budget.stats()["refused_rate"] == 0
    finally:
        router.close()


@pytest.mark.parametrize("kwargs, fragment", [
    ({"budget_rps": 0}, "rate_per_s"), ({"budget_rps": -1}, "rate_per_s"), ({"budget_in_flight": 0}, "max_in_flight"),
    ({"budget_burst": 5}, "burst"),
])
def test_build_router_rejects_budgets_that_limit_nothing(tmp_path, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        build_router(str(write_router_config(tmp_path, SCORES)), **kwargs)


def test_budget_in_flight_alone_through_the_cli_parser_and_server(tmp_path):
    router, _ = build_router(str(write_router_config(tmp_path, SCORES)), budget_in_flight=2, cache_size=0)
    with BackgroundServer(create_app(router)) as srv:
        resp = httpx.post(srv.url + "/v1/moderations", json={"input": ["sneaky request", "hello there"]})
        health = httpx.get(srv.url + "/healthz").json()
    assert resp.status_code == 200
    assert health["budget"]["max_in_flight"] == 2 and health["budget"]["granted"] == 2
    assert health["budget"]["in_flight"] == 0
    router.close()


# ---------------------------------------------------------------------- disconnects, slow bodies
class _Gate:
    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, decision, text):
        self.entered.set()
        self.release.wait(20)


def _raw(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


_HEAD = (b"POST /v1/moderations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
         b"Content-Length: %d\r\n\r\n")


def _metrics(srv) -> str:
    return httpx.get(srv.url + "/metrics").text


def test_client_disconnects_are_499_without_a_traceback(tmp_path, caplog):
    router, _ = build_router(str(write_router_config(tmp_path, SCORES)), cache_size=0)
    gate = _Gate()
    with caplog.at_level(logging.INFO), BackgroundServer(create_app(router)) as srv:
        s = _raw(srv.port)  # 1. gone while the body is being read
        s.sendall(_HEAD % 1000 + b'{"input": "hello')
        time.sleep(0.2)
        s.close()
        router.sinks.append(gate)  # 2. gone while its texts are being classified
        body = b'{"input": "hello there"}'
        s = _raw(srv.port)
        s.sendall(_HEAD % len(body) + body)
        assert gate.entered.wait(10)
        s.close()
        time.sleep(0.5)  # the event loop (free: the router runs in a thread) sees the connection close
        gate.release.set()
        deadline = time.monotonic() + 10
        while 'status="499"} 2' not in _metrics(srv) and time.monotonic() < deadline:
            time.sleep(0.05)
        text = _metrics(srv)
    router.close()
    assert 'safecascade_requests_total{endpoint="/v1/moderations",status="499"} 2' in text
    assert 'status="500"' not in text
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_a_stalled_body_gets_408_and_the_connection_is_closed(tmp_path):
    router, _ = build_router(str(write_router_config(tmp_path, SCORES)), cache_size=0)
    with BackgroundServer(create_app(router, body_timeout_s=0.5)) as srv:
        outcomes = []
        for drip in (False, True):  # all at once then silence; a byte every 0.2 s (slowloris)
            s = _raw(srv.port)
            t0 = time.monotonic()
            s.sendall(_HEAD % 1000 + b'{"input": "hello')  # 17 of 1000 bytes
            s.settimeout(0.2 if drip else 5)
            got = b""
            while time.monotonic() - t0 < 5:
                try:
                    chunk = s.recv(4096)
                except socket.timeout:
                    s.sendall(b" ")
                    continue
                except ConnectionResetError:
                    break
                if not chunk:
                    break  # the server closed the connection
                got += chunk
            outcomes.append((got.split(b"\r\n", 1)[0], time.monotonic() - t0))
            s.close()
        text = _metrics(srv)
    router.close()
    for status_line, took in outcomes:
        assert status_line == b"HTTP/1.1 408 Request Timeout" and took < 3.0
    assert 'safecascade_requests_total{endpoint="/v1/moderations",status="408"} 2' in text


def test_body_timeout_must_be_positive(tmp_path):
    router, _ = build_router(str(write_router_config(tmp_path, SCORES)), cache_size=0)
    with pytest.raises(ValueError, match="body_timeout_s"):
        create_app(router, body_timeout_s=0)
    router.close()


# ---------------------------------------------------------------------- rationale redaction
class _RationaleTier:
    """Wraps the last tier: adds safeguard-style info (rationale, log-probs) to each result."""

    def __init__(self, inner):
        self.inner, self.name, self.policies = inner, inner.name, inner.policies

    def classify(self, texts):
        info = {"backend": "x", "verdicts": {"jailbreak": {"violation": 1, "rationale": "SECRET-RATIONALE",
                                                             "lp0": -3.2, "lp1": -0.04, "probability_source": "logprobs"}}}
        return [dataclasses.replace(r, info=info) for r in self.inner.classify(texts)]


@pytest.mark.parametrize("expose", [False, True])
def test_classify_leaves_out_rationales_unless_exposed(tmp_path, expose):
    router, vlog = build_router(str(write_router_config(tmp_path, SCORES)), log_path=str(tmp_path / "v.db"), cache_size=0)
    router.tiers[-1] = _RationaleTier(router.tiers[-1])
    with BackgroundServer(create_app(router, expose_rationale=expose)) as srv:
        resp = httpx.post(srv.url + "/v1/classify", json={"input": ["sneaky request"]})
        mod = httpx.post(srv.url + "/v1/moderations", json={"input": ["sneaky request"]})
    assert resp.status_code == 200 and mod.status_code == 200
    verdict = resp.json()["results"][0]["path"][-1]["info"]["verdicts"]["jailbreak"]
    assert verdict["violation"] == 1 and verdict["probability_source"] == "logprobs"  # the rest is kept
    assert ("rationale" in verdict, "lp0" in verdict, "lp1" in verdict) == (expose, expose, expose)
    assert ("SECRET-RATIONALE" in resp.text) is expose and "SECRET-RATIONALE" not in mod.text
    vlog.close()
    rows = list(VerdictReader(tmp_path / "v.db").iter_rows())  # the log keeps them either way
    assert len(rows) == 2
    for row in rows:
        assert row["path"][-1]["info"]["verdicts"]["jailbreak"]["rationale"] == "SECRET-RATIONALE"
        assert row["path"][-1]["info"]["verdicts"]["jailbreak"]["lp1"] == -0.04
    router.close()


def test_public_decision_redacts_nested_info_only():
    trace = TierTrace(tier="sg", outcome="block", scores={"p": 0.9},
                      info={"windows": [{"rationale": "w", "lp0": 1.0, "n": 2}], "verdicts": {"p": {"lp1": -1, "ok": 1}}})
    d = Decision(action="block", tier="sg", reason="last_tier", score=0.9, policies={}, path=(trace,), latency_ms=1.0,
                 text_hash="h", config_name="c", config_hash="x", policy_hashes={})
    out = public_decision(d)
    assert out["path"][0]["info"] == {"windows": [{"n": 2}], "verdicts": {"p": {"ok": 1}}}
    assert out["path"][0]["scores"] == {"p": 0.9} and public_decision(d, expose_rationale=True) == d.to_dict()


# ---------------------------------------------------------------------- verdict-log failures
def test_closed_verdict_log_gives_503_and_no_verdict(tmp_path):
    router, vlog = build_router(str(write_router_config(tmp_path, SCORES)), log_path=str(tmp_path / "v.db"), cache_size=0)
    with BackgroundServer(create_app(router)) as srv:
        ok = httpx.post(srv.url + "/v1/moderations", json={"input": "hello there"})
        vlog.close()  # the log is gone (as after a fatal error): nothing may be answered unlogged
        refused = httpx.post(srv.url + "/v1/moderations", json={"input": ["sneaky request", "hello there"]})
        text = _metrics(srv)
    assert ok.status_code == 200
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "verdict_log_unavailable"
    assert "results" not in refused.json()
    assert 'status="503"} 1' in text
    assert VerdictReader(tmp_path / "v.db").count() == 1
    router.close()


def test_failed_journal_write_gives_503_and_only_acknowledged_requests_are_logged(tmp_path):
    from tests.router.test_journal_faults import FaultyFile

    router, vlog = build_router(str(write_router_config(tmp_path, SCORES)), log_path=str(tmp_path / "v.db"), cache_size=0)
    faulty = FaultyFile(vlog._seg_fh)
    vlog._seg_fh = faulty
    statuses = []
    with BackgroundServer(create_app(router)) as srv:
        for i in range(6):
            faulty.armed = 1 if i in (1, 4) else 0  # two requests hit a full disk mid-write
            resp = httpx.post(srv.url + "/v1/moderations", json={"input": [f"text {i} a", f"text {i} b", "hello there"]})
            statuses.append(resp.status_code)
    assert statuses == [200, 503, 200, 200, 503, 200]
    stats = vlog.stats()
    vlog.close()
    with vlog.__class__(tmp_path / "v.db") as again:  # reopen: replays whatever is left in the journal
        assert again.torn_lines == 0
    logged = VerdictReader(tmp_path / "v.db").count()
    assert stats["acknowledged"] == logged == 4 * 3 and stats["failed"] == 2 * 3
    router.close()


def test_closed_verdict_log_gives_503_in_post_moderation_mode_too(tmp_path):
    from safecascade.router.postmod import PostModerator

    router, vlog = build_router(str(write_router_config(tmp_path, SCORES)), log_path=str(tmp_path / "v.db"), cache_size=0)
    pm = PostModerator(router)
    with BackgroundServer(create_app(router, post_moderator=pm)) as srv:
        ok = httpx.post(srv.url + "/v1/classify?mode=post", json={"input": "hello there"})
        pm.drain(10)
        vlog.close()
        refused = httpx.post(srv.url + "/v1/classify?mode=post", json={"input": ["hello there"]})
    pm.close(timeout=10)
    assert ok.status_code == 200 and refused.status_code == 503
    assert refused.json()["error"]["code"] == "verdict_log_unavailable"
    router.close()


def test_healthz_reports_tier_health_and_degrades_while_a_tier_is_down(tmp_path):
    router, _ = build_router(str(write_router_config(tmp_path, SCORES)), cache_size=0)
    state = {"state": "up", "pid": 123, "restarts": 0}
    last = router.tiers[-1]
    last.health = lambda: dict(state)  # a tier that reports health, as the isolated llama.cpp worker does
    with BackgroundServer(create_app(router)) as srv:
        up = httpx.get(srv.url + "/healthz").json()
        state.update(state="restarting", restarts=1, last_error="crashed: worker 123 killed by SIGSEGV")
        down = httpx.get(srv.url + "/healthz")
    router.close()
    assert up["status"] == "ok" and up["tiers_health"][last.name]["pid"] == 123
    assert down.status_code == 200  # the service still answers; on_error decides meanwhile
    assert down.json()["status"] == "degraded" and down.json()["tiers_health"][last.name]["restarts"] == 1
