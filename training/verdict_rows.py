"""Teacher rows of the SQLite verdict log (:mod:`safecascade.router.verdict_log`): the logged
decisions in which the teacher tier scored the text.

The *teacher* is the tier whose verdicts the fast tier is distilled from - by default the tier
named ``safeguard`` (the last tier of the default router). A logged row is a **teacher row**
when the teacher's trace in the row's ``path`` carries scores, i.e. when the teacher ran and
answered: rows it decided, and rows where it ran without deciding (a later tier decided).
Rows the teacher never reached (decided by the heuristic / static / fast tiers, input rules,
budget refusals) and rows where it failed (no scores) are not teacher rows.

Each teacher row becomes a soft training row: the teacher's probability per policy is the
target (see :func:`safecascade.training.train_rows.rows_from_log`), times a weight.
The *label* of a teacher row (used when a held-back slice is evaluated) is the teacher's
verdict: the logged per-policy ``flagged`` when the teacher decided the row, else its score
against 0.5.

Texts are in the log only when the verdict log was opened with ``store_text=True`` (off by
default, a privacy setting). Rows without text cannot be embedded: they are counted
(:attr:`ExtractStats.no_text`) and skipped, never an error. A text logged several times
(repeats, cache hits) is used once: the newest row wins.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from safecascade.router.verdict_reader import VerdictReader

log = logging.getLogger(__name__)

DEFAULT_TEACHER = "safeguard"
_SQLITE_MAGIC = b"SQLite format 3\x00"


def is_verdict_log(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is an SQLite file (the verdict log) rather than a CSV."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


@dataclass(frozen=True, kw_only=True)
class TeacherRow:
    """One logged decision in which the teacher tier scored the text."""

    id: int
    record_id: str
    ts: float
    text_hash: str
    text: str | None
    scores: Mapping[str, float]  # teacher probability per policy
    labels: Mapping[str, int]  # teacher verdict per policy (0/1)
    decided: bool  # the teacher was the deciding tier
    rule_ids: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)  # the teacher's trace info (verdict details)
    policy_hashes: Mapping[str, str] = field(default_factory=dict)
    config_hash: str | None = None


@dataclass(frozen=True, kw_only=True)
class ExtractStats:
    """What :func:`teacher_rows` saw in the log."""

    rows_read: int = 0  # log rows scanned
    teacher_rows: int = 0  # rows where the teacher scored (before dedupe / text filter)
    decided: int = 0  # ... of which the teacher decided
    ran_not_deciding: int = 0  # ... of which another tier decided after the teacher scored
    not_reached: int = 0  # rows the teacher never ran on (earlier tier / input rule / budget)
    teacher_failed: int = 0  # the teacher ran but gave no scores (error / fallback)
    no_text: int = 0  # teacher rows without a stored text (unusable for training)
    duplicates: int = 0  # older rows of a text logged again (the newest row is kept)
    usable: int = 0  # distinct texts with text and teacher scores

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _teacher_trace(path: Sequence[Mapping[str, Any]] | None, tier: str) -> Mapping[str, Any] | None:
    for trace in path or ():
        if trace.get("tier") == tier:
            return trace
    return None


def teacher_rows(path: str | os.PathLike[str], *, tier: str = DEFAULT_TEACHER, policies: Sequence[str] | None = None,
                 decided_only: bool = False, since: Any = None,
                 rows: Iterable[Mapping[str, Any]] | None = None) -> tuple[list[TeacherRow], ExtractStats]:
    """The teacher rows of a verdict log, oldest first (by time, then row id), one per text.

    ``policies``: keep scores for these policies only (rows with none of them are skipped as
    ``not_reached``); ``decided_only``: only rows the teacher decided; ``since``: unix time or
    datetime lower bound. Rows without text are *returned* (``text=None``) and counted in
    :attr:`ExtractStats.no_text`, so that callers can report them; see
    :func:`safecascade.training.train_rows.rows_from_log`.
    ``rows``: already-read log rows (``iter_rows`` dicts) instead of reading ``path``.
    """
    wanted = set(policies) if policies is not None else None
    counts = dict.fromkeys(ExtractStats().to_dict(), 0)
    latest: dict[str, TeacherRow] = {}
    source = rows if rows is not None else VerdictReader(path).iter_rows(since)
    for row in source:
        counts["rows_read"] += 1
        trace = _teacher_trace(row.get("path"), tier)
        if trace is None:
            counts["not_reached"] += 1
            continue
        scores = {k: float(v) for k, v in (trace.get("scores") or {}).items()
                  if v is not None and (wanted is None or k in wanted)}
        if not scores:  # the teacher failed, or scored none of the wanted policies
            counts["not_reached" if trace.get("scores") else "teacher_failed"] += 1
            continue
        decided = row.get("tier") == tier
        if decided_only and not decided:
            counts["not_reached"] += 1
            continue
        counts["teacher_rows"] += 1
        counts["decided" if decided else "ran_not_deciding"] += 1
        logged = row.get("policies") or {}
        labels = {}
        for pol, s in scores.items():
            pv = logged.get(pol) or {}
            if decided and isinstance(pv.get("flagged"), bool):
                labels[pol] = int(pv["flagged"])
            else:
                labels[pol] = int(s >= 0.5)
        text = row.get("text")
        if text is not None and not str(text).strip():
            text = None
        if text is None:
            counts["no_text"] += 1
        tr = TeacherRow(id=int(row.get("id") or 0), record_id=str(row.get("record_id", "")), ts=float(row.get("ts") or 0.0),
                        text_hash=str(row.get("text_hash", "")), text=text, scores=scores, labels=labels, decided=decided,
                        rule_ids={k: tuple(v) for k, v in (trace.get("rule_ids") or {}).items()},
                        info=dict(trace.get("info") or {}), policy_hashes=dict(row.get("policy_hashes") or {}),
                        config_hash=row.get("config_hash"))
        prev = latest.get(tr.text_hash)
        if prev is not None:
            counts["duplicates"] += 1
            # keep the newest row; but a row with text beats a newer one without (same text hash)
            if (prev.text is not None and tr.text is None) or (prev.ts, prev.id) > (tr.ts, tr.id):
                continue
        latest[tr.text_hash] = tr
    out = sorted(latest.values(), key=lambda r: (r.ts, r.id))
    counts["usable"] = sum(1 for r in out if r.text is not None)
    stats = ExtractStats(**counts)
    if stats.no_text:
        log.warning("verdict log %s: %d teacher row(s) have no stored text and cannot be used for training "
                    "(open the VerdictLog with store_text=True to keep texts)", path, stats.no_text)
    return out, stats
