"""Typed tier options: every tier type declares its options once as a dataclass, and an unknown
key, a value of the wrong type or a missing required key fails when the tier is loaded, naming
the key, the tier (name and type) and the valid keys - for the built-in tiers and for a
third-party tier registered with ``register_tier(..., options=...)``."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import pytest
import yaml

from safecascade.router.cascade import Router
from safecascade.router.config import parse_config
from safecascade.tiers.base import (
    TierResult,
    TierSpec,
    create_tier,
    option_keys,
    parse_options,
    register_tier,
    tier_options_class,
)
from safecascade.tiers.fast import FastOptions
from safecascade.tiers.heuristic import HeuristicOptions
from safecascade.tiers.replay import ReplayOptions
from safecascade.tiers.safeguard import SafeguardOptions
from safecascade.tiers.static import StaticOptions
from safecascade.tiers.multilingual import MultilingualOptions

ROOT = Path(__file__).resolve().parents[2]
BUILTIN = {"fast": FastOptions, "static": StaticOptions, "heuristic": HeuristicOptions, "replay": ReplayOptions,
           "safeguard": SafeguardOptions, "multilingual": MultilingualOptions}
# a valid base for each type (replay needs its path), to which one bad key is added
BASE: dict[str, dict[str, Any]] = {"fast": {}, "static": {}, "heuristic": {}, "replay": {"path": "v.csv"}, "safeguard": {},
                                   "multilingual": {}}
MISTYPED = [
    ("fast", "quantized", "yes"), ("fast", "threads", "two"), ("fast", "threads", True), ("fast", "batch_size", 1.5),
    ("fast", "model", 5),
    ("static", "max_windows", "8"), ("static", "stride", 2.0),
    ("multilingual", "max_chars", "4000"), ("multilingual", "parts", "no"),
    ("heuristic", "leetspeak", "no"), ("heuristic", "decode_depth", "1"), ("heuristic", "rules", ["a.yaml"]),
    ("replay", "missing", "skip"), ("replay", "path", 3),
    ("safeguard", "isolation", "no"), ("safeguard", "n_ctx", "4096"), ("safeguard", "temperature", "0"),
    ("safeguard", "extra_buffer_types", 1), ("safeguard", "grammar", "maybe"), ("safeguard", "policies", "jailbreak"),
    ("safeguard", "worker_timeout_s", None),
]


def _spec(type_: str, options: dict[str, Any], tmp_path: Path, name: str = "my-tier") -> TierSpec:
    return TierSpec(name=name, type=type_, options=options, policies={}, base_dir=tmp_path)


def _names_everything(msg: str, *, type_: str, key: str, keys: Sequence[str]) -> None:
    assert f"{type_} tier 'my-tier'" in msg, msg
    assert repr(key) in msg or f"options.{key}" in msg, msg
    assert "valid keys: " + ", ".join(sorted(keys)) in msg, msg


# ------------------------------------------------------------------ the built-in tiers
@pytest.mark.parametrize("type_", sorted(BUILTIN))
def test_each_builtin_type_has_its_options_class(type_):
    assert tier_options_class(type_) is BUILTIN[type_]


@pytest.mark.parametrize("type_", sorted(BUILTIN))
def test_unknown_key_fails_at_load_naming_key_tier_and_valid_keys(type_, tmp_path):
    with pytest.raises(ValueError, match="unknown option 'quantised'") as exc:
        create_tier(_spec(type_, {**BASE[type_], "quantised": True}, tmp_path))
    _names_everything(str(exc.value), type_=type_, key="quantised", keys=option_keys(BUILTIN[type_]))


@pytest.mark.parametrize("type_,key,value", MISTYPED, ids=[f"{t}.{k}={v!r}" for t, k, v in MISTYPED])
def test_mistyped_value_fails_at_load_naming_key_tier_and_valid_keys(type_, key, value, tmp_path):
    with pytest.raises(ValueError, match=rf"options\.{key} must be .*, got {re.escape(repr(value))}") as exc:
        create_tier(_spec(type_, {**BASE[type_], key: value}, tmp_path))
    _names_everything(str(exc.value), type_=type_, key=key, keys=option_keys(BUILTIN[type_]))


def test_a_factory_called_directly_checks_too(tmp_path):
    from safecascade.tiers.fast import FastTier

    with pytest.raises(ValueError, match="fast tier 'my-tier': unknown option 'quantised'"):
        FastTier.from_spec(_spec("fast", {"quantised": True}, tmp_path))


def test_required_key_and_range_checks_name_the_tier(tmp_path):
    with pytest.raises(ValueError, match=r"replay tier 'my-tier': options\.path is required \(valid keys: missing, path\)"):
        create_tier(_spec("replay", {}, tmp_path))
    with pytest.raises(ValueError, match=r"heuristic tier 'my-tier': options\.decode_depth must be an integer in 0\.\.3, got 7"):
        create_tier(_spec("heuristic", {"decode_depth": 7}, tmp_path))
    with pytest.raises(ValueError, match="options must be a mapping"):
        create_tier(_spec("fast", ["model"], tmp_path))  # type: ignore[arg-type]


def test_router_load_reports_a_typo_in_a_config(tmp_path):
    cfg = parse_config({"name": "t", "policies": {"jailbreak": "builtin:jailbreak"},
                        "tiers": [{"name": "fast", "type": "fast", "options": {"model": "default", "quantised": True},
                                   "threshold": 0.5}]}, base_dir=tmp_path)
    with pytest.raises(ValueError, match=r"fast tier 'fast': unknown option 'quantised' \(valid keys: batch_size, block_other_scripts, deobfuscate, lexical_runs, "
                                         r"long_segments, max_windows, model, quantized, segment_tokens, segments, short_segments, stride, threads, window_lexical, window_tokens\)"):
        Router.load(cfg)


def test_values_are_parsed_into_the_dataclass():
    o = parse_options(SafeguardOptions, {"temperature": 0, "policies": ["jailbreak"], "grammar": False, "n_ctx": 2048},
                      tier_name="sg", tier_type="safeguard")
    assert o.temperature == 0.0 and isinstance(o.temperature, float)
    assert o.policies == ("jailbreak",) and o.grammar is False and o.n_ctx == 2048 and o.backend == "llama_cpp"
    f = parse_options(FastOptions, {"quantized": "auto", "threads": 1}, tier_name="f", tier_type="fast")
    assert f == FastOptions(quantized="auto", threads=1) and f.model == "default"
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.threads = 3  # type: ignore[misc]


def _option_docs(cls: type) -> dict[str, str | None]:
    """Field name -> the string literal right under it, for ``cls`` and its dataclass bases."""
    docs: dict[str, str | None] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, [*body[1:], None]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                ok = isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)
                docs[node.target.id] = nxt.value.value if ok else None  # type: ignore[union-attr]
    return docs


@pytest.mark.parametrize("type_", sorted(BUILTIN))
def test_every_option_has_a_docstring(type_):
    docs = _option_docs(BUILTIN[type_])
    assert sorted(docs) == option_keys(BUILTIN[type_])
    assert not [k for k, d in docs.items() if not d], f"{type_} options without a docstring: {[k for k, d in docs.items() if not d]}"


def _shipped_tier_entries() -> list[tuple[str, dict]]:
    out = []
    for path in sorted([*ROOT.glob("models/*.yaml"), *ROOT.glob("experiments/configs/*.yaml")]):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for t in (data or {}).get("tiers", []) if isinstance(data, dict) else []:
            out.append((f"{path.relative_to(ROOT)}:{t['name']}", t))
    return out


@pytest.mark.parametrize("where,entry", _shipped_tier_entries(), ids=[w for w, _ in _shipped_tier_entries()])
def test_shipped_configs_options_are_valid(where, entry):
    parse_options(BUILTIN[entry["type"]], entry.get("options") or {}, tier_name=entry["name"], tier_type=entry["type"])


# ------------------------------------------------------------------ third-party tiers
@dataclass(frozen=True, kw_only=True)
class EchoOptions:
    """Options of the test's third-party tier."""

    score: float = 0.25
    """The score it gives every text."""
    mode: Literal["fixed", "length"] = "fixed"
    """``fixed``: ``score``; ``length``: len(text) / 100, capped at 1."""
    label: str
    """Required: recorded in ``info``."""


