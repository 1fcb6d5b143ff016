"""Training rows: what the fast and static tiers' heads are fitted on.

A :class:`TrainRow` is one text with a per-policy target in [0, 1] and a weight. Labelled examples
give hard targets (:func:`rows_from_examples`); logged safeguard verdicts give soft targets
(:func:`rows_from_verdicts`: a replay-format CSV with ``text`` + one probability column per
policy, or the SQLite verdict log through :mod:`safecascade.training.verdict_rows`).
:func:`prepare_rows` joins both as a :class:`~safecascade.training.train_config.TrainConfig` says.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from safecascade.training.train_config import TrainConfig
from safecascade.training.verdict_rows import DEFAULT_TEACHER, TeacherRow, is_verdict_log, teacher_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainRow:
    """One training text: per-policy target in [0, 1] and a weight."""

    text: str
    targets: Mapping[str, float]
    weight: float = 1.0
    source: str = ""
    weak: tuple[str, ...] = ()  # the policies whose label is weak (see TrainConfig.weak_label_weight)


def rows_from_examples(examples: Iterable[Any], policy: str, *, source_weights: Mapping[str, float] | None = None,
                       policies: Sequence[str] = ()) -> list[TrainRow]:
    """Labelled examples -> hard-target rows.

    An example is either single-policy (``text``, ``label``, ``source``: the target is for
    ``policy``) or multi-policy (``text``, ``labels`` mapping policy -> 0/1, ``weight``, ``source``,
    as :class:`~safecascade.training.policy_data.PolicyExample`: the targets are its labels for
    ``policies``, and an example labelled for none of them is skipped)."""
    sw = dict(source_weights or {})
    pols = tuple(policies) or (policy,)
    rows = []
    for e in examples:
        src = getattr(e, "source", "")
        labels = getattr(e, "labels", None)
        if labels is None:
            rows.append(TrainRow(text=e.text, targets={policy: float(e.label)}, weight=sw.get(src, 1.0), source=src))
            continue
        targets = {p: float(labels[p]) for p in pols if p in labels}
        if targets:
            rows.append(TrainRow(text=e.text, targets=targets, weight=example_weight(e, sw), source=src,
                                 weak=tuple(p for p in getattr(e, "weak", ()) if p in targets)))
    return rows


def example_labels(examples: Sequence[Any], policy: str, *, first_policy: str) -> list[int]:
    """Each example's 0/1 label for ``policy``, or -1 where it has none (a multi-policy example not
    labelled for it, or a single-policy example when ``policy`` is not ``first_policy``)."""
    out = []
    for e in examples:
        labels = getattr(e, "labels", None)
        if labels is None:
            out.append(int(e.label) if policy == first_policy else -1)
        else:
            out.append(int(labels[policy]) if policy in labels else -1)
    return out


def split_labels(cfg: TrainConfig, examples: Sequence[Any]) -> dict[str, list[int]]:
    """``{policy: labels}`` of a val/test split for every policy of ``cfg`` (-1 = not labelled for
    it; see :func:`example_labels`); empty for an empty split. Policies no example is labelled
    for are left out."""
    if not examples:
        return {}
    out = {p: example_labels(examples, p, first_policy=cfg.policies[0]) for p in cfg.policies}
    return {p: v for p, v in out.items() if any(x >= 0 for x in v)}


def labelled(labels: Sequence[int]) -> np.ndarray:
    """Indices of the entries of ``labels`` that carry a label (not -1)."""
    return np.flatnonzero(np.asarray(labels, dtype=int) >= 0)


def rows_from_verdicts(path: str | Path, policies: Sequence[str], *, weight: float = 1.0) -> list[TrainRow]:
    """Logged safeguard verdicts (replay CSV: ``text`` + a probability column per policy, or the
    SQLite verdict log - see :func:`rows_from_log`) -> soft rows."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"verdict file not found: {p}")
    if is_verdict_log(p):
        return rows_from_log(p, policies, weight=weight)
    rows = []
    with p.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or ())
        if "text" not in cols:
            raise ValueError(f"{p}: training from verdicts needs a 'text' column (a text_hash alone cannot be embedded)")
        covered = [pol for pol in policies if pol in cols]
        if not covered:
            raise ValueError(f"{p}: no score column for any policy {list(policies)}")
        for i, r in enumerate(reader, start=2):
            t: dict[str, float] = {}
            for pol in covered:
                raw = (r.get(pol) or "").strip()
                if raw == "":
                    continue
                try:
                    v = float(raw)
                except ValueError:
                    raise ValueError(f"{p}:{i}: column {pol!r} is not a number: {raw!r}") from None
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"{p}:{i}: column {pol!r} = {v} is outside [0, 1]")
                t[pol] = v
            if t and (r.get("text") or "").strip():
                rows.append(TrainRow(text=r["text"], targets=t, weight=weight, source="verdicts"))
    log.info("read %d verdict rows from %s", len(rows), p)
    return rows


