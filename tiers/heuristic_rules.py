"""The heuristic tier's rules file and detectors: the rule schema (:class:`Rule`,
:class:`RuleSet`), loading and validating a rules YAML (default: the shipped
``models/heuristic_rules.yaml``), and the named ``detector`` functions a rule may use instead of
a regex ``pattern`` (:data:`DETECTORS`).

Each rule has an ``id`` (``HR-DAN-1``), a ``family``, the ``policy`` it scores, a ``description``
and either a regex ``pattern`` (matched against the *folded* text, lower case - see
:mod:`safecascade.tiers.obfuscation`) or a ``detector``; ``keywords`` gate the regex, and the
optional ``unless`` pattern vetoes a match when it occurs near it, within
:data:`safecascade.tiers.heuristic.UNLESS_REACH` characters (a rule for "how to make a bomb" does not
fire on "in the movie, how did the character make ..."). A regex
used by several rules is written once under the file's ``fragments:`` (name: regex) and used as
``(?&name)`` in a ``pattern`` or ``unless``: it stands for ``(?:regex)``. The
measured ``precision`` / ``support`` (from ``python -m safecascade.training.rule_precision
--write``) set the rule's score. Scanning and scoring: :mod:`safecascade.tiers.heuristic`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from safecascade.router.policy import RULE_ID, is_safe_rule_id
from safecascade.tiers.obfuscation import Folded

DEFAULT_PRECISION = 0.5
DEFAULT_MIN_SUPPORT = 10
_RULE_KEYS = {"id", "family", "policy", "description", "cites", "pattern", "detector", "keywords", "unless", "precision", "support", "examples"}
_ID_RE = re.compile(r"^[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)+$")
# a use of a named fragment in a rule's regex (the PCRE spelling of a named subpattern call, an
# error to Python's ``re``, so it never means anything else)
_FRAGMENT_USE = re.compile(r"\(\?&([a-z][a-z0-9_]*)\)")
_FRAGMENT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


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
    unless: str | None = None  # a match is vetoed where this pattern occurs near it (UNLESS_REACH)
    precision: float | None = None
    support: int = 0
    positive_examples: tuple[str, ...] = ()
    negative_examples: tuple[str, ...] = ()
    cites: tuple[str, ...] = ()
    """The ids of its policy's rules (sub-categories such as ``HR1.b``) a match detects: the file's
    ``cites``, or else the violating rule ids its description names."""


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
    """``pattern`` with every ``\\b`` word-boundary assertion removed, except inside a negative
    lookaround (``(?!...)``, ``(?<!...)``).

    Removing a zero-width assertion only widens what a pattern matches, so the relaxed regex is
    a correct pre-filter: when it finds nothing, neither does the rule. Inside a negative
    lookaround it would narrow it instead (``are (?!no\\b)`` rejects "are nothing" once the
    ``\\b`` is gone), so those are kept. Without a leading ``\\b`` Python's ``re`` can use its
    literal / first-character prefix scan, which is 10-50x faster than trying the full pattern at
    every position of a text that does not match.
    """
    out, i, in_class = [], 0, False
    groups: list[bool] = []  # one entry per open group: is it a negative lookaround?
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            if pattern[i + 1] == "b" and not in_class and not any(groups):
                i += 2
                continue
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        elif c == "(" and not in_class:
            groups.append(pattern.startswith("(?!", i) or pattern.startswith("(?<!", i))
        elif c == ")" and not in_class and groups:
            groups.pop()
        out.append(c)
        i += 1
    return "".join(out)


def _has_upper_literal(pattern: str) -> bool:
    """True when an upper-case ASCII letter appears outside an escape (``\\S``, ``\\W``) or group name."""
    stripped = re.sub(r"\\.|\(\?P<\w+>|\(\?P=\w+\)|\(\?[aiLmsux-]+[:)]", "", pattern)
    return any("A" <= ch <= "Z" for ch in stripped)


def _fail(path: str, where: str, msg: str) -> ValueError:
    return ValueError(f"heuristic rules file {path}: {where}: {msg}")


def _check_regex(path: str, where: str, name: str, rx: str, empty_would: str) -> None:
    """A rule's regex (``pattern`` or ``unless``) compiles, is written in lower case (rules match
    the lower-cased folded text) and does not match the empty string."""
    try:
        compiled = re.compile(rx, re.IGNORECASE)
    except re.error as exc:
        raise _fail(path, where, f"bad {name} regex: {exc}") from None
    if _has_upper_literal(rx):
        raise _fail(path, where, f"{name} has upper-case letters; rules match the lower-cased folded text, write them in lower case")
    if compiled.search("") is not None:
        raise _fail(path, where, f"{name} matches the empty string (it would {empty_would})")


def _parse_fragments(data: Mapping[str, Any], path: str) -> dict[str, str]:
    """The file's ``fragments:`` (name -> regex), each checked to compile on its own."""
    raw = data.get("fragments") or {}
    if not isinstance(raw, Mapping):
        raise _fail(path, "fragments", "expected a mapping of name: regex")
    out: dict[str, str] = {}
    for name, rx in raw.items():
        where = f"fragment {name!r}"
        if not isinstance(name, str) or not _FRAGMENT_NAME.match(name):
            raise _fail(path, where, "a fragment name is lower case letters, digits and '_', starting with a letter")
        if not isinstance(rx, str) or not rx:
            raise _fail(path, where, "must be a non-empty regex string")
        if _FRAGMENT_USE.search(rx):
            raise _fail(path, where, "a fragment cannot use another fragment")
        try:
            re.compile(rx)
        except re.error as exc:
            raise _fail(path, where, f"bad regex: {exc}") from None
        out[name] = rx
    return out


