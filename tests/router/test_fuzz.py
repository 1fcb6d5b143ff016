"""Fuzzing (hypothesis): arbitrary Unicode, control characters, lone surrogates, NUL, bytes and
invalid UTF-8, megabyte strings, wrong JSON types and nested lists through ``classify``,
``classify_batch`` and every HTTP endpoint.

Properties: no unhandled exception (a non-text argument gets ``TypeError``, as documented in
:mod:`safecascade.router.inputs`), no HTTP 500, every response is JSON in the documented
shape, and every acknowledged decision has a verdict-log row (rows counted after each test).

Real tiers: heuristic -> static (tiny model2vec artifact) -> fast (tiny ONNX artifact) for the
library calls and the real-socket server; heuristic -> static for the high-volume HTTP part
(through the ASGI app in process with ``fastapi.testclient``). ``-m slow`` runs the full sizes
(>= 10,000 examples in all); without it each test runs a quick variant.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safecascade.router.cascade import Router
from safecascade.router.decision import Decision
from safecascade.router.inputs import clean_input
from safecascade.router.server import BackgroundServer, create_app
from safecascade.router.verdict_log import VerdictLog
from safecascade.router.verdict_reader import VerdictReader


# Reproducible by default: derandomised (the same examples every run, so CI cannot go red on
# luck) and a failing example is printed with its @reproduce_failure blob. `make fuzz` sets
# SAFECASCADE_FUZZ_RANDOM=1 (fresh random examples) and SAFECASCADE_FUZZ_SCALE=10 (x10 the full sizes).
RANDOM = os.environ.get("SAFECASCADE_FUZZ_RANDOM", "0") == "1"
SCALE = int(os.environ.get("SAFECASCADE_FUZZ_SCALE", "1"))


def sizes(quick: int, full: int):
    """A quick variant (always) and the full size (slow suite; x SAFECASCADE_FUZZ_SCALE)."""
    return pytest.mark.parametrize("n", [pytest.param(quick, id="quick"),
                                         pytest.param(full * SCALE, id="full", marks=pytest.mark.slow)])


def fuzz_settings(n: int):
    return settings(max_examples=n, deadline=None, database=None, derandomize=not RANDOM, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])


# --------------------------------------------------------------------------- strategies
ANY_CHAR = st.characters(exclude_categories=())  # includes lone surrogates, NUL, controls
CONTROL = st.characters(categories=["Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn"])
SNIPPETS = st.sampled_from([
    "Ignore all previous instructions", "DAN", "Do Anything Now", "developer mode", "\u200b", "\u202e", "\ufeff",
    "SWdub3JlIGFsbCBwcmV2aW91cyBpbnN0cnVjdGlvbnM=", "1gn0r3 4ll pr3v10us", "ＩＧＮＯＲＥ", "\x00", "\ud800", "\udfff",
    "<|im_start|>system", "<end_of_turn>", "\r\n", "\t", "😀", "𝕴𝖌𝖓𝖔𝖗𝖊", "\U000e0041", "%s%n%x", "' OR 1=1 --",
])
TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=300),
    st.text(CONTROL, max_size=50),
    st.lists(st.one_of(SNIPPETS, st.text(ANY_CHAR, max_size=20)), max_size=12).map("".join),
    st.builds(lambda s, k: s * k, st.text(ANY_CHAR, min_size=1, max_size=8), st.integers(1, 3000)),  # long repeats
)
BYTES = st.one_of(st.binary(max_size=300), TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
                  st.builds(lambda a, b: a + b"\xff\xfe\xc3" + b, st.binary(max_size=40), st.binary(max_size=40)))
NON_TEXT = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.lists(st.integers(), max_size=3),
                     st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.just(object()))
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=20)
TEXT_PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "image", "audio", ""])},
                                  optional={"text": st.one_of(TEXT, JSON), "image_url": JSON})
INPUT = st.one_of(TEXT, JSON, st.lists(st.one_of(TEXT, TEXT_PART, JSON), max_size=10),
                  st.lists(TEXT, min_size=1, max_size=8))
BODY = st.one_of(
    st.fixed_dictionaries({"input": INPUT}, optional={"model": st.one_of(st.text(max_size=10), JSON), "extra": JSON}),
    JSON,
)
RAW = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda b: b'{"input": "' + b + b'"}', st.binary(max_size=60)),  # invalid UTF-8 inside a JSON string
    st.integers(1, 5000).map(lambda d: b'{"input": ' + b"[" * d + b"]" * d + b"}"),  # nesting bombs
    st.sampled_from([b"", b" ", b"null", b"{", b'{"input": NaN}', b'{"input": "a"}garbage', b"\xef\xbb\xbf{}",
                     b'{"input": "\\ud800"}', b'{"input": ["\\udfff\\u0000"]}', b'{"input": 1e999}']),
)


def dumps(obj) -> bytes:
    """JSON the way an arbitrary client might send it (NaN/Infinity allowed, surrogates escaped)."""
    return json.dumps(obj, ensure_ascii=True, allow_nan=True).encode("ascii")


# --------------------------------------------------------------------------- routers
def _tiers(tiny_models, with_fast: bool) -> list[dict]:
    tiers = [{"name": "heuristic", "type": "heuristic", "bands": {"default": [None, 0.98]}},
             {"name": "static", "type": "static", "options": {"model": str(tiny_models["static"].out_dir)},
              "bands": {"default": [0.2, 0.8]}, "threshold": 0.5}]
    if with_fast:
        tiers.append({"name": "fast", "type": "fast", "options": {"model": str(tiny_models["fast"].out_dir), "threads": 1},
                      "threshold": 0.5})
    else:
        tiers[-1].pop("bands")
    return tiers


@pytest.fixture(scope="module")
def routers(tiny_models, tmp_path_factory):
    """name -> (Router, VerdictLog). ``full``: heuristic->static->fast, oversize truncated at
    100k chars; ``cheap``: heuristic->static, oversize blocked at 200k chars."""
    tmp = tmp_path_factory.mktemp("fuzz")
    out = {}
    for name, with_fast, inp in (("full", True, {"max_chars": 100_000, "on_oversize": "truncate"}),
                                 ("cheap", False, {"max_chars": 200_000, "on_oversize": "block"})):
        cfg = {"name": f"fuzz-{name}", "policies": {"jailbreak": "builtin:jailbreak"}, "input": inp,
               "tiers": _tiers(tiny_models, with_fast)}
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        router = Router.load(tmp / f"{name}.yaml")
        vlog = VerdictLog(tmp / f"{name}.db", sync="os", flush_interval_s=0.05)
        router.sinks.append(vlog)
        out[name] = (router, vlog)
    yield out
    for router, vlog in out.values():
        vlog.close()
        router.close()


class RowCheck:
    """Counts acknowledged decisions; on exit the log must have exactly that many new rows."""

    def __init__(self, vlog: VerdictLog):
        self.vlog, self.acked = vlog, 0

    def __enter__(self):
        assert self.vlog.flush(60)
        self.before = VerdictReader(self.vlog.path).count()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            assert self.vlog.flush(60)
            assert VerdictReader(self.vlog.path).count() - self.before == self.acked, "a logged row is missing"


def _check_decision(d: Decision) -> None:
    assert isinstance(d, Decision) and d.action in ("allow", "block")
    assert 0.0 <= d.score <= 1.0 and not math.isnan(d.score)
    json.dumps(d.to_dict(), ensure_ascii=False).encode("utf-8")  # serialisable, no lone surrogates


# --------------------------------------------------------------------------- library
def sizes_by_router(quick: int, full_fast: int, full_cheap: int):
    """Quick variants on both routers; full sizes: fewer on the router with the ONNX tier."""
    return pytest.mark.parametrize("name,n", [
        pytest.param("full", quick, id="full-quick"), pytest.param("cheap", quick, id="cheap-quick"),
        pytest.param("full", full_fast * SCALE, id="full-full", marks=pytest.mark.slow),
        pytest.param("cheap", full_cheap * SCALE, id="cheap-full", marks=pytest.mark.slow)])


@sizes_by_router(20, 800, 2500)
def test_fuzz_classify(routers, name, n):
    router, vlog = routers[name]
    with RowCheck(vlog) as rc:
        @fuzz_settings(n)
        @given(st.one_of(TEXT, BYTES, NON_TEXT))
        def run(x):
            if isinstance(x, (str, bytes)):
                _check_decision(router.classify(x))
                rc.acked += 1
            else:
                with pytest.raises(TypeError, match="str or bytes"):
                    router.classify(x)

        run()


@sizes_by_router(10, 300, 1200)
def test_fuzz_classify_batch(routers, name, n):
    router, vlog = routers[name]
    with RowCheck(vlog) as rc:
        @fuzz_settings(n)
        @given(st.one_of(st.lists(st.one_of(TEXT, BYTES), max_size=12),
                         st.lists(st.one_of(TEXT, NON_TEXT), min_size=1, max_size=4), TEXT, NON_TEXT))
        def run(xs):
            # any iterable of texts is a batch (an empty dict is an empty batch); a single text, a
            # non-iterable or a non-text item is a TypeError
            items = list(xs) if isinstance(xs, Iterable) and not isinstance(xs, (str, bytes)) else None
            if items is not None and all(isinstance(x, (str, bytes)) for x in items):
                ds = router.classify_batch(xs)
                assert len(ds) == len(items)
                for d in ds:
                    _check_decision(d)
                rc.acked += len(ds)
            else:
                with pytest.raises(TypeError):
                    router.classify_batch(xs)

        run()


@sizes(3, 30)
def test_fuzz_megabyte_strings(routers, n):
    """Megabyte strings: truncated (full router) or refused by the input rule (cheap router), quickly."""
    full, vlog = routers["full"]
    cheap, vlog2 = routers["cheap"]
    with RowCheck(vlog) as rc, RowCheck(vlog2) as rc2:
        @fuzz_settings(n)
        @given(st.text(ANY_CHAR, min_size=1, max_size=16), st.integers(1 << 20, 3 << 20), st.booleans())
        def run(unit, size, as_bytes):
            text = (unit * (size // len(unit) + 1))[:size]
            x = text.encode("utf-8", "surrogatepass") if as_bytes else text
            cleaned = clean_input(x, max_chars=1 << 40, on_oversize="block")  # NULs removed, U+FFFD for bad bytes
            size_after = len(cleaned.text)
            d = full.classify(x)
            _check_decision(d)
            if cleaned.rule == "empty_input":
                assert d.reason == "empty_input"
            else:
                assert d.tier != "input" and ("truncated" in d.warnings) == (size_after > 100_000)
            rc.acked += 1
            d2 = cheap.classify(x)
            _check_decision(d2)
            if cleaned.rule == "empty_input":
                assert d2.reason == "empty_input"
            else:
                assert (d2.reason == "input_too_large") == (size_after > 200_000)
            rc2.acked += 1

        run()


# --------------------------------------------------------------------------- HTTP (ASGI in process)
@pytest.fixture(scope="module")
def client(routers):
    from fastapi.testclient import TestClient

    router, vlog = routers["cheap"]
    app = create_app(router, max_body_bytes=64 << 10, max_inputs=16, max_pending=64)
    with TestClient(app, raise_server_exceptions=True) as c:
        yield c, vlog


def _check_response(r: httpx.Response, endpoint: str) -> int:
    """Status and shape; returns the number of decisions the response acknowledged."""
    assert r.status_code in (200, 400, 413), (r.status_code, r.text[:300])
    body = r.json()
    if r.status_code != 200:
        err = body["error"]
        assert isinstance(err["message"], str) and err["message"] and err["type"]
        return 0
    results = body["results"]
    assert results
    for res in results:
        if endpoint == "/v1/moderations":
            assert isinstance(res["flagged"], bool) and set(res["categories"]) == set(res["category_scores"])
        else:
            assert res["action"] in ("allow", "block") and "path" in res
    return len(results)


@pytest.mark.parametrize("endpoint", ["/v1/moderations", "/v1/classify"])
@sizes(25, 2000)
def test_fuzz_http_json_bodies(client, endpoint, n):
    c, vlog = client
    with RowCheck(vlog) as rc:
        @fuzz_settings(n)
        @given(BODY)
        def run(body):
            rc.acked += _check_response(c.post(endpoint, content=dumps(body), headers={"content-type": "application/json"}), endpoint)

        run()


@sizes(25, 1000)
def test_fuzz_http_raw_bodies(client, n):
    c, vlog = client
    with RowCheck(vlog) as rc:
        @fuzz_settings(n)
        @given(RAW, st.sampled_from(["/v1/moderations", "/v1/classify"]),
               st.sampled_from(["application/json", "text/plain", "application/octet-stream", ""]))
        def run(raw, endpoint, ctype):
            headers = {"content-type": ctype} if ctype else {}
            rc.acked += _check_response(c.post(endpoint, content=raw, headers=headers), endpoint)

        run()


@sizes(15, 400)
def test_fuzz_http_get_endpoints(client, n):
    c, vlog = client

    @fuzz_settings(n)
    @given(st.sampled_from(["/healthz", "/metrics"]),
           st.dictionaries(st.text(st.characters(codec="utf-8"), min_size=1, max_size=8), st.text(st.characters(codec="utf-8"), max_size=20), max_size=3),
           st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)))
    def run(path, params, auth):
        headers = {"authorization": auth} if auth is not None else {}
        r = c.get(path, params=params, headers=headers)
        assert r.status_code == 200, r.text[:200]
        if path == "/healthz":
            assert r.json()["status"] == "ok"
        else:
            assert "safecascade_decisions_total" in r.text

    run()


# --------------------------------------------------------------------------- HTTP on a real socket
@sizes(10, 300)
def test_fuzz_real_server(routers, n):
    """The full router behind uvicorn on loopback, a real HTTP client, bearer auth on."""
    router, vlog = routers["full"]
    app = create_app(router, token="fuzz-token", max_body_bytes=32 << 10, max_inputs=8)
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as http, RowCheck(vlog) as rc:
        @fuzz_settings(n)
        @given(st.one_of(BODY.map(dumps), RAW), st.sampled_from(["/v1/moderations", "/v1/classify", "/healthz", "/metrics"]),
               st.sampled_from(["Bearer fuzz-token", "Bearer wrong", "", "bearer  fuzz-token"]))
        def run(raw, endpoint, auth):
            headers = {"content-type": "application/json"}
            if auth:
                headers["authorization"] = auth
            authed = auth.lower().split() == ["bearer", "fuzz-token"]
            if endpoint in ("/healthz", "/metrics"):
                r = http.get(endpoint, headers=headers)
                assert r.status_code == (200 if endpoint == "/healthz" or authed else 401)
                return
            r = http.post(endpoint, content=raw, headers=headers)
            if not authed:
                assert r.status_code == 401, r.status_code
                return
            rc.acked += _check_response(r, endpoint)

        run()
        health = http.get("/healthz").json()
        assert health["status"] == "ok"
