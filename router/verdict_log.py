"""The verdict log: one append-only SQLite (WAL) row per decision, written off the request path,
with nothing acknowledged ever lost.

Use it as a router sink::

    log = VerdictLog("verdicts.db")            # store_text=False: only the text hash is kept
    router.sinks.append(log)                   # every decision (cache hits included) is logged
    ...
    log.close()

**Acknowledged.** A record is *acknowledged* when :meth:`VerdictLog.append` (or the sink call)
returns without raising. At that moment its JSON line is in the current segment of the
log's journal (``<db>.journal.d/seg-*.jsonl``) and, with ``sync="fsync"`` (the default), the
segment has been ``fdatasync``-ed: the record survives ``kill -9`` of the process and an OS
crash or power loss. With ``sync="os"`` the line has been handed to the OS (survives ``kill -9``,
not an OS crash); ``sync="none"`` acknowledges before the journal write (tests, benchmarks).
Concurrent appends share one ``fdatasync`` (group commit).

A writer thread inserts journaled records into SQLite in batches (``batch_size`` records or
``flush_interval_s`` seconds, whichever comes first; ``INSERT OR IGNORE`` on a unique
``record_id``; ``synchronous=FULL``) and deletes a journal segment only after every record in
it is committed. When a log is opened, leftover segments (a crash) are replayed into SQLite
before anything new is appended, so after a reopen every acknowledged record is a row. A record
whose ``append`` had not returned when the process died may or may not be there (a torn last
journal line is skipped and counted in ``stats()["torn_lines"]``).

**Failed writes.** Each journal segment starts with a header line and each group commit is
framed: ``{"_batch":n}``, the ``n`` record lines, ``{"_commit":n}``. Replay keeps only records
of batches whose commit line is there (others are counted in ``stats()["uncommitted"]``). When a
journal write or its fsync fails (disk full, I/O error), every record of that batch gets the
error (never acknowledged, never logged) and the segment is truncated back to the end of the
last good batch, so no partial record can sit under a later acknowledged one. If the truncation
fails too, the journal moves to a new segment (the old one keeps the unframed tail, which replay
drops); if that fails as well, the log refuses every later append (``VerdictLogError``: the HTTP
service answers 503) until it is reopened. Segments written before framing (no header line) are
replayed line by line as before.

Within ``with log.deferred_ack(): router.classify_batch(texts)`` the sink calls of the current
thread do not wait one by one; the block's exit waits until all of them are acknowledged (one
``fdatasync`` for a whole batch instead of one per text). The HTTP service uses this, so a
response is only sent for decisions the log has acknowledged.

Rows are append-only (SQLite triggers refuse ``UPDATE`` / ``DELETE``). One process writes a log
at a time (an ``flock`` on the journal directory); any number may read it with
:class:`VerdictReader` (:func:`iter_rows`, :meth:`VerdictReader.export_replay_csv`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from safecascade.router.decision import Decision

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SYNC_MODES = ("fsync", "os", "none")
_JOURNAL_HEADER = b'{"_journal":2}\n'  # first line of a framed segment

_SCHEMA = """
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

_COLUMNS = ("record_id", "ts", "text_hash", "text", "action", "tier", "reason", "score", "flagged", "policies",
            "path", "config_name", "config_hash", "policy_hashes", "latency_ms", "cost", "cache_hit", "warnings")
_JSON_COLUMNS = ("policies", "path", "policy_hashes", "cost", "warnings")
_INSERT = f"INSERT OR IGNORE INTO verdicts ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"


class VerdictLogBusy(RuntimeError):
    """Another process (or another VerdictLog in this one) is writing this log."""


class VerdictLogError(RuntimeError):
    """A record could not be made durable (it was not acknowledged)."""


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    if hasattr(obj, "item"):  # numpy scalars
        try:
            return obj.item()
        except Exception:  # pragma: no cover - defensive
            pass
    return str(obj)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, ensure_ascii=False, separators=(",", ":"))


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


