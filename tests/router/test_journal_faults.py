"""Verdict-log journal under write faults (disk full, I/O errors): a failed or partial write never
sits under a later acknowledged record, no record of a failed group is logged, and every
acknowledged record is logged (acknowledged == logged)."""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

import pytest

from safecascade.router.cascade import Router
from safecascade.router.verdict_log import VerdictLog
from safecascade.router.verdict_reader import VerdictReader
from safecascade.router.verdict_record import VerdictLogError
from tests.router.serving_helpers import write_router_config

TEXTS = {"hello there": 0.1, "sneaky request": 0.9}


@pytest.fixture
def decision(tmp_path):
    r = Router.load(write_router_config(tmp_path / "cfg", TEXTS))
    yield r.classify("sneaky request")
    r.close()


class FaultyFile:
    """Wraps the journal segment file: the armed write puts half its bytes on disk, then fails."""

    def __init__(self, fh, *, err: int = errno.ENOSPC):
        self.fh, self.err = fh, err
        self.armed = 0

    def write(self, data) -> int:
        if self.armed:
            self.armed -= 1
            self.fh.write(bytes(data[: len(data) // 2]))
            raise OSError(self.err, os.strerror(self.err))
        return self.fh.write(data)

    def fileno(self) -> int:
        return self.fh.fileno()

    def close(self) -> None:
        self.fh.close()


def _append_group(log: VerdictLog, decision, n: int) -> list[str]:
    """``n`` appends as one group (one journal batch: all acknowledged or none), as a request does."""
    with log.deferred_ack():
        return [log.append(decision) for _ in range(n)]


def _inject(log: VerdictLog, **kw) -> FaultyFile:
    faulty = FaultyFile(log._seg_fh, **kw)
    log._seg_fh = faulty  # the journal thread is idle between batches
    return faulty


def _journal_copy_replayed(log: VerdictLog, dest: Path) -> tuple[set[str], VerdictLog]:
    """What a crash now would leave: replay a copy of the journal alone into a fresh database."""
    jdir = Path(str(dest) + ".journal.d")
    shutil.copytree(log.journal_dir, jdir, ignore=shutil.ignore_patterns("writer.lock"))
    copy = VerdictLog(dest)
    copy.close()
    return VerdictReader(dest).record_ids(), copy


def test_disk_full_mid_write_truncates_and_later_acknowledged_records_survive(tmp_path, decision):
    db = tmp_path / "v.db"
    log = VerdictLog(db, flush_interval_s=60, batch_size=100_000)  # rows stay in the journal only
    acked = [log.append(decision)]
    faulty = _inject(log)
    faulty.armed = 1
    with pytest.raises(VerdictLogError, match="No space left"):
        _append_group(log, decision, 3)  # half of this group reaches the disk, then ENOSPC
    acked += _append_group(log, decision, 2)  # the disk has room again
    acked.append(log.append(decision))
    stats = log.stats()
    assert (stats["acknowledged"], stats["failed"], stats["write_errors"], stats["truncations"]) == (4, 3, 1, 1)
    in_journal, copy = _journal_copy_replayed(log, tmp_path / "crash.db")
    assert in_journal == set(acked)  # nothing merged, nothing torn, nothing of the failed group
    assert (copy.torn_lines, copy.uncommitted) == (0, 0)
    log.close()
    assert VerdictReader(db).record_ids() == set(acked)
    with VerdictLog(db) as again:
        assert again.replayed == 0 and again.count() == len(acked) == 4


def test_failed_fsync_rolls_the_written_batch_back(tmp_path, decision):
    db = tmp_path / "v.db"
    log = VerdictLog(db, flush_interval_s=60, batch_size=100_000)
    first = log.append(decision)
    real_sync, armed = log._sync_file, [1]

    def failing_sync(fh):
        if armed[0]:
            armed[0] -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_sync(fh)

    log._sync_file = failing_sync
    with pytest.raises(VerdictLogError, match="Input/output error"):
        _append_group(log, decision, 2)  # fully written, fsync fails: not acknowledged
    last = log.append(decision)
    in_journal, _ = _journal_copy_replayed(log, tmp_path / "crash.db")
    assert in_journal == {first, last}
    log.close()
    assert VerdictReader(db).record_ids() == {first, last}


def test_truncate_failure_moves_to_a_new_segment_and_replay_drops_the_failed_batch(tmp_path, decision, monkeypatch):
    db = tmp_path / "v.db"
    log = VerdictLog(db, flush_interval_s=60, batch_size=100_000)
    first = log.append(decision)
    seg_before = log._seg_no

    def no_truncate(fd, size):
        raise OSError(errno.EIO, "Input/output error")

    faulty = _inject(log)
    monkeypatch.setattr(os, "ftruncate", no_truncate)
    faulty.armed = 1
    with pytest.raises(VerdictLogError):
        _append_group(log, decision, 4)  # two complete record lines of it stay in the old segment
    monkeypatch.undo()
    assert log._seg_no == seg_before + 1 and log.stats()["refusing_appends"] is None
    later = log.append(decision)
    in_journal, copy = _journal_copy_replayed(log, tmp_path / "crash.db")
    assert in_journal == {first, later}
    assert copy.uncommitted >= 1  # the failed batch's complete lines were seen and dropped
    log.close()
    assert VerdictReader(db).record_ids() == {first, later}


def test_unrepairable_journal_refuses_appends_until_reopened(tmp_path, decision, monkeypatch):
    db = tmp_path / "v.db"
    log = VerdictLog(db, flush_interval_s=60, batch_size=100_000)
    first = log.append(decision)
    faulty = _inject(log, err=errno.EIO)
    monkeypatch.setattr(os, "ftruncate", lambda fd, size: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    monkeypatch.setattr(log, "_open_segment", lambda n: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    faulty.armed = 1
    with pytest.raises(VerdictLogError):
        log.append(decision)
    monkeypatch.undo()
    with pytest.raises(VerdictLogError, match="refuses appends"):  # fail closed: nothing more is acknowledged
        log.append(decision)
    assert log.stats()["refusing_appends"]
    log.close()
    with VerdictLog(db) as again:
        assert VerdictReader(db).record_ids() == {first}
        again.append(decision)  # reopened: appends work again


def test_deferred_group_is_all_or_nothing(tmp_path, decision):
    db = tmp_path / "v.db"
    log = VerdictLog(db)
    faulty = _inject(log)
    faulty.armed = 1
    ids = []
    with pytest.raises(VerdictLogError):
        with log.deferred_ack():  # one group, even with pauses between the appends
            ids.append(log.append(decision))
            time.sleep(0.2)
            ids += [log.append(decision), log.append(decision)]
    kept = log.append(decision)
    log.close()
    assert VerdictReader(db).record_ids() == {kept}  # no record of the failed group is logged
    assert log.stats()["acknowledged"] == 1 and log.stats()["failed"] == 3


def test_closed_log_in_a_library_router_raises(tmp_path):
    from safecascade.router.cascade import DecisionSinkError

    router = Router.load(write_router_config(tmp_path / "cfg", TEXTS))
    log = VerdictLog(tmp_path / "v.db")
    router.sinks.append(log)
    assert router.classify("hello there").action == "allow"
    log.close()
    with pytest.raises(DecisionSinkError, match="closed") as info:
        router.classify("sneaky request")
    assert isinstance(info.value.errors[0][1], VerdictLogError) and info.value.decisions[0].action == "block"
    calls = []
    router.on_sink_error = calls.append
    assert router.classify("sneaky request").action == "block" and len(calls) == 1
    assert VerdictReader(tmp_path / "v.db").count() == 1
    router.close()
