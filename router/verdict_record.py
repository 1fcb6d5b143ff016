"""The verdict log's record: what one logged decision holds, and the SQLite table that keeps it.

A *record* is a dict with the keys of :data:`COLUMNS` (built by :func:`decision_record`); the
columns in :data:`JSON_COLUMNS` are stored as JSON text. The table is append-only (triggers refuse
``UPDATE`` / ``DELETE``) and versioned (:data:`SCHEMA_VERSION` in the ``meta`` table). The writer
is :class:`~safecascade.router.verdict_log.VerdictLog`, the reader
:class:`~safecascade.router.verdict_reader.VerdictReader`.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from safecascade.router.decision import Decision, json_default

SCHEMA_VERSION = 1

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id     TEXT NOT NULL UNIQUE,
    ts            REAL NOT NULL,
    text_hash     TEXT NOT NULL,
    text          TEXT,
    action        TEXT NOT NULL,
    tier          TEXT NOT NULL,
    reason        TEXT NOT NULL,
    score         REAL,
    flagged       INTEGER NOT NULL,
    policies      TEXT NOT NULL,
    path          TEXT NOT NULL,
    config_name   TEXT,
    config_hash   TEXT,
    policy_hashes TEXT NOT NULL,
    latency_ms    REAL,
    cost          TEXT NOT NULL,
    cache_hit     INTEGER NOT NULL,
    warnings      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS verdicts_ts ON verdicts (ts);
CREATE INDEX IF NOT EXISTS verdicts_tier ON verdicts (tier, id);
CREATE INDEX IF NOT EXISTS verdicts_text_hash ON verdicts (text_hash);
CREATE TRIGGER IF NOT EXISTS verdicts_no_update BEFORE UPDATE ON verdicts
    BEGIN SELECT RAISE(ABORT, 'the verdict log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS verdicts_no_delete BEFORE DELETE ON verdicts
    BEGIN SELECT RAISE(ABORT, 'the verdict log is append-only'); END;
"""

COLUMNS = ("record_id", "ts", "text_hash", "text", "action", "tier", "reason", "score", "flagged", "policies",
           "path", "config_name", "config_hash", "policy_hashes", "latency_ms", "cost", "cache_hit", "warnings")
JSON_COLUMNS = ("policies", "path", "policy_hashes", "cost", "warnings")
INSERT_SQL = f"INSERT OR IGNORE INTO verdicts ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"


class VerdictLogError(RuntimeError):
    """A record could not be made durable (it was not acknowledged), or the log file is unusable."""


def decision_record(decision: Decision, text: str | None, *, store_text: bool = False,
                    record_id: str | None = None, ts: float | None = None) -> dict[str, Any]:
    """The log record (one future row) for a Decision. ``text`` is kept only if ``store_text``."""
    d = decision.to_dict()
    cost: dict[str, float] = {}
    for trace in decision.path:
        for key, value in trace.cost.items():
            try:
                cost[key] = cost.get(key, 0.0) + float(value)
            except (TypeError, ValueError):
                continue
    return {
        "record_id": record_id or uuid.uuid4().hex,
        "ts": time.time() if ts is None else float(ts),
        "text_hash": decision.text_hash,
        "text": text if (store_text and text is not None) else None,
        "action": decision.action,
        "tier": decision.tier,
        "reason": decision.reason,
        "score": decision.score,
        "flagged": 1 if decision.flagged else 0,
        "policies": d["policies"],
        "path": d["path"],
        "config_name": decision.config_name,
        "config_hash": decision.config_hash,
        "policy_hashes": dict(decision.policy_hashes),
        "latency_ms": decision.latency_ms,
        "cost": cost,
        "cache_hit": 1 if decision.cache_hit else 0,
        "warnings": list(decision.warnings),
    }


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=json_default, ensure_ascii=False, separators=(",", ":"))


def row_values(rec: Mapping[str, Any]) -> tuple:
    """A record as the parameters of :data:`INSERT_SQL` (JSON columns encoded)."""
    return tuple(_dumps(rec[c]) if c in JSON_COLUMNS else rec.get(c) for c in COLUMNS)


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the log's SQLite file (autocommit; waits up to 30 s for a lock)."""
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def init_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Switch to WAL with ``synchronous=FULL``, create the table if absent, and check the schema
    version; :class:`VerdictLogError` when WAL is refused or the version is not this code's."""
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise VerdictLogError(f"verdict log {path}: could not switch SQLite to WAL mode (got {mode!r})")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(SCHEMA_SQL)
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    elif row[0] != str(SCHEMA_VERSION):
        raise VerdictLogError(f"verdict log {path}: schema version {row[0]}, this code reads {SCHEMA_VERSION}")
