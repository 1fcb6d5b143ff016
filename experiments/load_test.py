"""Load test of ``safecascade serve`` on loopback: throughput and latency at concurrency 1, 8, 32,
and behaviour at 2x the escalation budget.

The server runs in its own process (``python -m safecascade.cli serve``) with the verdict log on
(fsync'd journal) and the cache off (every request runs the cascade).

* Concurrency phase: the heuristic + fast path by default (``experiments/configs/heuristic_fast.yaml``:
  heuristic -> static -> fast, the embedded default router without the safeguard, default
  models from the cache dir). ``--config replay`` uses heuristic -> replay instead (the replay
  tier stands in for the safeguard with recorded scores: service + heuristic + log overhead only).
* Budget phase: heuristic -> replay with ``--budget-rps``, offered at twice that rate (every
  text that the heuristic does not block wants the last tier), open loop.

The client is a bounded async httpx client (a fixed pool of ``concurrency`` workers, or a fixed
offered rate with at most 32 outstanding). After each server stops, the log's row count must
equal the number of acknowledged (200) decisions.

    nice -n 10 python experiments/load_test.py                  # ~1-2 min on 2 cores
    python experiments/load_test.py --config replay --requests 200 --budget-seconds 3 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "experiments" / "configs" / "heuristic_fast.yaml"


def _texts(n: int) -> list[tuple[str, int]]:
    from safecascade.training.datasets import load_benchmark

    seen, out = set(), []
    for split in ("test", "val", "train"):
        try:
            examples = load_benchmark("jailbreak", split)
        except Exception:
            continue
        for ex in examples:
            if ex.text.strip() and ex.text not in seen and len(ex.text) < 6000:
                seen.add(ex.text)
                out.append((ex.text, int(ex.label)))
            if len(out) >= n:
                return out
    if not out:
        raise SystemExit("no benchmark texts found (training/data)")
    return out


def _write_config(dir_: Path, texts: list[tuple[str, int]]) -> Path:
    from safecascade.hashing import text_hash

    with (dir_ / "replay.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text_hash", "jailbreak"])
        for text, label in texts:
            w.writerow([text_hash(text), 0.9 if label else 0.1])
    cfg = {"name": "loadtest", "policies": {"jailbreak": "builtin:jailbreak"},
           "tiers": [{"name": "heuristic", "type": "heuristic", "bands": {"default": [None, 0.98]}},
                     {"name": "safeguard", "type": "replay", "options": {"path": "replay.csv", "missing": "allow"},
                      "threshold": 0.5, "on_error": "block"}]}
    path = dir_ / "router.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``safecascade serve`` in a subprocess."""

    def __init__(self, config: Path, db: Path, *extra: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = db
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "safecascade.cli", "serve", "--config", str(config), "--port", str(self.port),
             "--log", str(db), "--cache-size", "0", "--max-pending", "256", *extra],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start:\n{self.proc.stdout.read().decode()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100.0 * len(s) + 0.5)) - 1))]


class _Recorder:
    """Sends moderation requests and records latency, status, reason and deciding tier
    (shared by the closed- and open-loop clients)."""

    def __init__(self, client: httpx.AsyncClient):
        self.client = client
        self.lat: list[float] = []
        self.statuses: dict[int, int] = {}
        self.reasons: dict[str, int] = {}
        self.tiers: dict[str, int] = {}

    async def send(self, text: str) -> None:
        t0 = time.perf_counter()
        r = None
        try:
            r = await self.client.post("/v1/moderations", json={"input": text})
            code = r.status_code
        except httpx.HTTPError:
            code = -1
        self.lat.append((time.perf_counter() - t0) * 1000)
        self.statuses[code] = self.statuses.get(code, 0) + 1
        if code == 200 and r is not None:
            info = r.json()["results"][0]["safecascade"]
            self.reasons[info["reason"]] = self.reasons.get(info["reason"], 0) + 1
            self.tiers[info["tier"]] = self.tiers.get(info["tier"], 0) + 1

    def summary(self) -> dict[str, Any]:
        return {"ok": self.statuses.get(200, 0), "status": self.statuses, "reasons": self.reasons, "tiers": self.tiers,
                "p50_ms": _pct(self.lat, 50), "p99_ms": _pct(self.lat, 99),
                "mean_ms": statistics.fmean(self.lat) if self.lat else float("nan")}


def _client(url: str, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=60)


