"""The one Tier protocol, its result type, and the registry that finds tiers by type name."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable


@dataclass(frozen=True, kw_only=True)
class TierResult:
    """What one tier says about one text.

    ``scores`` maps each policy the tier covers to a probability-like score in [0, 1]
    (higher = more likely a violation). ``error`` is set (and ``scores`` may be empty) when the
    tier could not judge the text; the router then applies the tier's ``on_error`` action.
    ``info`` carries tier-specific facts worth logging (windows, truncation, tokens, rationale).
    """

    scores: Mapping[str, float]
    rule_ids: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    error: str | None = None
    warnings: tuple[str, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)
    cost: Mapping[str, float] = field(default_factory=dict)
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        for policy, score in self.scores.items():
            if not (0.0 <= float(score) <= 1.0):
                raise ValueError(f"TierResult score for policy {policy!r} is {score!r}, outside [0, 1]")


@runtime_checkable
class Tier(Protocol):
    """A classifier in the cascade.

    ``name`` is the tier's name in the router config; ``policies`` the policy names it scores.
    ``classify`` takes a batch of texts and returns one :class:`TierResult` per text, in order.
    It must not raise for a bad individual text: it returns a result with ``error`` set instead.
    """

    name: str
    policies: tuple[str, ...]

    def classify(self, texts: Sequence[str]) -> list[TierResult]: ...


@dataclass(frozen=True, kw_only=True)
class TierSpec:
    """Everything a tier factory gets: its config entry plus what the router resolved for it."""

    name: str
    type: str
    options: Mapping[str, Any]
    policies: Mapping[str, Any]  # policy name -> safecascade.router.policy.Policy
    base_dir: Path  # directory that relative paths in ``options`` are resolved against


TierFactory = Callable[[TierSpec], Tier]

# Built-in tiers are named as "module:attribute" so their heavy imports happen only when used.
_BUILTIN: dict[str, str] = {
    "heuristic": "safecascade.tiers.heuristic:HeuristicTier.from_spec",
    "replay": "safecascade.tiers.replay:ReplayTier.from_spec",
    "fast": "safecascade.tiers.fast:FastTier.from_spec",
    "static": "safecascade.tiers.static:StaticTier.from_spec",
    "safeguard": "safecascade.tiers.safeguard:SafeguardTier.from_spec",
}
_REGISTERED: dict[str, TierFactory] = {}


def register_tier(type_name: str) -> Callable[[TierFactory], TierFactory]:
    """Decorator: make ``factory(spec) -> Tier`` available as ``type: <type_name>`` in configs."""

    def deco(factory: TierFactory) -> TierFactory:
        _REGISTERED[type_name] = factory
        return factory

    return deco


def available_tiers() -> list[str]:
    """Type names a router config may use."""
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def _resolve(target: str) -> TierFactory:
    module_name, _, attr_path = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


def create_tier(spec: TierSpec) -> Tier:
    """Build the tier that ``spec.type`` names; unknown names fail with the known ones listed."""
    if spec.type in _REGISTERED:
        factory = _REGISTERED[spec.type]
    elif spec.type in _BUILTIN:
        factory = _resolve(_BUILTIN[spec.type])
    else:
        raise ValueError(f"unknown tier type {spec.type!r} for tier {spec.name!r}; known: {', '.join(available_tiers())}")
    return factory(spec)
