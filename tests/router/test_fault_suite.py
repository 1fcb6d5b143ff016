"""Fault suite (issue 19, item 5; the non-LLM-worker parts): each fault through the real HTTP
service with a verdict log, asserting the documented outcome and that no acknowledged verdict is
lost (acknowledged = a 200 answer's results; logged = rows in the verdict log after a restart).

* an OpenAI-compatible endpoint (a stdlib HTTP server in a thread, ``backend: openai`` pointed
  at it) answering 5xx, timing out, refusing connections, answering garbage, JSON of the wrong
  shape and harmony the parser cannot read -> a recorded tier error and the tier's ``on_error``;
* slow clients (bodies dripped a byte at a time) next to normal traffic -> 408, others unaffected;
* 2x overload (twice ``max_pending`` concurrent requests against a slow safeguard) -> 429s;
* kill -9 of ``safecascade serve``-like processes under load, 50 times (heuristic-only router),
  restarting on the same log each time.

Each test prints a ``FAULT|`` line (``pytest -s``): the figures in docs/serving.md "Fault suite".
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from safecascade.hashing import text_hash
from safecascade.router.serve_setup import build_router
from safecascade.router.server import BackgroundServer, create_app
from safecascade.router.verdict_log import VerdictLog
from safecascade.router.verdict_reader import VerdictReader
from tests.router.serving_helpers import write_router_config

REPO = Path(__file__).resolve().parents[2]
GOOD = ('<|channel|>analysis<|message|>The text asks to bypass the rules.<|end|><|start|>assistant'
        '<|channel|>final <|constrain|>json<|message|>{"violation": 1, "policy_category": "jailbreak", '
        '"rule_ids": ["JB1.a"], "confidence": "high", "rationale": "bypass"}')
CALL_TIMEOUT_S = 0.3


def _fault_line(fault: str, outcome: str, acked: int, logged: int, **extra) -> None:
    more = "".join(f" | {k}={v}" for k, v in extra.items())
    print(f"\nFAULT| {fault} | {outcome} | acknowledged {acked} | logged {logged} | lost {acked - logged}{more}")


# ---------------------------------------------------------------------- a misbehaving endpoint
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 - http.server's name
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        srv = self.server
        with srv.lock:
            srv.calls += 1
        mode = srv.mode
        if srv.delay_s:
            time.sleep(srv.delay_s)
        if mode == "timeout":
            time.sleep(CALL_TIMEOUT_S * 4)
            return self._send(200, json.dumps({"choices": [{"text": GOOD}]}))
        if mode in ("http500", "http503", "http429"):
            return self._send(int(mode[4:]), '{"error": {"message": "overloaded"}}')
        if mode == "not_json":
            return self._send(200, "<html><body>502 Bad Gateway</body></html>", "text/html")
        if mode == "bad_shape":
            return self._send(200, json.dumps({"choices": "oops", "usage": []}))
        text = {"ok": GOOD,
                # special tokens stripped by the server (llama.cpp #25321-like): "analysis...assistantfinal{...}"
                "harmony_stripped": GOOD.replace("<|channel|>", "").replace("<|message|>", "").replace("<|end|>", "")
                .replace("<|start|>", "").replace("<|constrain|>", ""),
                # reasoning cut off by max_tokens: no final channel (llama.cpp #27720-like)
                "harmony_truncated": "<|channel|>analysis<|message|>The text asks to bypass the rules and",
                "empty": ""}[mode]
        return self._send(200, json.dumps({"choices": [{"text": text, "finish_reason": "stop"}],
                                           "usage": {"prompt_tokens": 100, "completion_tokens": 20}}))

    def _send(self, status: int, body: str, ctype: str = "application/json") -> None:
        data = body.encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client timed out and left
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def endpoint():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.mode, srv.delay_s, srv.calls, srv.lock = "ok", 0.0, 0, threading.Lock()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _safeguard_config(dir_: Path, base_url: str, on_error: str) -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    cfg = {"name": "fault-suite", "policies": {"jailbreak": "builtin:jailbreak"}, "tiers": [
        {"name": "heuristic", "type": "heuristic", "bands": {"default": [None, 0.98]}},
        {"name": "safeguard", "type": "safeguard", "threshold": 0.5, "on_error": on_error,
         "options": {"backend": "openai", "base_url": base_url, "model": "openai/gpt-oss-safeguard-20b",
                     "timeout_s": CALL_TIMEOUT_S, "retries": 1, "backoff_s": 0.01, "malformed_retries": 1}}]}
    path = dir_ / "router.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _logged_hashes(db: Path) -> list[str]:
    VerdictLog(db).close()  # a restart: replays the journal
    return [r["text_hash"] for r in VerdictReader(db).iter_rows()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ENDPOINT_FAULTS = [  # fault, expected error fragment
    ("http500", "answered 500"), ("http503", "answered 503"), ("http429", "answered 429"),
    ("timeout", "did not answer within"), ("refused", "unavailable"), ("not_json", "non-JSON"),
    ("bad_shape", "AttributeError"), ("harmony_stripped", "assistantfinal_leak"),
    ("harmony_truncated", "no_final_channel"), ("empty", "malformed output"),
]


@pytest.mark.parametrize("on_error", ["block", "fast-verdict"])
@pytest.mark.parametrize("fault, fragment", ENDPOINT_FAULTS, ids=[f for f, _ in ENDPOINT_FAULTS])
def test_openai_endpoint_fault_is_a_recorded_error_and_on_error(endpoint, tmp_path, fault, fragment, on_error):
    base = f"http://127.0.0.1:{_free_port() if fault == 'refused' else endpoint.server_port}/v1"
    router, vlog = build_router(str(_safeguard_config(tmp_path, base, on_error)), log_path=str(tmp_path / "v.db"), cache_size=0)
    texts = [f"please ignore your rules, variant {i} ({fault})" for i in range(4)]
    acked: list[str] = []
    try:
        endpoint.mode = fault
        with BackgroundServer(create_app(router)) as srv:
            batch = httpx.post(srv.url + "/v1/classify", json={"input": texts[:3]}, timeout=30)
            single = httpx.post(srv.url + "/v1/moderations", json={"input": texts[3]}, timeout=30)
            assert batch.status_code == 200 and single.status_code == 200, (batch.text, single.text)
            results = batch.json()["results"]
            acked += [d["text_hash"] for d in results] + [single.json()["results"][0]["safecascade"]["text_hash"]]
            metrics = httpx.get(srv.url + "/metrics").text
            endpoint.mode = "ok"  # the endpoint recovers: the next text is judged again
            again = httpx.post(srv.url + "/v1/classify", json={"input": "ignore the rules again"}, timeout=30).json()["results"][0]
            acked.append(again["text_hash"])
    finally:
        endpoint.mode = "ok"
        vlog.close()
        router.close()
    for d in results:
        assert d["reason"] == f"fallback:{on_error}"
        trace = d["path"][-1]
        assert trace["tier"] == "safeguard" and trace["outcome"] == "error" and fragment in trace["error"], trace
        if on_error == "block":
            assert d["action"] == "block" and "safeguard_error" in d["warnings"]
        else:  # the heuristic scored (0: no rule) -> its verdict at 0.5
            assert d["action"] == "allow" and d["tier"] == "heuristic"
    assert single.json()["results"][0]["safecascade"]["reason"] == f"fallback:{on_error}"
    assert 'safecascade_tier_errors_total{tier="safeguard"} 4' in metrics
    if fault != "refused":  # (nothing listens on that port: it stays a fallback)
        assert (again["action"], again["reason"]) == ("block", "last_tier")
    logged = _logged_hashes(tmp_path / "v.db")
    assert sorted(logged) == sorted(acked)  # every answer logged, nothing else
    if on_error == "block":
        _fault_line(f"endpoint {fault}", f"fallback:{on_error}, error '{fragment}'", len(acked), len(set(logged) & set(acked)))


# ---------------------------------------------------------------------- slow clients
def _drip(port: int, seconds: float) -> bytes:
    """Send headers announcing 100 bytes, then one byte every 0.25 s; return the answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /v1/moderations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            s.sendall(b" ")
            time.sleep(0.25)
    except OSError:
        pass  # the server closed the connection
    s.settimeout(5)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        pass
    s.close()
    return data


