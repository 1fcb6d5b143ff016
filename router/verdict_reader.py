"""Reading the verdict log: rows in log order (filtered by time, tier, or after a cursor), counts,
and the replay-tier CSV export of a tier's logged scores.

Any number of processes may read a log while one writes it
(:class:`~safecascade.router.verdict_log.VerdictLog`); a reader sees the rows committed to SQLite.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Sequence

from safecascade.router.verdict_record import COLUMNS, JSON_COLUMNS, connect


def _to_epoch(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{name} must be a unix time (float) or a datetime, got {type(value).__name__}")


class VerdictReader:
    """Read access to a verdict log (any process, while a writer is running)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"verdict log not found: {self.path}")

    def _conn(self) -> sqlite3.Connection:
        conn = connect(self.path)
        conn.execute("PRAGMA query_only=ON")
        return conn

    @staticmethod
    def _where(since: Any, until: Any, tier: str | None, after_id: int | None) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        lo, hi = _to_epoch(since, "since"), _to_epoch(until, "until")
        if lo is not None:
            clauses.append("ts >= ?")
            params.append(lo)
        if hi is not None:
            clauses.append("ts < ?")
            params.append(hi)
        if tier is not None:
            clauses.append("tier = ?")
            params.append(tier)
        if after_id is not None:
            clauses.append("id > ?")
            params.append(int(after_id))
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def count(self, *, since: Any = None, until: Any = None, tier: str | None = None) -> int:
        """Number of rows (optionally in ``[since, until)`` and/or decided by ``tier``)."""
        where, params = self._where(since, until, tier, None)
        conn = self._conn()
        try:
            return int(conn.execute(f"SELECT COUNT(*) FROM verdicts{where}", params).fetchone()[0])
        finally:
            conn.close()

    def record_ids(self) -> set[str]:
        """Every record id in the log (crash tests)."""
        conn = self._conn()
        try:
            return {r[0] for r in conn.execute("SELECT record_id FROM verdicts")}
        finally:
            conn.close()

    def iter_rows(self, since: Any = None, *, until: Any = None, tier: str | None = None, after_id: int | None = None,
                  limit: int | None = None, chunk: int = 1000) -> Iterator[dict[str, Any]]:
        """Rows in log order as dicts (JSON columns decoded). ``since`` / ``until``: unix time or
        datetime; ``tier``: the deciding tier; ``after_id``: resume after a row ``id`` (a cursor
        for incremental readers such as the retrain loop)."""
        where, params = self._where(since, until, tier, after_id)
        sql = f"SELECT id, {', '.join(COLUMNS)} FROM verdicts{where} ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        conn = self._conn()
        try:
            cur = conn.execute(sql, params)
            names = [c[0] for c in cur.description]
            while True:
                batch = cur.fetchmany(chunk)
                if not batch:
                    break
                for values in batch:
                    row = dict(zip(names, values))
                    for c in JSON_COLUMNS:
                        row[c] = json.loads(row[c]) if row[c] is not None else None
                    row["flagged"] = bool(row["flagged"])
                    row["cache_hit"] = bool(row["cache_hit"])
                    yield row
        finally:
            conn.close()

    def export_replay_csv(self, out: str | os.PathLike[str], *, tier: str = "safeguard",
                          policies: Sequence[str] | None = None, since: Any = None, decided_only: bool = True,
                          include_text: bool = False) -> int:
        """Write the replay-tier CSV (``text_hash``, one score column per policy, ``<policy>_rule_ids``)
        from the scores ``tier`` gave in logged rows; returns the number of rows written.

        ``decided_only``: only rows ``tier`` decided (else any row where it scored). The newest
        row wins for a repeated text hash. ``include_text`` adds a ``text`` column (rows logged
        with ``store_text``). The file loads with ``type: replay`` (:mod:`safecascade.tiers.replay`).
        """
        latest: dict[str, tuple[dict[str, float], dict[str, list[str]], str | None]] = {}
        seen_policies: list[str] = []
        for row in self.iter_rows(since, tier=tier if decided_only else None):
            trace = next((t for t in row["path"] if t.get("tier") == tier and t.get("scores")), None)
            if trace is None:
                continue
            scores = {k: float(v) for k, v in trace["scores"].items()}
            for pol in scores:
                if pol not in seen_policies:
                    seen_policies.append(pol)
            rules = {k: list(v) for k, v in (trace.get("rule_ids") or {}).items()}
            latest[row["text_hash"]] = (scores, rules, row.get("text"))
        cols = list(policies) if policies is not None else seen_policies
        out_path = Path(out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        header = ["text_hash"] + (["text"] if include_text else []) + cols + [f"{p}_rule_ids" for p in cols]
        with out_path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for h, (scores, rules, text) in latest.items():
                writer.writerow([h] + ([text or ""] if include_text else [])
                                + [("" if scores.get(p) is None else repr(scores[p])) for p in cols]
                                + [";".join(rules.get(p, ())) for p in cols])
        return len(latest)
