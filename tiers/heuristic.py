"""The ``heuristic`` tier: named, measured rules for known jailbreak signatures (sub-millisecond).

Rules live in a YAML file (default: the shipped ``models/heuristic_rules.yaml``); each has an
``id`` (``HR-DAN-1``), a ``family``, the ``policy`` it scores, a ``description`` and either a
regex ``pattern`` (compiled once, case-insensitive, matched against the *folded* text - see
:mod:`safecascade.tiers.obfuscation`) or a ``detector`` implemented here. Decoded payloads
(base64 / hex / rot13 / Unicode tags) and a leetspeak view are re-scanned with the same rules.

Score: the largest *measured precision* among the rules a text matches (0.0 when none match).
Precision and support are measured on the jailbreak benchmark's train split and written into
the YAML by ``python -m safecascade.training.rule_precision --write``. A rule never measured, or
measured on fewer than ``min_support`` matches, scores at most ``default_precision`` - so with
the band ``[null, 0.98]`` only well-supported rules with precision >= 0.98 decide alone.

Options (router config ``tiers[].options``): :class:`HeuristicOptions` (``rules``,
``decode_depth``, ``leetspeak``); an unknown key or a wrong type fails at load.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from safecascade.tiers.base import TierResult, TierSpec
from safecascade.tiers.obfuscation import Folded, decode_views, fold, fold_table, leet_fold, looks_leet

log = logging.getLogger(__name__)

DEFAULT_PRECISION = 0.5
DEFAULT_MIN_SUPPORT = 10
_RULE_KEYS = {"id", "family", "policy", "description", "pattern", "detector", "keywords", "precision", "support", "examples"}
_ID_RE = re.compile(r"^[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)+$")


def default_rules_path() -> Path:
    """The shipped rules file (``models/heuristic_rules.yaml``)."""
    return Path(str(resources.files("safecascade.models").joinpath("heuristic_rules.yaml")))


# --------------------------------------------------------------------------- detectors
@dataclass(frozen=True, kw_only=True)
class ScanView:
    """What detectors see: the original text of this view and its folded form."""

    raw: str
    folded: Folded


_MIXED_SCRIPT_RE = re.compile(r"[A-Za-z][\u0370-\u03ff\u0400-\u04ff]|[\u0370-\u03ff\u0400-\u04ff][A-Za-z]")
_NORMAL_TAG = r"🔒\s*\w*|classic|normal(?: output| response)?|gpt|chatgpt|filtered|standard|censored|\(?🔒"
_FREE_TAG = r"🔓\s*\w*|jailbreak|jailbroken|dan|developer mode(?: output)?|unfiltered|uncensored|evil\w*|anti-?\w+|(?!chatgpt\b)\w+gpt"
_TAG_FMT = r"(?:\[\s*(?:{t})\s*\]|\(\s*(?:{t})\s*\)|(?:^|\n|[\"'“])\s*(?:{t})\s*:)"
_NORMAL_TAG_RE = re.compile(_TAG_FMT.format(t=_NORMAL_TAG))
_FREE_TAG_RE = re.compile(_TAG_FMT.format(t=_FREE_TAG))
_PERSONA_BIND_RE = re.compile(  # no leading \\b: keeps re's first-character scan
    r"(?:from now on|you (?:will|are going to|shall|must|are about to) (?:now )?(?:act|pretend|be|role-?play|respond|answer|reply|simulate|immerse)|"
    r"stay in character|you are now|pretend to be|act as|simulate|role of)\b"
)


def _zero_width_in_words(v: ScanView) -> bool:
    return v.folded.zero_width_in_words >= 1


def _bidi_controls(v: ScanView) -> bool:
    return v.folded.bidi_controls >= 1


def _unicode_tags(v: ScanView) -> bool:
    return v.folded.tag_chars >= 4


def _homoglyph_mix(v: ScanView) -> bool:
    if v.raw.isascii() or v.folded.homoglyphs == 0:
        return False
    n = 0
    for _ in _MIXED_SCRIPT_RE.finditer(v.raw):
        n += 1
        if n >= 3:
            return True
    return False


_FREE_TAG_HINTS = ("🔓", "jailbr", "developer mode", "unfiltered", "uncensored", "evil", "anti", "dan]", "dan)", "dan:", "gpt]", "gpt)", "gpt:")


def _dual_response_tags(v: ScanView) -> bool:
    t = v.folded.text
    if not any(h in t for h in _FREE_TAG_HINTS):
        return False
    return _FREE_TAG_RE.search(t) is not None and _NORMAL_TAG_RE.search(t) is not None


_DIRECTIVE_WORDS = (" always ", " never ", " must ", " will not ", " won't ", " cannot ", " can't ", " don't ", " do not ",
                    " doesn't ", " does not ", " no rules", " no limits", " no restrictions", " no filters", " no morals")


def _long_roleplay_setup(v: ScanView, *, min_chars: int = 400, min_directives: int = 12) -> bool:
    t = v.folded.text
    if len(t) < min_chars or _PERSONA_BIND_RE.search(t) is None:
        return False
    n = sum(t.count(w) for w in _DIRECTIVE_WORDS)  # C-level counts, no regex scan
    # enough directives, and dense: at least one per ~250 characters (or very many)
    return n >= min_directives and (n * 250 >= len(t) or n >= 40)


DETECTORS: dict[str, Callable[[ScanView], bool]] = {
    "zero_width_in_words": _zero_width_in_words,
    "bidi_controls": _bidi_controls,
    "unicode_tags": _unicode_tags,
    "homoglyph_mix": _homoglyph_mix,
    "dual_response_tags": _dual_response_tags,
    "long_roleplay_setup": _long_roleplay_setup,
}


# --------------------------------------------------------------------------- rules
@dataclass(frozen=True, kw_only=True)
class Rule:
    """One named rule, as written in the rules file (``precision`` / ``support`` are measured)."""

    id: str
    family: str
    policy: str
    description: str
    pattern: str | None = None
    detector: str | None = None
    keywords: tuple[str, ...] = ()
    precision: float | None = None
    support: int = 0
    positive_examples: tuple[str, ...] = ()
    negative_examples: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class RuleSet:
    """A validated rules file: rules in file order plus the scoring defaults."""

    rules: tuple[Rule, ...]
    path: str = "<dict>"
    default_precision: float = DEFAULT_PRECISION
    min_support: int = DEFAULT_MIN_SUPPORT
    measured_on: str | None = None

    def effective_precision(self, rule: Rule) -> float:
        """The score a match of ``rule`` contributes (see module docstring)."""
        if rule.precision is None:
            return self.default_precision
        if rule.support < self.min_support:
            return min(rule.precision, self.default_precision)
        return rule.precision

    def decides_alone(self, rule: Rule, block_above: float = 0.98) -> bool:
        return self.effective_precision(rule) >= block_above

    @property
    def policies(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.policy for r in self.rules))


def relax_pattern(pattern: str) -> str:
    """``pattern`` with every ``\\b`` word-boundary assertion removed.

    Removing a zero-width assertion only widens what a pattern matches, so the relaxed regex is
    a correct pre-filter: when it finds nothing, neither does the rule. Without a leading
    ``\\b`` Python's ``re`` can use its literal / first-character prefix scan, which is 10-50x
    faster than trying the full pattern at every position of a text that does not match.
    """
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            if pattern[i + 1] == "b" and not in_class:
                i += 2
                continue
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)


def _has_upper_literal(pattern: str) -> bool:
    """True when an upper-case ASCII letter appears outside an escape (``\\S``, ``\\W``) or group name."""
    stripped = re.sub(r"\\.|\(\?P<\w+>|\(\?P=\w+\)|\(\?[aiLmsux-]+[:)]", "", pattern)
    return any("A" <= ch <= "Z" for ch in stripped)


def _fail(path: str, where: str, msg: str) -> ValueError:
    return ValueError(f"heuristic rules file {path}: {where}: {msg}")


def parse_rules(data: Any, *, path: str = "<dict>") -> RuleSet:
    """Validate a rules mapping (as loaded from YAML); errors name the rule and the file."""
    if not isinstance(data, Mapping):
        raise _fail(path, "top level", "expected a mapping with a 'rules' list")
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise _fail(path, "rules", "expected a non-empty list of rules")
    default_precision = data.get("default_precision", DEFAULT_PRECISION)
    if not isinstance(default_precision, (int, float)) or isinstance(default_precision, bool) or not 0 <= default_precision <= 1:
        raise _fail(path, "default_precision", f"expected a number in [0, 1], got {default_precision!r}")
    min_support = data.get("min_support", DEFAULT_MIN_SUPPORT)
    if not isinstance(min_support, int) or isinstance(min_support, bool) or min_support < 0:
        raise _fail(path, "min_support", f"expected a non-negative integer, got {min_support!r}")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, r in enumerate(raw_rules):
        where = f"rules[{i}]"
        if not isinstance(r, Mapping):
            raise _fail(path, where, "expected a mapping")
        rid = r.get("id")
        if not isinstance(rid, str) or not rid.strip():
            raise _fail(path, where, "rule has no 'id'")
        where = f"rule {rid!r}"
        if not _ID_RE.match(rid):
            raise _fail(path, where, "id must look like HR-FAMILY-1 (upper case, dash separated)")
        if rid in seen:
            raise _fail(path, where, "duplicate rule id")
        seen.add(rid)
        extra = sorted(set(r) - _RULE_KEYS)
        if extra:
            raise _fail(path, where, f"unknown key {extra[0]!r} (allowed: {', '.join(sorted(_RULE_KEYS))})")
        for key in ("family", "policy", "description"):
            if not isinstance(r.get(key), str) or not r[key].strip():
                raise _fail(path, where, f"missing or empty {key!r}")
        pattern, detector = r.get("pattern"), r.get("detector")
        if (pattern is None) == (detector is None):
            raise _fail(path, where, "needs exactly one of 'pattern' or 'detector'")
        if pattern is not None:
            if not isinstance(pattern, str) or not pattern:
                raise _fail(path, where, "'pattern' must be a non-empty string")
            try:
                rx = re.compile(pattern, re.IGNORECASE)
                re.compile(relax_pattern(pattern))
            except re.error as exc:
                raise _fail(path, where, f"bad regex: {exc}") from None
            if _has_upper_literal(pattern):
                raise _fail(path, where, "pattern has upper-case letters; rules match the lower-cased folded text, write them in lower case")
            if rx.search("") is not None:
                raise _fail(path, where, "pattern matches the empty string (it would match every text)")
        if detector is not None and detector not in DETECTORS:
            raise _fail(path, where, f"unknown detector {detector!r} (known: {', '.join(sorted(DETECTORS))})")
        keywords = r.get("keywords") or []
        if not isinstance(keywords, list) or not all(isinstance(k, str) and k for k in keywords):
            raise _fail(path, where, "'keywords' must be a list of non-empty strings")
        precision = r.get("precision")
        if precision is not None and (not isinstance(precision, (int, float)) or isinstance(precision, bool) or not 0 <= precision <= 1):
            raise _fail(path, where, f"'precision' must be null or a number in [0, 1], got {precision!r}")
        support = r.get("support", 0) or 0
        if not isinstance(support, int) or isinstance(support, bool) or support < 0:
            raise _fail(path, where, f"'support' must be a non-negative integer, got {support!r}")
        examples = r.get("examples") or {}
        if not isinstance(examples, Mapping):
            raise _fail(path, where, "'examples' must be a mapping with 'positive' and 'negative' lists")
        pos, neg = examples.get("positive") or [], examples.get("negative") or []
        if not isinstance(pos, list) or not isinstance(neg, list):
            raise _fail(path, where, "'examples.positive' / 'examples.negative' must be lists of strings")
        rules.append(
            Rule(
                id=rid, family=r["family"], policy=r["policy"], description=r["description"].strip(),
                pattern=pattern, detector=detector, keywords=tuple(k.lower() for k in keywords),
                precision=None if precision is None else float(precision), support=support,
                positive_examples=tuple(str(x) for x in pos), negative_examples=tuple(str(x) for x in neg),
            )
        )
    measured_on = data.get("measured_on")
    return RuleSet(rules=tuple(rules), path=path, default_precision=float(default_precision), min_support=min_support,
                   measured_on=None if measured_on is None else str(measured_on))


def load_rules(path: str | Path | None = None) -> RuleSet:
    """Load and validate a rules YAML file (``None`` = the shipped one)."""
    p = default_rules_path() if path is None else Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"heuristic rules file {p}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"heuristic rules file {p}: invalid YAML: {exc}") from exc
    return parse_rules(data, path=str(p))


# --------------------------------------------------------------------------- scanning
@dataclass(frozen=True, kw_only=True)
class Match:
    """A rule that matched, and the view it matched in (``plain``, ``leetspeak``, ``base64`` ...)."""

    rule: Rule
    via: str


@dataclass(frozen=True, kw_only=True)
class ScanResult:
    matches: tuple[Match, ...]
    decoders: tuple[str, ...]  # decoders that produced a readable payload
    folds: tuple[str, ...]  # foldings that changed the text (homoglyphs, invisible characters, leetspeak)


@dataclass(frozen=True, kw_only=True)
class _Compiled:
    rule: Rule
    regex: re.Pattern[str] | None
    prefilter: re.Pattern[str] | None
    detector: Callable[[ScanView], bool] | None
    gate_words: frozenset[str]  # whole-word keywords
    gate_literals: tuple[str, ...]  # substring keywords

    @property
    def gated(self) -> bool:
        return bool(self.gate_words or self.gate_literals)


# ASCII punctuation (and common typographic quotes / dashes) -> space, for the word set
_WORD_BREAKS = str.maketrans({c: " " for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’«»…—–"})
_WORD_RE = re.compile(r"[a-z0-9]+")


def words_of(text: str) -> frozenset[str]:
    """The whole words of a folded text (punctuation splits words, as ``\\b`` does)."""
    return frozenset(text.translate(_WORD_BREAKS).split())


class _View:
    """A text being scanned, with its word set computed on first use."""

    __slots__ = ("text", "_words")

    def __init__(self, text: str):
        self.text = text
        self._words: frozenset[str] | None = None

    @property
    def words(self) -> frozenset[str]:
        if self._words is None:
            self._words = words_of(self.text)
        return self._words


class RuleScanner:
    """Compiled form of a :class:`RuleSet`; ``scan(text)`` finds every matching rule."""

    def __init__(self, ruleset: RuleSet, *, decode_depth: int = 1, leetspeak: bool = True, check_gates: bool = False):
        if not isinstance(decode_depth, int) or isinstance(decode_depth, bool) or not 0 <= decode_depth <= 3:
            raise ValueError(f"decode_depth must be an integer in 0..3, got {decode_depth!r}")
        self.ruleset = ruleset
        self.decode_depth = decode_depth
        self.leetspeak = bool(leetspeak)
        #: with check_gates, rules are also run when their keywords are absent, and a match that
        #: the keywords would have skipped is counted here (rule id -> count): keywords must be 0
        self.check_gates = check_gates
        self.gate_misses: dict[str, int] = {}
        self._compiled = tuple(
            _Compiled(
                rule=r,
                # lower-case patterns on lower-cased text: case-insensitive without re.IGNORECASE,
                # which would disable the fast prefix scan
                regex=re.compile(r.pattern) if r.pattern else None,
                prefilter=re.compile(relax_pattern(r.pattern)) if r.pattern and relax_pattern(r.pattern) != r.pattern else None,
                detector=DETECTORS[r.detector] if r.detector else None,
                gate_words=frozenset(k for k in r.keywords if _WORD_RE.fullmatch(k)),
                gate_literals=tuple(k for k in r.keywords if not _WORD_RE.fullmatch(k)),
            )
            for r in ruleset.rules
        )
        fold_table()  # build the homoglyph table now, not on the first request

    def _scan_view(self, view: ScanView, text: str, via: str, found: dict[str, Match]) -> None:
        tv = _View(text)
        for c in self._compiled:
            if c.rule.id in found:
                continue
            if c.regex is not None:
                if c.gated and c.gate_words.isdisjoint(tv.words) and not any(k in text for k in c.gate_literals):
                    if self.check_gates and c.regex.search(text) is not None:
                        self.gate_misses[c.rule.id] = self.gate_misses.get(c.rule.id, 0) + 1
                    continue
                if c.prefilter is not None and c.prefilter.search(text) is None:
                    continue
                if c.regex.search(text) is None:
                    continue
            elif c.detector is None or not c.detector(view):
                continue
            found[c.rule.id] = Match(rule=c.rule, via=via)

    def _scan(self, raw: str, via: str, depth: int, found: dict[str, Match], decoders: list[str], folds: list[str]) -> None:
        folded = fold(raw)
        if folded.homoglyphs and "homoglyphs" not in folds:
            folds.append("homoglyphs")
        if (folded.zero_width_in_words or folded.bidi_controls or folded.tag_chars) and "invisible_chars" not in folds:
            folds.append("invisible_chars")
        view = ScanView(raw=raw, folded=folded)
        self._scan_view(view, folded.text, via, found)
        if self.leetspeak and looks_leet(folded.text):
            leet = leet_fold(folded.text)
            if leet != folded.text:
                if "leetspeak" not in folds:
                    folds.append("leetspeak")
                self._scan_view(view, leet, "leetspeak" if via == "plain" else f"{via}+leetspeak", found)
        if depth > 0:
            for dv in decode_views(raw, folded.text):
                if dv.decoder not in decoders:
                    decoders.append(dv.decoder)
                self._scan(dv.text, dv.decoder if via == "plain" else f"{via}>{dv.decoder}", depth - 1, found, decoders, folds)

    def scan(self, text: str) -> ScanResult:
        """All rules ``text`` matches, best (highest effective precision) first."""
        found: dict[str, Match] = {}
        decoders: list[str] = []
        folds: list[str] = []
        self._scan(text, "plain", self.decode_depth, found, decoders, folds)
        ep = self.ruleset.effective_precision
        order = {r.id: i for i, r in enumerate(self.ruleset.rules)}
        matches = sorted(found.values(), key=lambda m: (-ep(m.rule), order[m.rule.id]))
        return ScanResult(matches=tuple(matches), decoders=tuple(decoders), folds=tuple(folds))


# --------------------------------------------------------------------------- the tier
@dataclass(frozen=True, kw_only=True)
class HeuristicOptions:
    """Options of a ``type: heuristic`` tier."""

    rules: str | Path | None = None
    """Another rules file, relative to the config's directory (default: the shipped one)."""
    decode_depth: int = 1
    """0 = no decoding; 1 = decode payloads (base64, hex, rot13, tags); up to 3 = also decode
    payloads inside decoded payloads."""
    leetspeak: bool = True
    """Scan a leetspeak-folded view when the text looks leet."""

    def __post_init__(self) -> None:
        if not 0 <= self.decode_depth <= 3:
            raise ValueError(f"options.decode_depth must be an integer in 0..3, got {self.decode_depth!r}")