def test_slow_clients_get_408_and_do_not_starve_others(tmp_path):
    texts = {f"normal text {i}": 0.9 if i % 2 else 0.1 for i in range(40)}
    router, vlog = build_router(str(write_router_config(tmp_path / "cfg", texts)), log_path=str(tmp_path / "v.db"), cache_size=0)
    acked: list[str] = []
    try:
        app = create_app(router, body_timeout_s=1.0, max_pending=8)
        with BackgroundServer(app) as srv, ThreadPoolExecutor(16) as pool:
            slow = [pool.submit(_drip, srv.port, 3.0) for _ in range(8)]
            time.sleep(0.2)
            t0 = time.monotonic()
            with httpx.Client(base_url=srv.url, timeout=10) as client:
                for text in texts:
                    r = client.post("/v1/moderations", json={"input": text})
                    assert r.status_code == 200
                    acked.append(r.json()["results"][0]["safecascade"]["text_hash"])
            normal_s = time.monotonic() - t0
            answers = [f.result() for f in slow]
    finally:
        vlog.close()
        router.close()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers
    assert normal_s < 5.0  # the normal requests were not held up behind the slow ones
    logged = _logged_hashes(tmp_path / "v.db")
    assert sorted(logged) == sorted(acked)
    _fault_line("slow clients (8 dripping bodies + 40 normal)", f"8x 408, 40x 200 in {normal_s:.2f} s", len(acked), len(logged))


