"""Router configuration: YAML in, frozen dataclasses out, validated with errors naming the bad key.

Schema (``version: 1``)::

    name: default
    policies:                       # name -> builtin:<stem> | path (relative to this file)
      jailbreak: builtin:jailbreak
    input:
      max_chars: 200000             # longer texts get ``on_oversize``
      on_empty: allow               # allow | block
      on_oversize: block            # allow | block | truncate
    tiers:                          # cheapest first; the last tier always decides
      - name: heuristic
        type: heuristic             # a registered tier type
        options: {}                 # passed to the tier
        bands:                      # policy (or "default") -> [allow_below, block_above]; null = never
          default: [null, 0.98]
        on_error: next              # non-final tiers: next | allow | block
      - name: fast
        type: fast
        threshold: 0.5              # final tier: block when score >= threshold; or per policy
                                    # {default: 0.5, harmful_request: 0.7}
        on_error: block             # final tier: allow | block | fast-verdict
        combine:                    # optional, any tier: decide a policy on its own score's logit plus
          harmful_request:          # weight x an earlier tier's (router/combine.py); fill: the score
            static: {weight: 1.0, fill: 0.89}   # it counts as where it did not judge the text whole
        on_budget_exhausted: block  # final tier, escalation budget spent: block | allow |
                                    # fast-verdict | queue; or per policy {default: block, pii: queue}
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping, overload

import yaml

from safecascade.router.combine import Term
from safecascade.router.policy import Policy, builtin_policy_path
from safecascade.tiers.base import available_tiers

_ON_ERROR_MID = ("next", "allow", "block")
_ON_ERROR_LAST = ("allow", "block", "fast-verdict")
BUDGET_ACTIONS = ("block", "allow", "fast-verdict", "queue")
DEFAULT_BUDGET_ACTION = "block"  # fail closed: a drained budget must not turn uncertain texts into allows


class ConfigError(ValueError):
    """A router config that cannot be used; the message names the offending key."""


@dataclass(frozen=True, kw_only=True)
class Band:
    """Scores ``<= allow_below`` allow, ``>= block_above`` block, in between escalate. None = never."""

    allow_below: float | None
    block_above: float | None

    def outcome(self, score: float) -> str:
        if self.block_above is not None and score >= self.block_above:
            return "block"
        if self.allow_below is not None and score <= self.allow_below:
            return "allow"
        return "escalate"


@dataclass(frozen=True, kw_only=True)
class TierConfig:
    name: str
    type: str
    options: Mapping[str, Any] = field(default_factory=dict)
    bands: Mapping[str, Band] = field(default_factory=dict)
    threshold: float = 0.5  # the last tier's threshold for policies without their own
    thresholds: Mapping[str, float] = field(default_factory=dict)  # policy -> the last tier's threshold
    named_thresholds: Mapping[str, float] = field(default_factory=dict)  # policy ("default") -> threshold for a named text
    on_error: str = "next"
    on_budget_exhausted: Mapping[str, str] | None = None  # last tier only: policy (or "default") -> action
    combine: Mapping[str, Mapping[str, Term]] = field(default_factory=dict)  # policy -> {earlier tier: Term} (router/combine.py)

    def band_for(self, policy: str) -> Band:
        return self.bands.get(policy) or self.bands.get("default") or Band(allow_below=None, block_above=None)

    def threshold_for(self, policy: str) -> float:
        """The last tier's threshold for ``policy`` (its own, else the default ``threshold``)."""
        return float(self.thresholds.get(policy, self.threshold))

    def named_threshold_for(self, policy: str) -> float:
        """The last tier's threshold for ``policy`` on a text that a heuristic rule of ``policy``
        named without deciding (``named_threshold``; never above :meth:`threshold_for`)."""
        own = self.threshold_for(policy)
        named = self.named_thresholds.get(policy, self.named_thresholds.get("default"))
        return own if named is None else min(own, float(named))

    def budget_action_for(self, policy: str) -> str:
        """What an uncertain text gets for ``policy`` when the escalation budget refuses this
        (last) tier: ``block`` | ``allow`` | ``fast-verdict`` | ``queue``."""
        actions = self.on_budget_exhausted or {}
        return actions.get(policy) or actions.get("default") or DEFAULT_BUDGET_ACTION


@dataclass(frozen=True, kw_only=True)
class InputConfig:
    max_chars: int = 200_000
    on_empty: str = "allow"
    on_oversize: str = "block"