@dataclass
class HeuristicTier:
    """Scores each covered policy as the best measured precision among the rules a text matches."""

    name: str
    policies: tuple[str, ...]
    ruleset: RuleSet
    decode_depth: int = 1
    leetspeak: bool = True
    _scanner: RuleScanner = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.policies = tuple(self.policies)
        if not self.policies:
            raise ValueError(f"heuristic tier {self.name!r}: covers no policy")
        self._scanner = RuleScanner(self.ruleset, decode_depth=self.decode_depth, leetspeak=self.leetspeak)

    @classmethod
    def from_spec(cls, spec: TierSpec) -> "HeuristicTier":
        """Build from a router config entry (options: :class:`HeuristicOptions`)."""
        o = spec.options_as(HeuristicOptions)
        rules_opt = o.rules
        if rules_opt is None:
            path = None
        else:
            if not str(rules_opt):
                raise ValueError(f"heuristic tier {spec.name!r}: options.rules must be a file path, got {rules_opt!r}")
            path = Path(rules_opt) if Path(rules_opt).is_absolute() else Path(spec.base_dir) / rules_opt
        ruleset = load_rules(path)
        covered = tuple(p for p in ruleset.policies if p in spec.policies)
        if not covered:
            raise ValueError(
                f"heuristic tier {spec.name!r}: the rules in {ruleset.path} score policies {list(ruleset.policies)}, "
                f"none of which is in the router config (policies: {list(spec.policies)}); "
                "add a 'jailbreak' policy to the config or drop the heuristic tier"
            )
        return cls(name=spec.name, policies=covered, ruleset=ruleset, decode_depth=o.decode_depth, leetspeak=o.leetspeak)

    @classmethod
    def default(cls, *, name: str = "heuristic", policies: Sequence[str] = ("jailbreak",), rules: str | Path | None = None,
                decode_depth: int = 1) -> "HeuristicTier":
        """Convenience constructor outside a router (experiments, tests)."""
        ruleset = load_rules(rules)
        covered = tuple(p for p in ruleset.policies if p in policies)
        if not covered:
            raise ValueError(f"heuristic tier {name!r}: rules score {list(ruleset.policies)}, none of {list(policies)}")
        return cls(name=name, policies=covered, ruleset=ruleset, decode_depth=decode_depth)

    def scan(self, text: str) -> ScanResult:
        """The raw scan (all matched rules, decoders, folds) without scoring."""
        return self._scanner.scan(text)

    def _one(self, text: Any) -> TierResult:
        t0 = time.perf_counter()
        if not isinstance(text, str):
            return TierResult(scores={}, error=f"heuristic tier expects str, got {type(text).__name__}")
        try:
            res = self._scanner.scan(text)
        except Exception as exc:  # a rule or decoder bug must not take the request down
            log.exception("heuristic tier %s failed on a text", self.name)
            return TierResult(scores={}, error=f"heuristic scan failed: {type(exc).__name__}: {exc}",
                              latency_ms=(time.perf_counter() - t0) * 1000)
        ep = self.ruleset.effective_precision
        scores: dict[str, float] = {}
        rule_ids: dict[str, tuple[str, ...]] = {}
        for pol in self.policies:
            ms = [m for m in res.matches if m.rule.policy == pol]
            scores[pol] = max((ep(m.rule) for m in ms), default=0.0)
            if ms:
                rule_ids[pol] = tuple(m.rule.id for m in ms)
        info: dict[str, Any] = {
            "matched": [{"id": m.rule.id, "family": m.rule.family, "precision": round(ep(m.rule), 4), "via": m.via} for m in res.matches],
            "decoders": list(res.decoders),
        }
        if res.folds:
            info["folds"] = list(res.folds)
        return TierResult(scores=scores, rule_ids=rule_ids, info=info, latency_ms=(time.perf_counter() - t0) * 1000)

    def classify(self, texts: Sequence[str]) -> list[TierResult]:
        """One :class:`TierResult` per text; never raises for an individual text."""
        return [self._one(t) for t in texts]