def _row_values(rec: Mapping[str, Any]) -> tuple:
    return tuple(_dumps(rec[c]) if c in _JSON_COLUMNS else rec.get(c) for c in _COLUMNS)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _init_schema(conn: sqlite3.Connection, path: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise VerdictLogError(f"verdict log {path}: could not switch SQLite to WAL mode (got {mode!r})")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(_SCHEMA)
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    elif row[0] != str(SCHEMA_VERSION):
        raise VerdictLogError(f"verdict log {path}: schema version {row[0]}, this code reads {SCHEMA_VERSION}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class _Ticket:
    __slots__ = ("seq", "line", "record", "error", "done")

    def __init__(self, seq: int, line: bytes, record: dict[str, Any]):
        self.seq = seq
        self.line = line
        self.record = record
        self.error: BaseException | None = None
        self.done = False


class VerdictLog:
    """Durable, batched, append-only verdict log; a router sink (``log(decision, text)``).

    ``path``: the SQLite file (created with its parent directories). ``store_text``: keep the
    (cleaned) text in the row - off by default, only the text hash is stored. ``batch_size`` /
    ``flush_interval_s``: when the writer thread commits to SQLite. ``sync``: what an
    acknowledgement means (see the module docstring). ``segment_bytes``: journal segment size
    before rotation.
    """

    def __init__(self, path: str | os.PathLike[str], *, store_text: bool = False, batch_size: int = 256,
                 flush_interval_s: float = 0.2, sync: str = "fsync", segment_bytes: int = 8 << 20):
        if sync not in _SYNC_MODES:
            raise ValueError(f"sync must be one of {_SYNC_MODES}, got {sync!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(flush_interval_s, (int, float)) or flush_interval_s < 0:
            raise ValueError(f"flush_interval_s must be a number >= 0, got {flush_interval_s!r}")
        self.path = Path(path)
        self.store_text = bool(store_text)
        self.batch_size = batch_size
        self.flush_interval_s = float(flush_interval_s)
        self.sync = sync
        self.segment_bytes = int(segment_bytes)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.journal_dir = Path(str(self.path) + ".journal.d")
        self.journal_dir.mkdir(exist_ok=True)
        self._lock_fh = self._take_lock()

        # counters
        self.appended = 0
        self.acknowledged = 0
        self.failed = 0
        self.rows_written = 0
        self.write_batches = 0
        self.replayed = 0
        self.replayed_new = 0
        self.torn_lines = 0
        self.uncommitted = 0
        self.db_errors = 0
        self.write_errors = 0
        self.truncations = 0
        self._poisoned: BaseException | None = None

        try:
            self._db = _connect(self.path)
            _init_schema(self._db, self.path)
            self._replay_journal()
            self._seg_no = self._next_segment_number()
            self._seg_fh, self._seg_size = self._open_segment(self._seg_no)
        except BaseException:
            self._release_lock()
            raise
        self._seg_max_seq = 0
        self._sealed: dict[int, int] = {}  # segment number -> highest seq in it

        self._jcv = threading.Condition()  # journal queue, acknowledgements
        self._dcv = threading.Condition()  # SQLite queue, commit watermark
        self._pending: list[_Ticket] = []
        self._db_queue: list[tuple[int, dict[str, Any] | None, int]] = []
        self._next_seq = 1
        self._committed_seq = 0
        self._flush_waiters = 0
        self._closing = False
        self._db_closing = False
        self._closed = False
        self._local = threading.local()
        self._journal_thread = threading.Thread(target=self._journal_loop, name=f"verdict-journal:{self.path.name}", daemon=True)
        self._db_thread = threading.Thread(target=self._db_loop, name=f"verdict-writer:{self.path.name}", daemon=True)
        self._journal_thread.start()
        self._db_thread.start()
        log.info("verdict log %s open (store_text=%s, sync=%s, replayed %d journaled records, %d new)",
                 self.path, self.store_text, self.sync, self.replayed, self.replayed_new)

    # ------------------------------------------------------------------ public API
    def __call__(self, decision: Decision, text: str | None = None) -> str:
        """Router sink: log ``decision`` (and ``text`` if ``store_text``); returns the record id."""
        return self.append(decision, text)

    def append(self, decision: Decision, text: str | None = None) -> str:
        """Append one decision; returns its ``record_id`` once the record is acknowledged
        (durable in the journal). Inside :meth:`deferred_ack` it returns at once and the block's
        exit waits. Raises :class:`VerdictLogError` when the journal write failed."""
        record = decision_record(decision, text, store_text=self.store_text)
        deferred = getattr(self._local, "deferred", None)
        if deferred is not None:
            self._check_open()
            deferred.append(record)
        else:
            self._wait(self._enqueue([record]))
        return record["record_id"]

    def append_many(self, items: Sequence[tuple[Decision, str | None]]) -> list[str]:
        """Append several decisions as one group (written in one journal batch: all of them are
        acknowledged or none); returns their record ids once acknowledged."""
        tickets = self._enqueue([decision_record(d, t, store_text=self.store_text) for d, t in items])
        self._wait(tickets)
        return [t.record["record_id"] for t in tickets]

    @contextlib.contextmanager
    def deferred_ack(self) -> Iterator[None]:
        """Within the block, this thread's appends do not wait one by one: they are collected and,
        on exit, written as one group (one journal batch, one fsync) and the block waits until
        they are acknowledged - all of them, or none: a failure raises :class:`VerdictLogError`
        and no record of the group is logged. If the block raises, nothing is written. Nestable
        (the outermost block writes)."""
        outer = getattr(self._local, "deferred", None)
        mine: list[dict[str, Any]] = []
        self._local.deferred = mine
        try:
            yield
        finally:
            self._local.deferred = outer
        if outer is not None:
            outer.extend(mine)
        elif mine:
            self._wait(self._enqueue(mine))

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until every record appended so far is committed to SQLite. Returns False on timeout."""
        with self._jcv:
            target = self._next_seq - 1
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._dcv:
            self._flush_waiters += 1
            self._dcv.notify_all()
            try:
                while self._committed_seq < target:
                    if not self._db_thread.is_alive():
                        return False
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._dcv.wait(0.5 if remaining is None else min(0.5, remaining))
            finally:
                self._flush_waiters -= 1
        return True

    def close(self, timeout: float | None = 60.0) -> None:
        """Flush, stop the writer threads, remove fully committed journal segments, release the lock."""
        if self._closed:
            return
        self.flush(timeout)
        with self._jcv:
            self._closing = True
            self._jcv.notify_all()
        self._journal_thread.join(timeout)
        with self._dcv:
            self._db_closing = True
            self._dcv.notify_all()
        self._db_thread.join(timeout)
        self._closed = True
        try:
            self._seg_fh.close()
        except OSError:  # pragma: no cover
            pass
        with self._dcv:
            done = self._committed_seq >= self._seg_max_seq
        if done:
            self._sealed[self._seg_no] = self._seg_max_seq
        self._delete_committed_segments()
        try:
            self._db.close()
        finally:
            self._release_lock()
        log.info("verdict log %s closed: %d rows written, %d failed", self.path, self.rows_written, self.failed)

    def __enter__(self) -> "VerdictLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def reader(self) -> "VerdictReader":
        """A reader on the same file (sees committed rows; call :meth:`flush` first for all)."""
        return VerdictReader(self.path)

    def count(self, **filters: Any) -> int:
        """Rows committed so far (see :meth:`VerdictReader.count`); :meth:`flush` first to include
        every acknowledged record."""
        return self.reader().count(**filters)

    def iter_rows(self, since: Any = None, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Committed rows in log order (see :meth:`VerdictReader.iter_rows`)."""
        return self.reader().iter_rows(since, **kwargs)

    def export_replay_csv(self, out: str | os.PathLike[str], **kwargs: Any) -> int:
        """See :meth:`VerdictReader.export_replay_csv` (flushes first)."""
        self.flush()
        return self.reader().export_replay_csv(out, **kwargs)

    replay_csv = export_replay_csv

    def stats(self) -> dict[str, Any]:
        """Counters for /healthz and /metrics."""
        with self._jcv:
            acknowledged, appended, failed = self.acknowledged, self.appended, self.failed
        with self._dcv:
            committed = self.rows_written
            queued = len(self._db_queue)
        return {"path": str(self.path), "store_text": self.store_text, "sync": self.sync, "appended": appended,
                "acknowledged": acknowledged, "failed": failed, "rows_written": committed, "queued": queued,
                "write_batches": self.write_batches, "replayed": self.replayed, "replayed_new": self.replayed_new,
                "torn_lines": self.torn_lines, "uncommitted": self.uncommitted, "db_errors": self.db_errors,
                "write_errors": self.write_errors, "truncations": self.truncations,
                "refusing_appends": None if self._poisoned is None else str(self._poisoned)}

    # ------------------------------------------------------------------ lock
    def _take_lock(self):
        fh = open(self.journal_dir / "writer.lock", "a+")
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - non-POSIX: no cross-process guard
            return fh
        except OSError:
            fh.close()
            raise VerdictLogBusy(f"verdict log {self.path} is already open for writing by another process") from None
        return fh

    def _release_lock(self) -> None:
        try:
            self._lock_fh.close()  # closing the fd drops the flock
        except OSError:  # pragma: no cover
            pass

    # ------------------------------------------------------------------ journal
    def _segments(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.journal_dir.glob("seg-*.jsonl"):
            try:
                out.append((int(p.stem.split("-", 1)[1]), p))
            except ValueError:
                continue
        return sorted(out)

    def _next_segment_number(self) -> int:
        segs = self._segments()
        return (segs[-1][0] + 1) if segs else 1

    def _open_segment(self, number: int) -> tuple[Any, int]:
        """A new, framed segment (header line written): ``(file, size)``. A number is only ever
        reopened after a failed open, so whatever a failed attempt left in it is discarded."""
        fh = open(self.journal_dir / f"seg-{number:08d}.jsonl", "ab", buffering=0)
        try:
            if os.fstat(fh.fileno()).st_size:
                os.ftruncate(fh.fileno(), 0)
            self._write_all(fh, _JOURNAL_HEADER)
            if self.sync == "fsync":
                self._sync_file(fh)
                _fsync_dir(self.journal_dir)
        except BaseException:
            fh.close()
            raise
        return fh, len(_JOURNAL_HEADER)

    @staticmethod
    def _write_all(fh: Any, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = fh.write(view)
            view = view[n:]

    @staticmethod
    def _sync_file(fh: Any) -> None:
        os.fdatasync(fh.fileno()) if hasattr(os, "fdatasync") else os.fsync(fh.fileno())

    def _replay_journal(self) -> None:
        """Insert every record of leftover journal segments (a crash), then delete them."""
        for _, seg in self._segments():
            records = self._read_segment(seg)
            before = self._db.total_changes
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(_INSERT, [_row_values(r) for r in records])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.replayed += len(records)
            self.replayed_new += self._db.total_changes - before
            seg.unlink()
        if self.torn_lines or self.uncommitted:
            log.warning("verdict log %s: %d torn journal line(s) and %d record(s) of uncommitted batches skipped "
                        "(never acknowledged)", self.path, self.torn_lines, self.uncommitted)

    def _read_segment(self, seg: Path) -> list[dict[str, Any]]:
        """The records of one segment to replay: every committed batch of a framed segment;
        every complete line of a segment written before framing (no header line)."""
        records: list[dict[str, Any]] = []
        framed = False
        batch: list[dict[str, Any]] | None = None
        with seg.open("rb") as fh:
            for i, line in enumerate(fh):
                if i == 0 and line == _JOURNAL_HEADER:
                    framed = True
                    continue
                if not line.endswith(b"\n"):
                    self.torn_lines += 1
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    self.torn_lines += 1
                    continue
                if not framed:
                    records.append(obj)
                elif isinstance(obj, dict) and "_batch" in obj:
                    self.uncommitted += len(batch or ())  # a batch that never got its commit line
                    batch = []
                elif isinstance(obj, dict) and "_commit" in obj:
                    records.extend(batch or ())
                    batch = None
                elif batch is None:
                    self.uncommitted += 1  # a record outside any batch
                else:
                    batch.append(obj)
        self.uncommitted += len(batch or ())
        return records

    def _check_open(self) -> None:
        if self._closing or self._closed:
            raise VerdictLogError(f"verdict log {self.path} is closed")
        if self._poisoned is not None:
            raise VerdictLogError(f"verdict log {self.path} refuses appends after an unrecoverable journal "
                                  f"write error ({self._poisoned}); reopen it")

    def _enqueue(self, records: Sequence[dict[str, Any]]) -> list[_Ticket]:
        """Queue ``records`` for the journal as one group (never split across journal batches)."""
        lines = [json.dumps(r, default=_json_default, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"
                 for r in records]
        tickets = []
        with self._jcv:
            self._check_open()
            for record, line in zip(records, lines):
                ticket = _Ticket(self._next_seq, line, record)
                self._next_seq += 1
                self.appended += 1
                if self.sync == "none":
                    ticket.done = True
                    self.acknowledged += 1
                tickets.append(ticket)
            self._pending.extend(tickets)
            self._jcv.notify_all()
        return tickets

    def _wait(self, tickets: Sequence[_Ticket]) -> None:
        if not tickets:
            return
        with self._jcv:
            while not all(t.done for t in tickets):
                if not self._journal_thread.is_alive():
                    raise VerdictLogError(f"verdict log {self.path}: journal writer stopped")
                self._jcv.wait(1.0)
        errors = [t.error for t in tickets if t.error is not None]
        if errors:
            raise VerdictLogError(f"verdict log {self.path}: {len(errors)} record(s) not written: {errors[0]}") from errors[0]

    def _journal_loop(self) -> None:
        while True:
            with self._jcv:
                while not self._pending and not self._closing:
                    self._jcv.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
            error: BaseException | None = self._poisoned
            if error is None:
                good = self._seg_size
                try:
                    data = b"".join([b'{"_batch":%d}\n' % len(batch), *(t.line for t in batch),
                                     b'{"_commit":%d}\n' % len(batch)])
                    self._write_all(self._seg_fh, data)
                    if self.sync == "fsync":
                        self._sync_file(self._seg_fh)
                    self._seg_size += len(data)
                    self._seg_max_seq = batch[-1].seq
                except BaseException as exc:  # disk full, I/O error: these records are not acknowledged
                    log.error("verdict log %s: journal write failed for %d record(s): %r", self.path, len(batch), exc)
                    error = exc
                    self._undo_write(good)
            seg_no = self._seg_no
            with self._jcv:
                for t in batch:
                    if error is not None:
                        t.error = error
                        self.failed += 1
                    elif self.sync != "none":
                        self.acknowledged += 1
                    t.done = True
                self._jcv.notify_all()
            with self._dcv:
                # failed records go through as placeholders so the commit watermark still advances
                self._db_queue.extend((t.seq, None if error is not None else t.record, seg_no) for t in batch)
                self._dcv.notify_all()
            if error is None and self._seg_size >= self.segment_bytes:
                self._rotate()

    def _undo_write(self, good: int) -> None:
        """After a failed write or fsync: cut the segment back to ``good`` bytes (the end of the
        last acknowledged batch); failing that, move to a new segment; failing that, refuse
        every later append."""
        self.write_errors += 1
        try:
            os.ftruncate(self._seg_fh.fileno(), good)
            if self.sync == "fsync":
                self._sync_file(self._seg_fh)
            self.truncations += 1
            log.error("verdict log %s: journal truncated back to its last acknowledged batch (%d bytes)", self.path, good)
            return
        except OSError as exc:
            log.error("verdict log %s: could not truncate the journal after a failed write: %r", self.path, exc)
        if self._rotate():
            log.error("verdict log %s: moved to journal segment %d; replay drops the failed batch", self.path, self._seg_no)
            return
        with self._jcv:
            self._poisoned = VerdictLogError(f"journal segment {self._seg_no} could not be repaired")
        log.critical("verdict log %s: the journal cannot be repaired; every later append is refused until it is reopened",
                     self.path)

    def _rotate(self) -> bool:
        try:
            new_no = self._seg_no + 1
            new_fh, new_size = self._open_segment(new_no)
        except OSError:
            log.exception("verdict log %s: could not open a new journal segment; keeping the current one", self.path)
            return False
        old_fh = self._seg_fh
        with self._dcv:
            self._sealed[self._seg_no] = self._seg_max_seq
        self._seg_fh, self._seg_no, self._seg_size = new_fh, new_no, new_size
        try:
            old_fh.close()
        except OSError:  # pragma: no cover
            pass
        return True

    def _delete_committed_segments(self) -> None:
        with self._dcv:
            done = [no for no, max_seq in self._sealed.items() if max_seq <= self._committed_seq]
            for no in done:
                del self._sealed[no]
        for no in done:
            try:
                (self.journal_dir / f"seg-{no:08d}.jsonl").unlink()
            except FileNotFoundError:
                pass
            except OSError:  # pragma: no cover - replayed (idempotently) next time
                log.warning("verdict log %s: could not delete journal segment %d", self.path, no)

    # ------------------------------------------------------------------ SQLite writer
    def _db_loop(self) -> None:
        backoff = 0.05
        while True:
            with self._dcv:
                deadline: float | None = None
                while True:
                    if self._db_closing or self._flush_waiters or len(self._db_queue) >= self.batch_size:
                        break
                    if self._db_queue:
                        now = time.monotonic()
                        if deadline is None:
                            deadline = now + self.flush_interval_s
                        if now >= deadline:
                            break
                        self._dcv.wait(deadline - now)
                    else:
                        self._dcv.wait()
                if not self._db_queue:
                    if self._db_closing:
                        return
                    self._dcv.wait(0.05)  # a flush with nothing queued yet: let the journal catch up
                    continue
                batch, self._db_queue = self._db_queue[: self.batch_size], self._db_queue[self.batch_size:]
            rows = [_row_values(rec) for _, rec, _ in batch if rec is not None]
            try:
                if rows:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        self._db.executemany(_INSERT, rows)
                        self._db.execute("COMMIT")
                    except BaseException:
                        with contextlib.suppress(sqlite3.Error):
                            self._db.execute("ROLLBACK")
                        raise
            except Exception:
                self.db_errors += 1
                log.exception("verdict log %s: SQLite write of %d rows failed; retrying (records stay in the journal)",
                              self.path, len(rows))
                with self._dcv:
                    self._db_queue[:0] = batch
                    if self._db_closing:
                        return  # the journal keeps them; replayed on the next open
                time.sleep(backoff)
                backoff = min(2.0, backoff * 2)
                continue
            backoff = 0.05
            with self._dcv:
                self._committed_seq = batch[-1][0]
                self.rows_written += len(rows)
                self.write_batches += 1
                self._dcv.notify_all()
            self._delete_committed_segments()


# ---------------------------------------------------------------------- reading
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
        conn = _connect(self.path)
        conn.execute("PRAGMA query_only=ON")
        return conn

    @staticmethod
    def _where(since: Any, until: Any, tier: str | None, after_id: int | None) -> tuple[str, list[Any]]:
        clauses, params = [], []
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
        sql = f"SELECT id, {', '.join(_COLUMNS)} FROM verdicts{where} ORDER BY id"
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
                    for c in _JSON_COLUMNS:
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


def iter_rows(path: str | os.PathLike[str], since: Any = None, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Shorthand for ``VerdictReader(path).iter_rows(since, ...)``."""
    return VerdictReader(path).iter_rows(since, **kwargs)


def export_replay_csv(path: str | os.PathLike[str], out: str | os.PathLike[str], **kwargs: Any) -> int:
    """Shorthand for ``VerdictReader(path).export_replay_csv(out, ...)``."""
    return VerdictReader(path).export_replay_csv(out, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m safecascade.router.verdict_log {count,export} DB ...``"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m safecascade.router.verdict_log", description=main.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("count", help="rows in the log")
    c.add_argument("db")
    c.add_argument("--tier")
    e = sub.add_parser("export", help="write the replay-tier CSV of a tier's logged scores")
    e.add_argument("db")
    e.add_argument("out")
    e.add_argument("--tier", default="safeguard")
    e.add_argument("--any", action="store_true", help="rows where the tier scored, not only those it decided")
    args = parser.parse_args(argv)
    reader = VerdictReader(args.db)
    if args.cmd == "count":
        print(reader.count(tier=args.tier))
    else:
        n = reader.export_replay_csv(args.out, tier=args.tier, decided_only=not args.any)
        print(f"{n} rows -> {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