@dataclass(frozen=True, kw_only=True)
class RouterConfig:
    name: str
    policies: Mapping[str, str]
    tiers: tuple[TierConfig, ...]
    input: InputConfig = field(default_factory=InputConfig)
    base_dir: str = "."
    version: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("base_dir")
        for t in d["tiers"]:
            t["bands"] = {k: [b["allow_below"], b["block_above"]] for k, b in t["bands"].items()}
            if t.get("on_budget_exhausted") is None:
                t.pop("on_budget_exhausted", None)
            if not t.get("thresholds"):
                t.pop("thresholds", None)  # a config without per-policy thresholds hashes as before
            if not t.get("named_thresholds"):
                t.pop("named_thresholds", None)  # likewise without a named_threshold
            if not t.get("combine"):
                t.pop("combine", None)  # and without combine
        return d

    @property
    def sha(self) -> str:
        """Hash of the semantic content (not of the YAML formatting)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def resolve_policies(self) -> dict[str, Policy]:
        out = {}
        for name, ref in self.policies.items():
            if ref.startswith("builtin:"):
                path = builtin_policy_path(ref.removeprefix("builtin:") + ".md")
            else:
                path = Path(self.base_dir) / ref
            if not path.is_file():
                raise ConfigError(f"policies.{name}: policy file not found: {path}")
            out[name] = Policy.from_file(name, path)
        return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently: two policies with the same name, or a tier option set twice, would go unnoticed)."""