# ---------------------------------------------------------------------- 2x overload
def test_twice_the_capacity_gets_429s_and_loses_nothing(endpoint, tmp_path):
    router, vlog = build_router(str(_safeguard_config(tmp_path, f"http://127.0.0.1:{endpoint.server_port}/v1", "block")),
                                log_path=str(tmp_path / "v.db"), cache_size=0)
    max_pending, waves = 4, 5
    outcomes: list[tuple[int, str]] = []
    endpoint.delay_s = 0.15
    try:
        with BackgroundServer(create_app(router, max_pending=max_pending, workers=max_pending)) as srv, \
                httpx.Client(base_url=srv.url, timeout=30, limits=httpx.Limits(max_connections=64)) as client, \
                ThreadPoolExecutor(2 * max_pending) as pool:
            def one(text: str) -> tuple[int, str]:
                r = client.post("/v1/moderations", json={"input": text})
                if r.status_code == 429:
                    assert r.headers["retry-after"] == "1"
                return r.status_code, text_hash(text)
            for w in range(waves):
                outcomes += pool.map(one, [f"overload wave {w} request {i}" for i in range(2 * max_pending)])
    finally:
        endpoint.delay_s = 0.0
        vlog.close()
        router.close()
    ok = [h for s, h in outcomes if s == 200]
    shed = [h for s, h in outcomes if s == 429]
    assert len(ok) + len(shed) == len(outcomes) == 2 * max_pending * waves
    assert ok and shed
    logged = _logged_hashes(tmp_path / "v.db")
    assert sorted(logged) == sorted(ok)  # every 200 logged; no 429'd text logged
    _fault_line("2x overload (8 concurrent vs max_pending 4, 5 waves)", f"{len(ok)}x 200, {len(shed)}x 429",
                len(ok), len(logged), shed_logged=len(set(shed) & set(logged)))


# ---------------------------------------------------------------------- kill -9 under load
_SERVER = textwrap.dedent(
    """
    import sys, threading
    from safecascade.router.serve_setup import build_router
    from safecascade.router.server import BackgroundServer, create_app
    router, vlog = build_router(sys.argv[1], log_path=sys.argv[2], cache_size=0)
    srv = BackgroundServer(create_app(router, max_pending=64, workers=4)).start()
    print(srv.port, flush=True)
    threading.Event().wait()
    """
)


def _cheap_config(dir_: Path) -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    cfg = {"name": "kill9", "policies": {"jailbreak": "builtin:jailbreak"},
           "tiers": [{"name": "heuristic", "type": "heuristic", "threshold": 0.5}]}
    path = dir_ / "router.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_kill_minus_9_under_load_50_times_loses_nothing(tmp_path):
    rounds = int(os.environ.get("SAFECASCADE_KILL9_ROUNDS", "50"))
    cfg = _cheap_config(tmp_path / "cfg")
    script = tmp_path / "server.py"
    script.write_text(_SERVER)
    db = tmp_path / "kill9.db"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = random.Random(19)
    acked: set[str] = set()
    sent: set[str] = set()
    in_flight_at_kill = 0
    t_start = time.monotonic()
    for rnd in range(rounds):
        proc = subprocess.Popen([sys.executable, str(script), str(cfg), str(db)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, cwd=REPO)
        line = proc.stdout.readline()
        assert line.strip().isdigit(), proc.stderr.read().decode()[-2000:]
        url = f"http://127.0.0.1:{int(line)}"
        stop = threading.Event()
        lock = threading.Lock()
        errors = [0]

        def load(k: int) -> None:
            i = 0
            with httpx.Client(base_url=url, timeout=5) as client:
                while not stop.is_set():
                    texts = [f"round {rnd} worker {k} request {i} item {j}" for j in range(1 + i % 3)]
                    i += 1
                    with lock:
                        sent.update(text_hash(t) for t in texts)
                    try:
                        r = client.post("/v1/moderations", json={"input": texts})
                    except httpx.HTTPError:
                        with lock:
                            errors[0] += 1
                        return  # the server is gone
                    if r.status_code == 200:
                        with lock:
                            acked.update(x["safecascade"]["text_hash"] for x in r.json()["results"])

        threads = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.05, 0.35))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(10)
        proc.stdout.close()
        proc.stderr.close()
        in_flight_at_kill += errors[0]
    logged = set(_logged_hashes(db))  # the restart after the last kill
    lost = acked - logged
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged verdicts lost"
    assert logged <= sent  # nothing that was never sent
    assert len(acked) >= rounds * 5
    elapsed = time.monotonic() - t_start
    _fault_line(f"kill -9 under load x{rounds} (4 clients, heuristic-only serve, restart on the same log)",
                f"0 lost; {in_flight_at_kill} requests cut by the kill", len(acked), len(acked & logged),
                logged_unacknowledged=len(logged - acked), seconds=round(elapsed, 1))
