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
:class:`~safecascade.router.verdict_reader.VerdictReader`. The record and its table are in
:mod:`safecascade.router.verdict_record`, the journal's on-disk framing in
:mod:`safecascade.router.verdict_journal`; ``safecascade verdicts {count,export}`` is the command line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from safecascade.router.decision import Decision
from safecascade.router.verdict_journal import (JOURNAL_HEADER, encode_record, frame_batch, fsync_dir, list_segments,
                                                read_segment, segment_path, sync_file, write_all)
from safecascade.router.verdict_reader import VerdictReader
from safecascade.router.verdict_record import INSERT_SQL, VerdictLogError, connect, decision_record, init_schema, row_values

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX: no cross-process guard
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

_SYNC_MODES = ("fsync", "os", "none")


class VerdictLogBusy(RuntimeError):
    """Another process (or another VerdictLog in this one) is writing this log."""


class _Ticket:
    """One record on its way through the journal: its sequence number, its line, and (once the
    journal thread wrote its batch) done / the write error."""

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
            self._db = connect(self.path)
            init_schema(self._db, self.path)
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
        if fcntl is None:  # pragma: no cover - non-POSIX: no cross-process guard
            return fh
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
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
    def _next_segment_number(self) -> int:
        segs = list_segments(self.journal_dir)
        return (segs[-1][0] + 1) if segs else 1

    def _open_segment(self, number: int) -> tuple[Any, int]:
        """A new, framed segment (header line written): ``(file, size)``. A number is only ever
        reopened after a failed open, so whatever a failed attempt left in it is discarded."""
        fh = open(segment_path(self.journal_dir, number), "ab", buffering=0)
        try:
            if os.fstat(fh.fileno()).st_size:
                os.ftruncate(fh.fileno(), 0)
            self._write_all(fh, JOURNAL_HEADER)
            if self.sync == "fsync":
                self._sync_file(fh)
                fsync_dir(self.journal_dir)
        except BaseException:
            fh.close()
            raise
        return fh, len(JOURNAL_HEADER)

    _write_all = staticmethod(write_all)  # attributes, so a fault test can replace them on one log
    _sync_file = staticmethod(sync_file)

    def _replay_journal(self) -> None:
        """Insert every record of leftover journal segments (a crash), then delete them."""
        for _, seg in list_segments(self.journal_dir):
            read = read_segment(seg)
            self.torn_lines += read.torn_lines
            self.uncommitted += read.uncommitted
            records = read.records
            before = self._db.total_changes
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(INSERT_SQL, [row_values(r) for r in records])
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

    def _check_open(self) -> None:
        if self._closing or self._closed:
            raise VerdictLogError(f"verdict log {self.path} is closed")
        if self._poisoned is not None:
            raise VerdictLogError(f"verdict log {self.path} refuses appends after an unrecoverable journal "
                                  f"write error ({self._poisoned}); reopen it")

    def _enqueue(self, records: Sequence[dict[str, Any]]) -> list[_Ticket]:
        """Queue ``records`` for the journal as one group (never split across journal batches)."""
        lines = [encode_record(r) for r in records]
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
                    data = frame_batch([t.line for t in batch])
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
                segment_path(self.journal_dir, no).unlink()
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
            rows = [row_values(rec) for _, rec, _ in batch if rec is not None]
            try:
                if rows:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        self._db.executemany(INSERT_SQL, rows)
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