def _expand(path: str, where: str, name: str, rx: str, fragments: Mapping[str, str]) -> str:
    """``rx`` with every ``(?&fragment)`` replaced by ``(?:the fragment's regex)``."""
    def use(m: re.Match[str]) -> str:
        if m.group(1) not in fragments:
            known = ", ".join(sorted(fragments)) or "none"
            raise _fail(path, where, f"{name} uses an unknown fragment {m.group(1)!r} (defined: {known})")
        return f"(?:{fragments[m.group(1)]})"
    return _FRAGMENT_USE.sub(use, rx)


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
    fragments = _parse_fragments(data, path)
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
            pattern = _expand(path, where, "'pattern'", pattern, fragments)
            _check_regex(path, where, "'pattern'", pattern, "match every text")
            try:
                re.compile(relax_pattern(pattern))
            except re.error as exc:
                raise _fail(path, where, f"bad 'pattern' regex (as relaxed for look-alike letters): {exc}") from None
        unless = r.get("unless")
        if unless is not None:
            if pattern is None or not isinstance(unless, str) or not unless:
                raise _fail(path, where, "'unless' must be a non-empty regex string, on a rule with a 'pattern'")
            unless = _expand(path, where, "'unless'", unless, fragments)
            _check_regex(path, where, "'unless'", unless, "veto every match")
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
        cites = r.get("cites")
        if cites is None:
            cites = [c for c in RULE_ID.findall(r["description"]) if not is_safe_rule_id(c)]
        elif not isinstance(cites, list) or not all(isinstance(c, str) and RULE_ID.fullmatch(c) and not is_safe_rule_id(c) for c in cites):
            raise _fail(path, where, f"'cites' must be a list of violating policy rule ids such as HR1.b, got {cites!r}")
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
                unless=unless, precision=None if precision is None else float(precision), support=support,
                positive_examples=tuple(str(x) for x in pos), negative_examples=tuple(str(x) for x in neg),
                cites=tuple(dict.fromkeys(cites)),
            )
        )
    measured_on = data.get("measured_on")
    return RuleSet(rules=tuple(rules), path=path, default_precision=float(default_precision), min_support=min_support,
                   measured_on=None if measured_on is None else str(measured_on))


# libyaml's loader where PyYAML was built with it (the wheels are): ~10x faster on the shipped file
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=16)
def _parse_file(path: str, text: str) -> RuleSet:
    """The validated rules of one file's content, kept per (path, text): a process that builds
    several routers (a server's reload, Spark executors, tests) parses and checks it once."""
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        raise ValueError(f"heuristic rules file {path}: invalid YAML: {exc}") from exc
    return parse_rules(data, path=path)


def load_rules(path: str | Path | None = None) -> RuleSet:
    """Load and validate a rules YAML file (``None`` = the shipped one).

    The result is immutable and kept per file content: loading an unchanged file again (another
    router in the same process) returns the same :class:`RuleSet` without parsing it again; an
    edited file is parsed and validated anew."""
    p = default_rules_path() if path is None else Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"heuristic rules file {p}: cannot read: {exc.strerror or exc}") from exc
    return _parse_file(str(p), text)
