"""Unit-level fake tier: scores looked up from a table (text -> {policy: score}); sharpens router tests."""

from __future__ import annotations

from typing import Mapping, Sequence

from safecascade.tiers.base import TierResult, TierSpec, register_tier

CALLS: dict[str, list[str]] = {}


class TableTier:
    def __init__(self, name: str, policies: Sequence[str], table: Mapping[str, Mapping[str, float]], fail_on: Sequence[str] = (),
                 parts: Mapping[str, Mapping[str, float]] | None = None, blocks: Mapping[str, Mapping[str, float]] | None = None,
                 windowed: Sequence[str] = (), evidence: Mapping[str, Mapping[str, str]] | None = None,
                 unread: Sequence[str] = ()):
        self.name = name
        self.unread = set(unread)  # texts it does not read by design (no scores, info["not_read"])
        self.windowed = set(windowed)  # texts "read only in windows" (info["parts_skipped"])
        self.evidence = evidence or {}  # text -> {policy: the piece its score rests on}
        self.parts = parts or {}  # text -> its parts' highest scores (raise its allow_scores)
        self.blocks = blocks or {}  # text -> its block_scores (what the block band is tested on)
        self.policies = tuple(policies)
        self.table = table
        self.fail_on = set(fail_on)

    def classify(self, texts: Sequence[str]) -> list[TierResult]:
        CALLS.setdefault(self.name, []).extend(texts)
        if "__crash__" in texts:
            raise RuntimeError("tier crashed")
        out = []
        for t in texts:
            if t in self.fail_on:
                out.append(TierResult(scores={}, error="backend down"))
            elif t in self.unread:
                out.append(TierResult(scores={}, info={"not_read": "document"}))
            else:
                scores = dict(self.table.get(t, {p: 0.5 for p in self.policies}))
                allow = {p: max(v, scores.get(p, 0.0)) for p, v in self.parts.get(t, {}).items()}
                out.append(TierResult(scores=scores, rule_ids={p: ("X1.a",) for p in self.policies}, allow_scores=allow,
                                      block_scores=dict(self.blocks.get(t, {})), evidence=dict(self.evidence.get(t, {})),
                                      info={"parts_skipped": True} if t in self.windowed else {}))
        return out


@register_tier("table")
def _make(spec: TierSpec) -> TableTier:
    return TableTier(spec.name, list(spec.options.get("policies", spec.policies)), spec.options.get("table", {}),
                     spec.options.get("fail_on", ()), spec.options.get("parts"), spec.options.get("blocks"),
                     spec.options.get("windowed", ()), spec.options.get("evidence"), spec.options.get("unread", ()))
