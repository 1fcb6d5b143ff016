"""The one Tier protocol, its result type, the registry that finds tiers by type name, and the
typed-options check every tier type goes through (:func:`parse_options`)."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import types
import typing
from collections.abc import Mapping as MappingABC
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence, TypeVar, Union, runtime_checkable

O = TypeVar("O")


@dataclass(frozen=True, kw_only=True)
class TierResult:
    """What one tier says about one text.

    ``scores`` maps each policy the tier covers to a probability-like score in [0, 1]
    (higher = more likely a violation). ``error`` is set (and ``scores`` may be empty) when the
    tier could not judge the text; the router then applies the tier's ``on_error`` action. A tier
    that does not read a text by design returns no ``scores`` and says why in ``info["not_read"]``:
    the router passes the text on (the last tier of a cascade may not).
    ``info`` carries tier-specific facts worth logging (windows, truncation, tokens, rationale).
    ``allow_scores`` (per policy, optional): the score the tier's allow band is tested on instead
    of ``scores``; never lower than the policy's score, and they never block. A tier that also
    scores a text's parts (paragraphs, lines) raises it to their highest, so a part that looks like
    an attack passes the text on; ``math.inf`` means the band may not allow this text at all (a
    cheap tier that cannot see a short attack diluted in a long document may still block it, or
    pass it on).
    ``block_scores`` (per policy, optional): the score the tier's *block band* is tested on instead
    of ``scores``; never above the policy's score. A tier that cannot read a text well enough to
    block it (the static tier on a text mostly outside the Latin script) lowers it, so the text is
    passed on rather than blocked; the last tier of a cascade still decides on ``scores``.
    ``evidence`` (per policy, optional): the piece of a text the policy's score rests on (the
    window or line segment that scored highest), where the tier read the text in pieces. A later
    tier that adds an earlier tier's evidence (``combine``, router/combine.py) has the earlier
    tier score that piece when it could not judge the whole text. Kept in memory only: it is not
    on the Decision's trace, so no text reaches logs through it.
    """

    scores: Mapping[str, float]
    rule_ids: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    error: str | None = None
    warnings: tuple[str, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)
    cost: Mapping[str, float] = field(default_factory=dict)
    latency_ms: float = 0.0
    allow_scores: Mapping[str, float] = field(default_factory=dict)
    block_scores: Mapping[str, float] = field(default_factory=dict)
    evidence: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for policy, score in self.scores.items():
            if not (0.0 <= float(score) <= 1.0):
                raise ValueError(f"TierResult score for policy {policy!r} is {score!r}, outside [0, 1]")
        for policy, score in self.allow_scores.items():
            if not (0.0 <= float(score) <= 1.0 or score == math.inf):
                raise ValueError(f"TierResult allow score for policy {policy!r} is {score!r}, outside [0, 1] (or inf: never allowed)")
            if float(score) < float(self.scores.get(policy, 0.0)):
                raise ValueError(f"TierResult allow score for policy {policy!r} is {score!r}, below its score {self.scores[policy]!r}")
        for policy, score in self.block_scores.items():
            if not (0.0 <= float(score) <= float(self.scores.get(policy, 1.0))):
                raise ValueError(f"TierResult block score for policy {policy!r} is {score!r}: outside [0, its score {self.scores.get(policy)!r}]")

    def allow_score(self, policy: str) -> float:
        """The score ``policy``'s allow band is tested on (``allow_scores``, else ``scores``)."""
        return float(self.allow_scores.get(policy, self.scores[policy]))

    def block_score(self, policy: str) -> float:
        """The score ``policy``'s block band is tested on (``block_scores``, else ``scores``)."""
        return float(self.block_scores.get(policy, self.scores[policy]))


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


