"""The verdict log's journal files: how records are framed on disk, and how a segment is read back.

A journal is a directory (``<db>.journal.d``) of segments ``seg-<8 digits>.jsonl``. A segment
starts with :data:`JOURNAL_HEADER`; each group commit is framed as ``{"_batch":n}``, the ``n``
record lines, ``{"_commit":n}`` (:func:`frame_batch`). :func:`read_segment` keeps only records of
batches whose commit line is there; a segment without the header (written before framing) is read
line by line. The writer that appends, rotates and repairs segments is
:class:`~safecascade.router.verdict_log.VerdictLog`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Mapping, Sequence

from safecascade.router.decision import json_default

JOURNAL_HEADER = b'{"_journal":2}\n'  # first line of a framed segment


def segment_path(journal_dir: Path, number: int) -> Path:
    """The file of segment ``number``."""
    return journal_dir / f"seg-{number:08d}.jsonl"


def list_segments(journal_dir: Path) -> list[tuple[int, Path]]:
    """The segments in ``journal_dir`` as ``(number, path)``, oldest first."""
    out = []
    for p in journal_dir.glob("seg-*.jsonl"):
        try:
            out.append((int(p.stem.split("-", 1)[1]), p))
        except ValueError:
            continue
    return sorted(out)


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One record as its journal line (ASCII JSON, newline-terminated)."""
    return json.dumps(record, default=json_default, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"


def frame_batch(lines: Sequence[bytes]) -> bytes:
    """One group commit as written to a segment: the batch line, the record lines, the commit line."""
    return b"".join([b'{"_batch":%d}\n' % len(lines), *lines, b'{"_commit":%d}\n' % len(lines)])


def write_all(fh: BinaryIO, data: bytes) -> None:
    """Write every byte of ``data`` to an unbuffered file (``write`` may write fewer)."""
    view = memoryview(data)
    while view:
        n = fh.write(view)
        view = view[n:]


def sync_file(fh: BinaryIO) -> None:
    """``fdatasync`` the file (``fsync`` where the platform has no ``fdatasync``)."""
    os.fdatasync(fh.fileno()) if hasattr(os, "fdatasync") else os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """``fsync`` a directory so a file created in it survives a crash (no-op where unsupported)."""
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


@dataclass
class SegmentRead:
    """What :func:`read_segment` found: the records to replay, torn lines (a line cut short or not
    JSON) and records of uncommitted batches (never acknowledged)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    torn_lines: int = 0
    uncommitted: int = 0


def read_segment(seg: Path) -> SegmentRead:
    """The records of one segment to replay: every committed batch of a framed segment; every
    complete line of a segment written before framing (no header line)."""
    out = SegmentRead()
    framed = False
    batch: list[dict[str, Any]] | None = None
    with seg.open("rb") as fh:
        for i, line in enumerate(fh):
            if i == 0 and line == JOURNAL_HEADER:
                framed = True
                continue
            if not line.endswith(b"\n"):
                out.torn_lines += 1
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                out.torn_lines += 1
                continue
            if not framed:
                out.records.append(obj)
            elif isinstance(obj, dict) and "_batch" in obj:
                out.uncommitted += len(batch or ())  # a batch that never got its commit line
                batch = []
            elif isinstance(obj, dict) and "_commit" in obj:
                out.records.extend(batch or ())
                batch = None
            elif batch is None:
                out.uncommitted += 1  # a record outside any batch
            else:
                batch.append(obj)
    out.uncommitted += len(batch or ())
    return out
