"""The one Decision type the router returns, and the per-tier trace it carries."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Literal, Mapping

Action = Literal["allow", "block"]
Outcome = Literal["allow", "block", "escalate", "error", "skipped"]


@dataclass(frozen=True, kw_only=True)
class PolicyVerdict:
    """One policy's verdict inside a Decision: the deciding tier's score and cited rule ids, and
    the sub-categories the tiers found."""

    score: float | None
    flagged: bool
    rule_ids: tuple[str, ...] = ()
    sub_categories: tuple[str, ...] = ()
    """The policy's own rule ids (``HR1.b`` weapons, ``PI3.a`` exfiltration, ...) that a tier found in
    the text on its way: detected by a heuristic rule (its ``cites``) or cited by the safeguard.
    Empty where only the learned tiers judged the policy (they score the policy as a whole)."""


@dataclass(frozen=True, kw_only=True)
class TierTrace:
    """What one tier did for this text: its scores, latency and outcome."""

    tier: str
    outcome: Outcome
    scores: Mapping[str, float] = field(default_factory=dict)
    rule_ids: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    latency_ms: float = 0.0
    error: str | None = None
    warnings: tuple[str, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)
    cost: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Decision:
    """The router's verdict on one text.

    ``action`` is ``"allow"`` or ``"block"``; ``tier`` names the deciding tier (or ``"input"``
    when an input rule decided, e.g. empty text); ``reason`` says why that tier decided
    (``band``, ``last_tier``, ``empty_input``, ``input_too_large``, ``fallback:<action>``, ...);
    ``path`` holds every tier that ran, in order, with its scores and latency.
    """

    action: Action
    tier: str
    reason: str
    score: float
    policies: Mapping[str, PolicyVerdict]
    path: tuple[TierTrace, ...]
    latency_ms: float
    text_hash: str
    config_name: str
    config_hash: str
    policy_hashes: Mapping[str, str]
    warnings: tuple[str, ...] = ()
    cache_hit: bool = False

    @property
    def flagged(self) -> bool:
        """True when the text is blocked."""
        return self.action == "block"

    @property
    def provisional(self) -> bool:
        """True for a post-moderation provisional verdict (reason ``provisional``): the cheaper
        tiers' verdict, returned at once while the last tier runs in the background; the final
        Decision follows (see :mod:`safecascade.router.postmod`)."""
        return self.reason == "provisional"

    @property
    def rule_ids(self) -> tuple[str, ...]:
        """All rule ids cited for flagged policies by the deciding tier."""
        out: list[str] = []
        for verdict in self.policies.values():
            out.extend(verdict.rule_ids)
        return tuple(dict.fromkeys(out))

    @property
    def cost(self) -> dict[str, float]:
        """Costs summed over every tier that ran (tokens, calls, ... as each tier reports them)."""
        total: dict[str, float] = {}
        for trace in self.path:
            for key, value in trace.cost.items():
                total[key] = total.get(key, 0.0) + float(value)
        return total

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (what the CLI and the HTTP service print)."""
        d = asdict(self)
        d["flagged"] = self.flagged
        d["provisional"] = self.provisional
        d["cost"] = self.cost
        return d


def json_default(obj: Any) -> Any:
    """``json.dumps(..., default=json_default)``: what a Decision's dict or a verdict-log record may
    hold besides JSON types (a tier's ``info`` can carry anything): dataclasses as dicts, sets and
    tuples as lists, bytes as UTF-8 text, numpy scalars as numbers, anything else as ``str``."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
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