class EchoTier:
    def __init__(self, spec: TierSpec):
        self.name, self.policies, self.options = spec.name, tuple(spec.policies) or ("jailbreak",), spec.parsed_options

    def classify(self, texts: Sequence[str]) -> list[TierResult]:
        o = self.options
        return [TierResult(scores={p: o.score if o.mode == "fixed" else min(len(t) / 100, 1.0) for p in self.policies},
                           info={"label": o.label}) for t in texts]


register_tier("echo-typed", options=EchoOptions)(EchoTier)
register_tier("echo-untyped")(EchoTier)


def test_third_party_tier_gets_parsed_options(tmp_path):
    tier = create_tier(_spec("echo-typed", {"label": "x", "score": 1}, tmp_path))
    assert tier.options == EchoOptions(label="x", score=1.0)
    [r] = tier.classify(["hello"])
    assert r.scores == {"jailbreak": 1.0} and r.info == {"label": "x"}


@pytest.mark.parametrize("options,match", [
    ({"label": "x", "scor": 0.5}, "unknown option 'scor'"),
    ({"label": "x", "mode": "random"}, r"options\.mode must be one of 'fixed', 'length', got 'random'"),
    ({"label": "x", "score": "high"}, r"options\.score must be a number, got 'high'"),
    ({"label": 3}, r"options\.label must be a string, got 3"),
    ({}, r"options\.label is required"),
])
def test_third_party_tier_options_are_checked_like_builtin_ones(options, match, tmp_path):
    with pytest.raises(ValueError, match=match) as exc:
        create_tier(_spec("echo-typed", options, tmp_path))
    assert "echo-typed tier 'my-tier'" in str(exc.value) and "valid keys: label, mode, score" in str(exc.value)


def test_third_party_tier_without_options_class_gets_them_unchecked(tmp_path):
    seen = []
    register_tier("raw-options")(lambda spec: seen.append(spec) or EchoTier(spec))
    create_tier(_spec("raw-options", {"anything": [1, 2]}, tmp_path))
    assert seen[0].options == {"anything": [1, 2]} and seen[0].parsed_options is None
    assert tier_options_class("raw-options") is None and tier_options_class("echo-untyped") is None


def test_register_tier_refuses_a_non_dataclass_options_class():
    with pytest.raises(TypeError, match="must be a dataclass"):
        register_tier("bad-options", options=dict)