async def _closed_loop(url: str, texts: list[str], concurrency: int, n: int) -> dict[str, Any]:
    """``concurrency`` workers, each sending its next request when the previous one returns."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(texts[i % len(texts)])
    async with _client(url, concurrency) as client:
        rec = _Recorder(client)

        async def worker():
            while True:
                try:
                    text = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await rec.send(text)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": n, "wall_s": wall, "rps": n / wall, **rec.summary()}


async def _open_loop(url: str, texts: list[str], rate: float, seconds: float, max_concurrency: int) -> dict[str, Any]:
    """Requests at a fixed offered rate (``rate`` per second) for ``seconds``, at most
    ``max_concurrency`` outstanding (a request that would exceed it is counted as dropped)."""
    n = int(rate * seconds)
    dropped = 0
    sem = asyncio.Semaphore(max_concurrency)
    async with _client(url, max_concurrency) as client:
        rec = _Recorder(client)

        async def one(text):
            async with sem:
                await rec.send(text)

        tasks = []
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if sem.locked():
                dropped += 1
                continue
            tasks.append(asyncio.create_task(one(texts[i % len(texts)])))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    return {"offered_rps": rate, "seconds": seconds, "requests": n, "sent": n - dropped, "dropped_by_client": dropped,
            "wall_s": wall, **rec.summary()}


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def _inprocess(classify, texts: list[str], concurrency: int, n: int) -> dict[str, Any]:
    """``concurrency`` asyncio tasks calling ``classify(text)`` back to back (no HTTP)."""
    lat: list[float] = []
    it = iter(range(n))

    async def worker():
        for i in it:
            t0 = time.perf_counter()
            await classify(texts[i % len(texts)])
            lat.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"requests": n, "wall_s": wall, "rps": n / wall, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}


def _microbatch(config: Path, texts: list[str], concurrency: int, n: int, max_wait_ms: float, tmpdir: Path,
                max_batch: int | None = None) -> list[dict[str, Any]]:
    """In process, ``concurrency`` tasks: ``router.aclassify`` vs :class:`MicroBatcher` (same router,
    verdict log with fsync as a sink, cache off)."""
    from safecascade.router.cascade import Router
    from safecascade.router.microbatch import MicroBatcher
    from safecascade.router.verdict_log import VerdictLog
    from safecascade.router.verdict_reader import VerdictReader

    out = []
    for mode in ("aclassify", "microbatch"):
        router = Router.load(config)
        db = tmpdir / f"mb-{mode}.db"
        vlog = VerdictLog(db)
        router.sinks.append(vlog)
        try:
            asyncio.run(_inprocess(router.aclassify, texts, 4, 40))  # warm-up
            if mode == "aclassify":
                r = asyncio.run(_inprocess(router.aclassify, texts, concurrency, n))
            else:
                async def run():
                    mb = MicroBatcher(router, max_batch=max_batch or concurrency, max_wait_ms=max_wait_ms)
                    res = await _inprocess(mb.aclassify, texts, concurrency, n)
                    res["mean_batch"] = mb.stats()["mean_batch"]
                    return res
                r = asyncio.run(run())
        finally:
            vlog.close()
            router.close()
        r["mode"] = mode
        r["log_rows"] = VerdictReader(db).count()
        out.append(r)
    return out


def _print_concurrency(args: argparse.Namespace, results: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    cfg = results["config"]
    print(f"\nLoad test: safecascade serve --workers {args.workers} {' '.join(args.serve_arg)} "
          f"(config {cfg['name']}: {cfg['tiers']}; verdict log fsync, cache off), loopback, "
          f"{os.cpu_count()} CPUs shared by client and server, {results['texts']} distinct benchmark texts\n")
    print("| concurrency | requests | 200 | other | throughput (req/s) | p50 ms | p99 ms | deciding tiers |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        other = sum(v for k, v in r["status"].items() if k != 200)
        tiers = ", ".join(f"{k} {v}" for k, v in sorted(r["tiers"].items(), key=lambda kv: -kv[1]))
        print(f"| {r['concurrency']} | {r['requests']} | {r['ok']} | {other} | {r['rps']:.0f} | {r['p50_ms']:.1f} "
              f"| {r['p99_ms']:.1f} | {tiers} |")
    cl = results["concurrency_log"]
    print(f"\nverdict log: {cl['rows']} rows for {cl['acknowledged']} acknowledged responses "
          f"({'OK, nothing lost' if cl['rows'] == cl['acknowledged'] else 'MISMATCH'})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=400, help="requests per concurrency level (max 5000)")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--texts", type=int, default=600, help="distinct benchmark texts to cycle through")
    ap.add_argument("--budget-rps", type=float, default=25.0, help="escalation budget for the budget phase")
    ap.add_argument("--budget-seconds", type=float, default=4.0, help="duration of the budget phase (max 30)")
    ap.add_argument("--workers", type=int, default=4, help="server router threads (serve --workers)")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG),
                    help="router YAML for the concurrency phase, or 'replay' (heuristic -> replay); "
                         "default: experiments/configs/heuristic_fast.yaml")
    ap.add_argument("--skip-budget", action="store_true", help="only the concurrency phase")
    ap.add_argument("--microbatch", action="store_true",
                    help="instead: in process, router.aclassify vs MicroBatcher at the highest concurrency level")
    ap.add_argument("--max-wait-ms", type=float, default=2.0, help="MicroBatcher max wait (with --microbatch)")
    ap.add_argument("--max-batch", type=int, default=None, help="MicroBatcher max batch (default: the concurrency)")
    ap.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for safecascade serve in the concurrency phase (repeatable)")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    n = max(1, min(args.requests, 5000))
    seconds = max(1.0, min(args.budget_seconds, 30.0))
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]

    from safecascade.router.verdict_reader import VerdictReader

    data = _texts(args.texts)
    texts = [t for t, _ in data]
    results: dict[str, Any] = {"texts": len(texts), "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="safecascade-load-") as tmp:
        tmpdir = Path(tmp)
        replay_config = _write_config(tmpdir, data)
        config = replay_config if args.config == "replay" else Path(args.config).resolve()
        config_name = yaml.safe_load(config.read_text()).get("name", config.stem)
        tiers = " -> ".join(t["name"] for t in yaml.safe_load(config.read_text())["tiers"])
        results["config"] = {"path": str(config), "name": config_name, "tiers": tiers}

        if args.microbatch:
            c = max(levels)
            mb = _microbatch(config, texts, c, n, args.max_wait_ms, tmpdir, args.max_batch)
            results["microbatch"] = mb
            print(f"\nIn-process, {c} asyncio tasks, MicroBatcher(max_batch={args.max_batch or c}, max_wait_ms={args.max_wait_ms:g}), config {config_name} ({tiers}), verdict log fsync, cache off, "
                  f"{os.cpu_count()} CPUs:\n")
            print("| mode | requests | throughput (texts/s) | p50 ms | p99 ms | mean batch | log rows |")
            print("|---|---:|---:|---:|---:|---:|---:|")
            for r in mb:
                mean_batch = f"{r['mean_batch']:.1f}" if "mean_batch" in r else "1"
                print(f"| {r['mode']} | {r['requests']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                      f"| {mean_batch} | {r['log_rows']} |")
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2, default=str))
            return 0 if all(r["log_rows"] == r["requests"] + 40 for r in mb) else 1

        # --- throughput / latency by concurrency
        db = tmpdir / "verdicts.db"
        server = Server(config, db, "--workers", str(args.workers), *args.serve_arg)
        acked = 0
        try:
            warm = asyncio.run(_closed_loop(server.url, texts, 4, 40))
            acked += warm["ok"]
            rows = []
            for c in levels:
                r = asyncio.run(_closed_loop(server.url, texts, c, n))
                acked += r["ok"]
                rows.append(r)
        finally:
            server.stop()
        logged = VerdictReader(db).count()
        results["concurrency"] = rows
        results["concurrency_log"] = {"acknowledged": acked, "rows": logged}

        if args.skip_budget:
            _print_concurrency(args, results, rows)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2, default=str))
            return 0 if logged == acked else 1

        # --- 2x the escalation budget (every escalated text wants the last tier)
        config = replay_config
        escalating = [t for t, _ in data]
        rate = 2 * args.budget_rps
        db2 = tmpdir / "verdicts-budget.db"
        server = Server(config, db2, "--workers", str(args.workers), "--budget-rps", str(args.budget_rps), "--budget-burst", str(args.budget_rps))
        try:
            b = asyncio.run(_open_loop(server.url, escalating, rate, seconds, 32))
            metrics = httpx.get(server.url + "/metrics").text
        finally:
            server.stop()
        b["budget_rps"] = args.budget_rps
        b["metrics_budget_refusals"] = _metric(metrics, "safecascade_budget_refusals_total")
        b["log_rows"] = VerdictReader(db2).count()
        results["budget"] = b

    _print_concurrency(args, results, rows)
    cl = results["concurrency_log"]
    print(f"\nEscalation budget {b['budget_rps']:g}/s (burst {b['budget_rps']:g}), offered {b['offered_rps']:g} req/s "
          f"for {b['seconds']:g} s (every text escalates past the heuristic unless a rule blocks it):\n")
    print("| sent | 200 | last tier (granted) | budget_exhausted | heuristic band | p50 ms | p99 ms | /metrics refusals | log rows |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rs = b["reasons"]
    print(f"| {b['sent']} | {b['ok']} | {rs.get('last_tier', 0)} | {rs.get('budget_exhausted', 0)} | {rs.get('band', 0)} "
          f"| {b['p50_ms']:.1f} | {b['p99_ms']:.1f} | {b['metrics_budget_refusals']:.0f} | {b['log_rows']} |")
    ok = b["log_rows"] == b["ok"] and cl["rows"] == cl["acknowledged"]
    print(f"\nnothing lost: {ok} (budget phase: {b['log_rows']} rows for {b['ok']} acknowledged; "
          f"client-side drops at the concurrency cap: {b['dropped_by_client']})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