def to_train_rows(rows: Iterable[TeacherRow], policies: Sequence[str], *, weight: float = 1.0,
                  source: str = "verdict-log") -> list[TrainRow]:
    """Teacher rows with text -> soft :class:`TrainRow` s (the teacher's probability per policy is the target)."""
    out = []
    for r in rows:
        if r.text is None:
            continue
        targets = {p: float(min(1.0, max(0.0, r.scores[p]))) for p in policies if p in r.scores}
        if targets:
            out.append(TrainRow(text=r.text, targets=targets, weight=weight, source=source))
    return out


def rows_from_log(path: str | os.PathLike[str], policies: Sequence[str], *, weight: float = 1.0,
                  tier: str = DEFAULT_TEACHER, decided_only: bool = False) -> list[TrainRow]:
    """Soft training rows from a verdict log (what :func:`rows_from_verdicts` does for ``.db`` files).

    Raises ``ValueError`` when the log has teacher rows but none of them stored its text
    (training would silently ignore the log otherwise)."""
    p = Path(path)
    rows, stats = teacher_rows(p, tier=tier, policies=policies, decided_only=decided_only)
    out = to_train_rows(rows, policies, weight=weight)
    log.info("verdict log %s: %d soft rows (%s)", p, len(out), stats.to_dict())
    if stats.teacher_rows and not out:
        raise ValueError(f"{p}: {stats.teacher_rows} {tier} verdict row(s) but none has its text stored "
                         "(the log was written with store_text off); nothing to train on")
    return out


def data_hash(rows: Sequence[TrainRow]) -> str:
    """Content hash of the training rows (texts, targets, weights) for the card."""
    h = hashlib.sha256()
    for r in rows:
        h.update(r.text.encode("utf-8", errors="replace"))
        h.update(json.dumps(sorted(r.targets.items())).encode())
        h.update(f"{r.weight:.6g}".encode())
    return h.hexdigest()[:16]


def stratified_limit(examples: list[Any], limit: int) -> list[Any]:
    """First ``limit`` examples keeping the positive share (deterministic)."""
    def positive(e: Any) -> bool:
        labels = getattr(e, "labels", None)
        return (max(labels.values(), default=0) == 1) if labels is not None else e.label == 1

    pos = [e for e in examples if positive(e)]
    neg = [e for e in examples if not positive(e)]
    n_pos = max(1, round(limit * len(pos) / max(len(examples), 1)))
    return pos[:n_pos] + neg[: max(1, limit - n_pos)]


def example_weight(e: Any, source_weights: Mapping[str, float]) -> float:
    """An example's training weight before its weak labels: its source's weight times its own
    ``weight`` (1 where it has none)."""
    return source_weights.get(getattr(e, "source", ""), 1.0) * float(getattr(e, "weight", 1.0))


def example_weights(examples: Sequence[Any], policy: str, cfg: TrainConfig) -> np.ndarray:
    """Each example's training weight for one policy, as :func:`prepare_rows` weighs a training
    row: :func:`example_weight` (``cfg.source_weights``), times ``cfg.weak_label_weight`` where its
    label for ``policy`` is weak. For val texts (the lexical stack's fit, ``cfg.stack_weighted``)."""
    sw = dict(cfg.source_weights)
    return np.array([example_weight(e, sw) * (cfg.weak_label_weight if policy in getattr(e, "weak", ()) else 1.0)
                     for e in examples], dtype=np.float64)


def prepare_rows(cfg: TrainConfig, train: Sequence[Any], verdicts: str | Path | None) -> list[TrainRow]:
    """The training rows of a run: ``train`` examples (capped at ``cfg.limit``, weighted by
    ``cfg.source_weights``, weak labels by ``cfg.weak_label_weight``) for ``cfg.policies[0]``, plus
    the ``verdicts`` file's soft rows."""
    pol = cfg.policies[0]
    train = list(train)
    if cfg.limit is not None:
        train = stratified_limit(train, cfg.limit)
    rows = rows_from_examples(train, pol, source_weights=dict(cfg.source_weights), policies=cfg.policies)
    if cfg.weak_label_weight != 1.0:  # a row with a weak label: that label alone at the lower weight, the rest as before
        split: list[TrainRow] = []
        for r in rows:
            weak = {p: t for p, t in r.targets.items() if p in r.weak}
            rest = {p: t for p, t in r.targets.items() if p not in r.weak}
            if weak:
                split.append(replace(r, targets=weak, weight=r.weight * cfg.weak_label_weight))
            if rest:
                split.append(replace(r, targets=rest, weak=()) if weak else r)
        rows = split
    if verdicts:
        rows += rows_from_verdicts(verdicts, cfg.policies, weight=cfg.verdict_weight)
    if not rows:
        raise ValueError("no training data")
    return rows
