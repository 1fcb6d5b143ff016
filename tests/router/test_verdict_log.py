"""Verdict log: rows, append-only, WAL, journal replay, kill -9 durability, replay-CSV export."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from safecascade.router.cascade import Router
from safecascade.router.verdict_log import VerdictLog, VerdictLogBusy
from safecascade.router.verdict_reader import VerdictReader
from safecascade.router.verdict_record import INSERT_SQL, decision_record, row_values
from safecascade.tiers.replay import ReplayTier
from tests.router.serving_helpers import JAILBREAK, write_router_config

REPO = Path(__file__).resolve().parents[2]
TEXTS = {"hello there": 0.1, "sneaky request": 0.9, "borderline": 0.55}


@pytest.fixture
def router(tmp_path):
    r = Router.load(write_router_config(tmp_path / "cfg", TEXTS, rule_ids={"sneaky request": "JB1.a;JB2.b"}))
    yield r
    r.close()


def test_one_row_per_decision_with_scores_path_and_hashes(router, tmp_path):
    log = VerdictLog(tmp_path / "v.db")
    router.sinks.append(log)
    decisions = router.classify_batch(list(TEXTS) + [JAILBREAK])
    log.flush()
    rows = list(log.iter_rows())
    log.close()
    assert len(rows) == 4 == log.stats()["rows_written"]
    by_hash = {r["text_hash"]: r for r in rows}
    for d in decisions:
        row = by_hash[d.text_hash]
        assert (row["action"], row["tier"], row["reason"]) == (d.action, d.tier, d.reason)
        assert row["score"] == pytest.approx(d.score)
        assert row["config_hash"] == router.config_hash and row["policy_hashes"] == router.policy_hashes
        assert [t["tier"] for t in row["path"]] == [t.tier for t in d.path]
        assert row["text"] is None  # store_text is off by default
        assert row["flagged"] is d.flagged
    sneaky = by_hash[decisions[1].text_hash]
    assert sneaky["policies"]["jailbreak"]["rule_ids"] == ["JB1.a", "JB2.b"]
    assert sneaky["path"][1]["scores"] == {"jailbreak": 0.9} and sneaky["path"][1]["info"] == {"source": "replay"}
    jb = by_hash[decisions[3].text_hash]
    assert jb["tier"] == "heuristic" and "HR-DAN-1" in jb["policies"]["jailbreak"]["rule_ids"]


def test_store_text_and_cost_column(tmp_path, router):
    log = VerdictLog(tmp_path / "v.db", store_text=True)
    d = router.classify("hello there")
    log(d, "hello there")
    rec = decision_record(d, "hello there")  # store_text defaults to False in the record builder too
    assert rec["text"] is None
    log.close()
    (row,) = list(VerdictReader(tmp_path / "v.db").iter_rows())
    assert row["text"] == "hello there" and row["cost"] == {}


def test_wal_mode_and_append_only(tmp_path, router):
    with VerdictLog(tmp_path / "v.db") as log:
        log(router.classify("hello there"), "hello there")
    conn = sqlite3.connect(tmp_path / "v.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE verdicts SET action='block'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM verdicts")
    assert conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 1


def test_one_writer_at_a_time(tmp_path):
    log = VerdictLog(tmp_path / "v.db")
    with pytest.raises(VerdictLogBusy):
        VerdictLog(tmp_path / "v.db")
    log.close()
    VerdictLog(tmp_path / "v.db").close()  # the lock is released on close


def test_closed_log_refuses_appends(tmp_path, router):
    log = VerdictLog(tmp_path / "v.db")
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log(router.classify("hello there"), "hello there")


def test_journal_replay_skips_torn_line_and_is_idempotent(tmp_path, router):
    d = router.classify("hello there")
    recs = [decision_record(d, None) for _ in range(3)]
    db = tmp_path / "v.db"
    with VerdictLog(db) as log:  # one record already committed
        pass
    conn = sqlite3.connect(db)
    conn.execute(INSERT_SQL, row_values(recs[0]))
    conn.commit()
    conn.close()
    seg = Path(str(db) + ".journal.d") / "seg-00000007.jsonl"
    lines = [json.dumps(r) + "\n" for r in recs]
    seg.write_text("".join(lines) + lines[0][:40])  # a crash mid-line leaves a torn tail
    log = VerdictLog(db)
    assert (log.replayed, log.replayed_new, log.torn_lines) == (3, 2, 1)
    assert not seg.exists()
    log.close()
    with VerdictLog(db) as again:  # a clean close leaves no journal behind
        assert again.replayed == 0
    assert VerdictReader(db).record_ids() == {r["record_id"] for r in recs}


def test_deferred_ack_and_concurrent_appends(tmp_path, router):
    log = VerdictLog(tmp_path / "v.db", batch_size=16, flush_interval_s=0.01)
    d = router.classify("hello there")
    ids: list[str] = []
    lock = threading.Lock()

    def work():
        mine = [log(d, None) for _ in range(50)]
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with log.deferred_ack():
        more = [log(d, None) for _ in range(100)]
        assert log.stats()["acknowledged"] <= 300
    assert log.stats()["acknowledged"] == 300  # the block's exit waited for all of them
    log.flush()
    assert log.count() == 300
    assert log.reader().record_ids() == set(ids) | set(more)
    assert log.stats()["write_batches"] >= 2  # batched, not one transaction per row
    log.close()


def test_iter_rows_filters(tmp_path, router):
    log = VerdictLog(tmp_path / "v.db")
    router.sinks.append(log)
    router.classify_batch(["hello there", JAILBREAK])
    mid = time.time()
    time.sleep(0.01)
    router.classify("sneaky request")
    log.close()
    reader = VerdictReader(tmp_path / "v.db")
    assert reader.count() == 3
    assert reader.count(tier="heuristic") == 1 and reader.count(tier="safeguard") == 2
    assert [r["reason"] for r in reader.iter_rows(since=mid)] == ["last_tier"]
    first = list(reader.iter_rows(limit=1))
    assert [r["id"] for r in reader.iter_rows(after_id=first[0]["id"])] == [2, 3]
    with pytest.raises(TypeError):
        list(reader.iter_rows(since="yesterday"))
    with pytest.raises(FileNotFoundError):
        VerdictReader(tmp_path / "nope.db")


def test_export_replay_csv_round_trips_through_the_replay_tier(tmp_path, router):
    log = VerdictLog(tmp_path / "v.db")
    router.sinks.append(log)
    originals = router.classify_batch(list(TEXTS) + [JAILBREAK, "hello there"])
    out = tmp_path / "export" / "safeguard.csv"
    n = log.export_replay_csv(out, tier="safeguard")
    log.close()
    assert n == 3  # three distinct texts the safeguard decided; the heuristic-decided one is not exported
    tier = ReplayTier.from_csv(out, name="replayed", policies=["jailbreak"])
    for text, score in TEXTS.items():
        (res,) = tier.classify([text])
        assert res.scores == {"jailbreak": pytest.approx(score)}
    (sneaky,) = tier.classify(["sneaky request"])
    assert sneaky.rule_ids == {"jailbreak": ("JB1.a", "JB2.b")}
    assert tier.classify([JAILBREAK])[0].error is not None
    # a router over the exported file reproduces the logged safeguard verdicts
    cfg = write_router_config(tmp_path / "cfg2", {})
    (tmp_path / "cfg2" / "replay.csv").write_bytes(out.read_bytes())
    again = Router.load(cfg).classify_batch(list(TEXTS))
    assert [d.action for d in again] == [d.action for d in originals[:3]]


_WRITER = textwrap.dedent(
    """
    import sys, threading
    from safecascade.router.cascade import Router
    from safecascade.router.verdict_log import VerdictLog
    cfg, db, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
    router = Router.load(cfg)
    decisions = router.classify_batch(["hello there", "sneaky request", "borderline", "x" * 500])
    log = VerdictLog(db, batch_size=64 if interval < 1 else 10**6, flush_interval_s=interval)
    out = threading.Lock()
    def work(k):
        i = 0
        while True:
            rid = log.append(decisions[(i + k) % len(decisions)], "t")
            with out:
                sys.stdout.write(rid + "\\n")
                sys.stdout.flush()
            i += 1
    for k in range(4):
        threading.Thread(target=work, args=(k,), daemon=True).start()
    threading.Event().wait()
    """
)


@pytest.mark.slow
def test_kill_minus_9_loses_no_acknowledged_record(tmp_path):
    cfg = write_router_config(tmp_path / "cfg", TEXTS)
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    db = tmp_path / "crash.db"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = random.Random(6)
    acked: set[str] = set()
    journal_only_at_kill = 0
    for round_ in range(5):
        interval = 30.0 if round_ % 2 else 0.05  # odd rounds: nothing reaches SQLite before the kill
        proc = subprocess.Popen([sys.executable, str(script), str(cfg), str(db), str(interval)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, b"")), daemon=True)
        reader.start()
        deadline = time.monotonic() + 30
        while not lines and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert lines, f"writer produced no acknowledgement: {proc.stderr.read().decode()[-2000:]}"
        time.sleep(rng.uniform(0.3, 0.8))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        reader.join(10)
        got = {ln.decode().strip() for ln in lines if re.fullmatch(rb"[0-9a-f]{32}\n", ln)}
        assert len(got) >= 5
        acked |= got
        in_sqlite = VerdictReader(db).record_ids() if db.exists() else set()
        journal_only_at_kill += len(acked - in_sqlite)  # acknowledged, only in the journal at this kill
    log = VerdictLog(db)  # replays whatever the last kill left in the journal
    log.close()
    in_db = VerdictReader(db).record_ids()
    missing = acked - in_db
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged records lost"
    assert journal_only_at_kill > 0  # the replay path was exercised
    assert len(in_db) >= len(acked)
    print(f"crash test: 5 kill -9 rounds, {len(acked)} acknowledged, {len(in_db)} rows, 0 lost, "
          f"{journal_only_at_kill} acknowledged records were only in the journal at a kill")
