"""The ``replay`` tier: recorded verdicts, looked up by text hash.

This is how the expensive tier is evaluated and tuned offline from logged verdicts, and how
tests exercise escalation without an LLM. Options: :class:`ReplayOptions` (``path``,
required; ``missing``); an unknown key or a wrong type fails at load.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence

from safecascade.hashing import text_hash
from safecascade.tiers.base import TierResult, TierSpec


@dataclass(frozen=True, kw_only=True)
class ReplayOptions:
    """Options of a ``type: replay`` tier."""

    path: str | Path
    """CSV with a ``text_hash`` or ``text`` column and a column per policy (score in [0, 1]);
    optional ``<policy>_rule_ids`` columns (``JB1.a;JB2.b``). Relative to the config. Required."""
    missing: Literal["error", "allow", "block"] = "error"
    """A text with no recorded verdict: ``error`` (the router's ``on_error`` applies), ``allow``
    (score 0) or ``block`` (score 1)."""


class ReplayTier:
    """Returns recorded scores keyed by ``text_hash`` (see :func:`safecascade.hashing.text_hash`)."""

    def __init__(self, *, name: str, policies: Sequence[str], records: Mapping[str, TierResult], missing: str = "error"):
        if missing not in ("error", "allow", "block"):
            raise ValueError(f"replay tier {name!r}: options.missing must be error|allow|block, got {missing!r}")
        self.name = name
        self.policies = tuple(policies)
        self.records = dict(records)
        self.missing = missing

    @classmethod
    def from_spec(cls, spec: TierSpec) -> "ReplayTier":
        """Build from a router config entry (options: :class:`ReplayOptions`)."""
        o = spec.options_as(ReplayOptions)
        if not str(o.path):
            raise ValueError(f"replay tier {spec.name!r}: options.path is required")
        p = Path(o.path) if Path(o.path).is_absolute() else spec.base_dir / o.path
        return cls.from_csv(p, name=spec.name, policies=list(spec.policies), missing=o.missing)

    @classmethod
    def from_csv(cls, path: str | Path, *, name: str = "replay", policies: Sequence[str], missing: str = "error") -> "ReplayTier":
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"replay tier {name!r}: verdict file not found: {p}")
        records: dict[str, TierResult] = {}
        with p.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = set(reader.fieldnames or ())
            if not ({"text_hash", "text"} & cols):
                raise ValueError(f"replay tier {name!r}: {p} needs a text_hash or text column")
            covered = [pol for pol in policies if pol in cols]
            if not covered:
                raise ValueError(f"replay tier {name!r}: {p} has no score column for any policy {list(policies)}")
            for i, row in enumerate(reader, start=2):
                key = row.get("text_hash") or text_hash(row["text"])
                scores, rules = {}, {}
                for pol in covered:
                    raw = (row.get(pol) or "").strip()
                    if raw == "":
                        continue
                    try:
                        scores[pol] = float(raw)
                    except ValueError:
                        raise ValueError(f"replay tier {name!r}: {p}:{i}: column {pol!r} is not a number: {raw!r}") from None
                    ids = (row.get(f"{pol}_rule_ids") or "").strip()
                    if ids:
                        rules[pol] = tuple(x for x in ids.split(";") if x)
                records[key] = TierResult(scores=scores, rule_ids=rules, info={"source": "replay"})
        return cls(name=name, policies=covered, records=records, missing=missing)

    def classify(self, texts: Sequence[str]) -> list[TierResult]:
        out = []
        for text in texts:
            rec = self.records.get(text_hash(text))
            if rec is not None:
                out.append(rec)
            elif self.missing == "error":
                out.append(TierResult(scores={}, error="no recorded verdict for this text"))
            else:
                value = 0.0 if self.missing == "allow" else 1.0
                out.append(TierResult(scores={p: value for p in self.policies}, info={"source": "replay-missing"}))
        return out