def _mapping_without_duplicates(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (names must be unique)", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _expect(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@overload
def _number(v: Any, key: str, *, allow_none: Literal[False] = ...) -> float: ...
@overload
def _number(v: Any, key: str, *, allow_none: bool) -> float | None: ...
def _number(v: Any, key: str, *, allow_none: bool = False) -> float | None:
    if v is None and allow_none:
        return None
    _expect(isinstance(v, (int, float)) and not isinstance(v, bool), key, f"expected a number, got {v!r}")
    _expect(0.0 <= float(v) <= 1.0, key, f"must be in [0, 1], got {v!r}")
    return float(v)


def _check_keys(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(d) - allowed)
    _expect(not extra, f"{where}.{extra[0]}" if extra else where, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _parse_band(v: Any, key: str) -> Band:
    _expect(isinstance(v, (list, tuple)) and len(v) == 2, key, f"expected [allow_below, block_above], got {v!r}")
    lo = _number(v[0], f"{key}[0]", allow_none=True)
    hi = _number(v[1], f"{key}[1]", allow_none=True)
    if lo is not None and hi is not None:
        _expect(lo < hi, key, f"allow_below ({lo}) must be < block_above ({hi})")
    return Band(allow_below=lo, block_above=hi)


def _per_policy(v: Any, key: str, policies: Mapping[str, Any]) -> dict[str, float]:
    """A threshold given as one number (it becomes ``default``) or as a mapping policy|default -> number."""
    if not isinstance(v, Mapping):
        return {"default": float(_number(v, key))}
    out: dict[str, float] = {}
    for pname, x in v.items():
        _expect(pname == "default" or pname in policies, f"{key}.{pname}", f"unknown policy {pname!r} (config policies: {', '.join(policies)})")
        out[str(pname)] = float(_number(x, f"{key}.{pname}"))
    return out


def _parse_combine(v: Any, key: str, policies: Mapping[str, Any], *, earlier: set[str]) -> dict[str, dict[str, Term]]:
    """``combine``: policy -> {an earlier tier's name: weight >= 0, or {weight: w, fill: score,
    fill_none: score}} (see router/combine.py)."""
    v = v or {}
    _expect(isinstance(v, Mapping), key, "expected a mapping policy -> {earlier tier: weight}")
    out: dict[str, dict[str, Term]] = {}
    for pname, weights in v.items():
        _expect(pname in policies, f"{key}.{pname}", f"unknown policy {pname!r} (config policies: {', '.join(policies)})")
        _expect(isinstance(weights, Mapping) and len(weights) > 0, f"{key}.{pname}", "expected a mapping earlier tier -> weight")
        out[str(pname)] = {}
        for tier, w in weights.items():
            _expect(tier in earlier, f"{key}.{pname}.{tier}",
                    f"not an earlier tier (a tier combines the scores of tiers before it: {', '.join(sorted(earlier)) or 'none'})")
            where = f"{key}.{pname}.{tier}"
            fill = fill_none = None
            if isinstance(w, Mapping):
                _check_keys(w, {"weight", "fill", "fill_none"}, where)
                _expect("weight" in w, where, "expected {weight: w, fill: score}")
                if w.get("fill") is not None:
                    fill = _number(w["fill"], f"{where}.fill")
                if w.get("fill_none") is not None:
                    fill_none = _number(w["fill_none"], f"{where}.fill_none")
                w = w["weight"]
            _expect(isinstance(w, (int, float)) and not isinstance(w, bool), where, f"expected a number, got {w!r}")
            x = float(w)
            _expect(math.isfinite(x) and x >= 0.0, where, f"expected a finite weight >= 0, got {w!r}")
            out[str(pname)][str(tier)] = Term(weight=x, fill=fill, fill_none=fill_none)
    return out


def parse_budget_action(v: Any, key: str, policies: Mapping[str, Any]) -> dict[str, str]:
    """``on_budget_exhausted``: an action for every policy, or a mapping policy (or
    ``default``) -> action; returns the mapping, with ``default`` always set."""
    if isinstance(v, str):
        v = {"default": v}
    _expect(isinstance(v, Mapping) and len(v) > 0, key, f"expected one of {'|'.join(BUDGET_ACTIONS)} or a mapping policy -> action, got {v!r}")
    out = {"default": DEFAULT_BUDGET_ACTION}
    for pname, action in v.items():
        _expect(pname == "default" or pname in policies, f"{key}.{pname}", f"unknown policy {pname!r} (config policies: {', '.join(policies)})")
        _expect(isinstance(action, str) and action in BUDGET_ACTIONS, f"{key}.{pname}", f"expected one of {'|'.join(BUDGET_ACTIONS)}, got {action!r}")
        out[pname] = action
    return out


def parse_config(data: Any, *, base_dir: str | Path = ".", source: str = "<dict>") -> RouterConfig:
    """Validate a config mapping (as loaded from YAML) and return a :class:`RouterConfig`."""
    _expect(isinstance(data, Mapping), source, "config must be a mapping")
    _check_keys(data, {"version", "name", "policies", "input", "tiers"}, "config")
    version = data.get("version", 1)
    _expect(type(version) is int and version == 1, "version", f"unsupported config version {version!r} (supported: 1)")
    name = data.get("name", Path(source).stem)
    _expect(isinstance(name, str) and bool(name), "name", "expected a non-empty string")

    policies = data.get("policies")
    _expect(isinstance(policies, Mapping) and len(policies) > 0, "policies", "expected a non-empty mapping name -> file")
    for pname, ref in policies.items():
        _expect(isinstance(ref, str) and bool(ref), f"policies.{pname}", f"expected a file path or builtin:<name>, got {ref!r}")

    raw_input = data.get("input", {}) or {}
    _expect(isinstance(raw_input, Mapping), "input", "expected a mapping")
    _check_keys(raw_input, {"max_chars", "on_empty", "on_oversize"}, "input")
    max_chars = raw_input.get("max_chars", 200_000)
    _expect(isinstance(max_chars, int) and not isinstance(max_chars, bool) and max_chars > 0, "input.max_chars", f"expected a positive integer, got {max_chars!r}")
    on_empty = raw_input.get("on_empty", "allow")
    _expect(on_empty in ("allow", "block"), "input.on_empty", f"expected allow|block, got {on_empty!r}")
    on_oversize = raw_input.get("on_oversize", "block")
    _expect(on_oversize in ("allow", "block", "truncate"), "input.on_oversize", f"expected allow|block|truncate, got {on_oversize!r}")

    raw_tiers = data.get("tiers")
    _expect(isinstance(raw_tiers, list) and len(raw_tiers) > 0, "tiers", "expected a non-empty list")
    tiers: list[TierConfig] = []
    seen: set[str] = set()
    for i, t in enumerate(raw_tiers):
        key = f"tiers[{i}]"
        _expect(isinstance(t, Mapping), key, "expected a mapping")
        _check_keys(t, {"name", "type", "options", "bands", "threshold", "named_threshold", "combine", "on_error", "on_budget_exhausted"}, key)
        ttype = t.get("type")
        _expect(isinstance(ttype, str), f"{key}.type", "missing tier type")
        _expect(ttype in available_tiers(), f"{key}.type", f"unknown tier type {ttype!r} (known: {', '.join(available_tiers())})")
        tname = t.get("name", ttype)
        _expect(isinstance(tname, str) and tname not in seen, f"{key}.name", f"tier names must be unique strings, got {tname!r}")
        combine = _parse_combine(t.get("combine", {}), f"{key}.combine", policies, earlier=seen)
        seen.add(tname)
        options = t.get("options", {}) or {}
        _expect(isinstance(options, Mapping), f"{key}.options", "expected a mapping")
        raw_bands = t.get("bands", {}) or {}
        _expect(isinstance(raw_bands, Mapping), f"{key}.bands", "expected a mapping policy -> [allow_below, block_above]")
        bands = {}
        for pname, band in raw_bands.items():
            _expect(pname == "default" or pname in policies, f"{key}.bands.{pname}", f"unknown policy {pname!r} (config policies: {', '.join(policies)})")
            bands[pname] = _parse_band(band, f"{key}.bands.{pname}")
        last = i == len(raw_tiers) - 1
        thresholds = _per_policy(t.get("threshold", 0.5), f"{key}.threshold", policies)
        threshold = thresholds.pop("default", 0.5)
        named = _per_policy(t.get("named_threshold", {}), f"{key}.named_threshold", policies)
        _expect(last or not named, f"{key}.named_threshold", "only the last tier has a threshold (earlier tiers decide by their bands)")
        on_error = t.get("on_error", "block" if last else "next")
        allowed = _ON_ERROR_LAST if last else _ON_ERROR_MID
        _expect(on_error in allowed, f"{key}.on_error", f"expected one of {'|'.join(allowed)}, got {on_error!r}")
        if not last:
            _expect(bool(bands), f"{key}.bands", "a non-final tier needs bands (it would never decide)")
            _expect(t.get("on_budget_exhausted") is None, f"{key}.on_budget_exhausted", "only the last tier has an escalation budget")
            on_budget = None
        else:
            on_budget = parse_budget_action(t.get("on_budget_exhausted", DEFAULT_BUDGET_ACTION), f"{key}.on_budget_exhausted", policies)
        tiers.append(TierConfig(name=tname, type=ttype, options=dict(options), bands=bands, threshold=float(threshold), thresholds=thresholds,
                                named_thresholds=named, on_error=on_error,
                                on_budget_exhausted=on_budget, combine=combine))

    return RouterConfig(
        name=name,
        policies=dict(policies),
        tiers=tuple(tiers),
        input=InputConfig(max_chars=max_chars, on_empty=on_empty, on_oversize=on_oversize),
        base_dir=str(base_dir),
    )


SAFEGUARD_ENV = "SAFECASCADE_SAFEGUARD"          # a GGUF path, an http(s) base URL, or "stand-in"
SAFEGUARD_MODEL_ENV = "SAFECASCADE_SAFEGUARD_MODEL"  # the served model name for a URL (default below)
DEFAULT_ENDPOINT_MODEL = "openai/gpt-oss-safeguard-20b"
WITH_SAFEGUARD = "with-safeguard"


def builtin_config_path(name: str) -> Path:
    """``models/<name>.yaml`` of the installed package (``default``, ``with-safeguard``)."""
    path = Path(str(resources.files("safecascade.models").joinpath(f"{name}.yaml")))
    if not path.is_file():
        raise ConfigError(f"no built-in router config {name!r} ({path} missing)")
    return path


def safeguard_options(target: str) -> dict[str, Any]:
    """Safeguard tier options that point it at ``target``: an OpenAI-compatible base URL
    (``http(s)://...``), ``stand-in`` (the test GGUF) or a GGUF path for llama.cpp in process."""
    target = str(target).strip()
    if not target:
        raise ConfigError(f"the safeguard target is empty (set {SAFEGUARD_ENV} to a GGUF path or an http(s) URL)")
    if target.startswith(("http://", "https://")):
        return {"backend": "openai", "base_url": target,
                "model": os.environ.get(SAFEGUARD_MODEL_ENV) or DEFAULT_ENDPOINT_MODEL}
    if target != "stand-in" and not Path(os.path.expanduser(target)).is_file():
        raise ConfigError(f"safeguard GGUF not found: {target} (set {SAFEGUARD_ENV} to a GGUF path or an http(s) URL)")
    return {"backend": "llama_cpp", "model_path": target}


def _point_safeguard(data: Any, target: str, path: Path) -> None:
    tiers = data.get("tiers") if isinstance(data, dict) else None
    sg = [t for t in tiers or [] if isinstance(t, dict) and t.get("type") == "safeguard"]
    if not sg:
        raise ConfigError(f"{path}: a safeguard target was given but the config has no safeguard tier")
    for t in sg:
        opts = {k: v for k, v in dict(t.get("options") or {}).items() if k not in ("backend", "model_path", "base_url", "model")}
        t["options"] = {**opts, **safeguard_options(target)}


def load_config(source: str | Path | None = None, *, safeguard: str | None = None) -> RouterConfig:
    """Load a YAML router config.

    ``source``: a YAML path, ``builtin:<name>`` (``models/<name>.yaml``), or ``None``: the
    embedded default (``models/default.yaml``: heuristic -> static -> multilingual -> fast, no LLM) or, when a
    safeguard target is given (``safeguard`` or ``$SAFECASCADE_SAFEGUARD``), the
    ``with-safeguard`` preset pointed at it. ``safeguard`` with a YAML source repoints that
    config's safeguard tier.
    """
    if safeguard is None and source is None:
        safeguard = os.environ.get(SAFEGUARD_ENV) or None
    if source is None:
        path = builtin_config_path(WITH_SAFEGUARD if safeguard else "default")
    elif isinstance(source, str) and source.startswith("builtin:"):
        path = builtin_config_path(source[len("builtin:"):])
    else:
        path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read router config {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if safeguard:
        _point_safeguard(data, safeguard, path)
    return parse_config(data, base_dir=path.parent, source=str(path))