def classify_strings(texts: Sequence[Any], *, kind: str, name: str, log: logging.Logger,
                     score: Callable[[list[int]], dict[int, TierResult]]) -> list[TierResult]:
    """The shared skeleton of a model tier's ``classify``: an item that is not a ``str`` gets an
    error result; ``score(idx)`` scores the others (by their index in ``texts``); an exception in it
    gives each of them an error result (logged on ``log``), never an exception; an index it left
    out, ``not scored``."""
    out: list[TierResult | None] = [None if isinstance(t, str) else
                                    TierResult(scores={}, error=f"{kind} tier expects str, got {type(t).__name__}") for t in texts]
    idx = [i for i, t in enumerate(texts) if isinstance(t, str)]
    if idx:
        try:
            got = score(idx)
            for i in idx:
                out[i] = got.get(i)
        except Exception as exc:
            log.exception("%s tier %r failed on a batch", kind, name)
            for i in idx:
                out[i] = TierResult(scores={}, error=f"{kind} tier failed: {type(exc).__name__}: {exc}")
    return [r if r is not None else TierResult(scores={}, error="not scored") for r in out]


@dataclass(frozen=True, kw_only=True)
class TierSpec:
    """Everything a tier factory gets: its config entry plus what the router resolved for it."""

    name: str
    type: str
    options: Mapping[str, Any]
    """The ``options:`` mapping of the config entry, as written."""
    policies: Mapping[str, Any]  # policy name -> safecascade.router.policy.Policy
    base_dir: Path  # directory that relative paths in ``options`` are resolved against
    parsed_options: Any = None
    """``options`` as the tier type's options dataclass, set by :func:`create_tier` once checked
    (``None`` for a spec built by hand, and for a tier registered without an options class)."""

    def options_as(self, cls: typing.Type[O]) -> O:  # typing.Type: `type` here is the field above
        """The options as ``cls``: :attr:`parsed_options` when it is one, else ``options`` checked
        and parsed now (so a factory called directly, not through :func:`create_tier`, checks too)."""
        if isinstance(self.parsed_options, cls):
            return self.parsed_options
        return parse_options(cls, self.options, tier_name=self.name, tier_type=self.type)


TierFactory = Callable[[TierSpec], Tier]


# --------------------------------------------------------------------------- typed options
def _describe(tp: Any) -> str:
    """What a value of type ``tp`` is, in config words ("an integer", "one of 'a', 'b'", ...)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "anything"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple, SequenceABC):
        return f"a list (each item {_describe(args[0])})" if args else "a list"
    if origin in (dict, Mapping, MappingABC) or tp in (dict, Mapping):
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    return names.get(tp, f"a {getattr(tp, '__name__', tp)}")


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` (as YAML or a caller gives it) is a ``tp``: a bool is no int, an int is a float."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin in (list, tuple, SequenceABC):
        item = args[0] if args else Any
        return isinstance(value, (list, tuple)) and all(_matches(v, item) for v in value)
    if origin in (dict, Mapping, MappingABC) or tp in (dict, Mapping):
        return isinstance(value, MappingABC)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp) if isinstance(tp, type) else True


def _convert(value: Any, tp: Any) -> Any:
    """A checked value in the field's own form: a YAML list for a tuple field becomes a tuple,
    an int for a number field a float."""
    members = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    if isinstance(value, list) and any(typing.get_origin(m) is tuple for m in members):
        return tuple(value)
    if isinstance(value, int) and not isinstance(value, bool) and float in members and int not in members:
        return float(value)
    return value


def option_keys(cls: type) -> list[str]:
    """The option names an options dataclass accepts, sorted."""
    return sorted(f.name for f in dataclasses.fields(cls) if f.init)


def parse_options(cls: type[O], options: Mapping[str, Any] | None, *, tier_name: str, tier_type: str) -> O:
    """Check a tier's ``options`` mapping against its options dataclass ``cls`` and build one.

    Every key must be a field of ``cls`` and every value of the field's type: a bool must be
    ``true``/``false`` (not ``"yes"`` or ``1``), an integer an integer, a number an integer or a
    float, an enumeration (``Literal``) one of its values, a list a list of the item type.
    A field without a default is required. Anything else raises ``ValueError`` naming the key,
    the tier (name and type) and the valid keys; so does a ``ValueError`` from the dataclass's
    own ``__post_init__`` (range checks).
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"tier options class must be a dataclass, got {cls!r}")
    where = f"{tier_type} tier {tier_name!r}"
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    valid = f"valid keys: {', '.join(sorted(fields))}" if fields else "this tier type takes no options"
    if options is None:
        options = {}
    if not isinstance(options, MappingABC):
        raise ValueError(f"{where}: options must be a mapping, got {type(options).__name__} ({valid})")
    hints = typing.get_type_hints(cls)
    for key in options:
        if key not in fields:
            raise ValueError(f"{where}: unknown option {key!r} ({valid})")
    for name, f in fields.items():
        if name not in options and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{where}: options.{name} is required ({valid})")
    values: dict[str, Any] = {}
    for key, value in options.items():
        tp = hints[key]
        if not _matches(value, tp):
            raise ValueError(f"{where}: options.{key} must be {_describe(tp)}, got {value!r} ({valid})")
        values[key] = _convert(value, tp)
    try:
        return cls(**values)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc} ({valid})") from None


# --------------------------------------------------------------------------- the registry
# Built-in tiers are named as "module:attribute" (factory, options class) so their heavy imports
# happen only when used.
_BUILTIN: dict[str, tuple[str, str]] = {
    "heuristic": ("safecascade.tiers.heuristic:HeuristicTier.from_spec", "safecascade.tiers.heuristic:HeuristicOptions"),
    "replay": ("safecascade.tiers.replay:ReplayTier.from_spec", "safecascade.tiers.replay:ReplayOptions"),
    "fast": ("safecascade.tiers.fast:FastTier.from_spec", "safecascade.tiers.fast:FastOptions"),
    "static": ("safecascade.tiers.static:StaticTier.from_spec", "safecascade.tiers.static:StaticOptions"),
    "multilingual": ("safecascade.tiers.multilingual:MultilingualTier.from_spec", "safecascade.tiers.multilingual:MultilingualOptions"),
    "safeguard": ("safecascade.tiers.safeguard.tier:SafeguardTier.from_spec", "safecascade.tiers.safeguard.options:SafeguardOptions"),
}
_REGISTERED: dict[str, tuple[TierFactory, type | None]] = {}


def register_tier(type_name: str, *, options: type | None = None) -> Callable[[TierFactory], TierFactory]:
    """Decorator: make ``factory(spec) -> Tier`` available as ``type: <type_name>`` in configs.

    With ``options`` (a dataclass, as the built-in tiers' ``FastOptions`` ...), :func:`create_tier`
    checks the config's ``options:`` against it before calling the factory, exactly as for the
    built-in tiers (unknown key, wrong type, missing required key -> ``ValueError`` at load), and
    the factory reads the result as ``spec.parsed_options`` (or ``spec.options_as(cls)``).
    Without ``options`` the mapping is passed through unchecked in ``spec.options`` (the factory
    owns its checks; ``spec.parsed_options`` is ``None``).
    """
    if options is not None and not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        raise TypeError(f"register_tier({type_name!r}): options must be a dataclass, got {options!r}")

    def deco(factory: TierFactory) -> TierFactory:
        _REGISTERED[type_name] = (factory, options)
        return factory

    return deco


def available_tiers() -> list[str]:
    """Type names a router config may use."""
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def _resolve(target: str) -> Any:
    module_name, _, attr_path = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


def tier_options_class(type_name: str) -> type | None:
    """The options dataclass of a tier type (``None``: registered without one); unknown type -> ``ValueError``."""
    return _lookup(type_name, "?")[1]


def _lookup(type_name: str, tier_name: str) -> tuple[TierFactory, type | None]:
    if type_name in _REGISTERED:
        return _REGISTERED[type_name]
    if type_name in _BUILTIN:
        factory, options = _BUILTIN[type_name]
        return _resolve(factory), _resolve(options)
    raise ValueError(f"unknown tier type {type_name!r} for tier {tier_name!r}; known: {', '.join(available_tiers())}")


def create_tier(spec: TierSpec) -> Tier:
    """Build the tier that ``spec.type`` names; unknown names fail with the known ones listed.

    The options are checked against the type's options dataclass first (see :func:`parse_options`)
    and handed to the factory as ``spec.parsed_options``."""
    factory, options_cls = _lookup(spec.type, spec.name)
    if options_cls is not None and not isinstance(spec.parsed_options, options_cls):
        parsed: Any = parse_options(options_cls, spec.options, tier_name=spec.name, tier_type=spec.type)
        spec = dataclasses.replace(spec, parsed_options=parsed)
    return factory(spec)
