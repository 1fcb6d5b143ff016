"""The ``heuristic`` tier: named, measured rules for known jailbreak signatures (sub-millisecond).

The rules (a YAML file, default: the shipped ``models/heuristic_rules.yaml``) and the detectors
are in :mod:`safecascade.tiers.heuristic_rules`. Here: scanning a text with them and scoring it.
A rule's regex ``pattern`` (compiled once, matched against the *folded* text - see
:mod:`safecascade.tiers.obfuscation`) or its ``detector`` runs on the text; decoded payloads
(base64 / hex / rot13 / Unicode tags) and a leetspeak view are re-scanned with the same rules.

Speed: a rule's ``keywords`` gate it first (a set lookup); then each top-level alternative of its
pattern is searched on its own, and only when the text holds one of the strings every match of
that alternative needs (:mod:`safecascade.tiers.regex_literals`, exact: it never changes what a
rule matches). Long texts gain most: a backtracking alternation is tried at every position.

Score: the largest *measured precision* among the rules a text matches (0.0 when none match).
Precision and support are measured on the jailbreak benchmark's train split and written into
the YAML by ``python -m safecascade.training.rule_precision --write``. A rule never measured, or
measured on fewer than ``min_support`` matches, scores at most ``default_precision`` - so with
the band ``[null, 0.98]`` only well-supported rules with precision >= 0.98 decide alone.

Options (router config ``tiers[].options``): :class:`HeuristicOptions` (``rules``,
``decode_depth``, ``leetspeak``); an unknown key or a wrong type fails at load.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from safecascade.tiers.base import TierResult, TierSpec
from safecascade.tiers.heuristic_rules import DETECTORS, Rule, RuleSet, ScanView, load_rules, relax_pattern
from safecascade.tiers.regex_literals import Need, required, satisfied, split_alternatives
from safecascade.tiers.segments import json_strings
from safecascade.tiers.obfuscation import decode_views, despaced, fold, fold_table, leet_fold, looks_leet, unsplit_lines

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class _Part:
    """One top-level alternative of a rule's pattern, searched only when the text holds what every
    match of it needs (:mod:`safecascade.tiers.regex_literals`) and its relaxed form matches."""

    regex: re.Pattern[str]
    prefilter: re.Pattern[str] | None
    needs: Need | None

    def search(self, text: str, seen: dict[str, bool]) -> bool:
        if self.needs is not None and not satisfied(self.needs, text, seen):
            return False
        if self.prefilter is not None and self.prefilter.search(text) is None:
            return False
        return self.regex.search(text) is not None


def _part(pattern: str, literal_filter: bool) -> _Part:
    relaxed = relax_pattern(pattern)
    return _Part(re.compile(pattern), re.compile(relaxed) if relaxed != pattern else None,
                 required(pattern) if literal_filter else None)


def _parts(pattern: str, literal_filter: bool) -> tuple[_Part, ...]:
    """The pattern's top-level alternatives (the whole pattern without the literal filter)."""
    return tuple(_part(a, literal_filter) for a in (split_alternatives(pattern) if literal_filter else [pattern]))


@dataclass(frozen=True, kw_only=True)
class _Compiled:
    rule: Rule
    regex: re.Pattern[str] | None
    parts: tuple[_Part, ...]  # the pattern's alternatives, searched one by one
    unless: re.Pattern[str] | None  # vetoes a match where it occurs in the same text
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

    __slots__ = ("text", "_words", "seen")

    def __init__(self, text: str):
        self.text = text
        self._words: frozenset[str] | None = None
        self.seen: dict[str, bool] = {}  # substring tests of the rules' literal pre-filters

    @property
    def words(self) -> frozenset[str]:
        if self._words is None:
            self._words = words_of(self.text)
        return self._words


#: an ``unless`` vetoes a rule's match where it occurs within this many characters either side of
#: it: far from the match it says nothing about it, and text-wide, 100,000 characters of benign
#: padding holding "the character" or "in a story" once vetoed every harmful-request rule
UNLESS_REACH = 1_000


def _vetoed(c: _Compiled, text: str) -> bool:
    """Whether every match of ``c``'s rule in ``text`` has its ``unless`` pattern near it."""
    assert c.unless is not None and c.regex is not None
    if c.unless.search(text) is None:  # nowhere in the text: nothing to look for near the matches
        return False
    if len(text) <= UNLESS_REACH:  # the whole text is near any match
        return True
    for m in c.regex.finditer(text):
        if c.unless.search(text, max(0, m.start() - UNLESS_REACH), m.end() + UNLESS_REACH) is None:
            return False
    return True


@functools.lru_cache(maxsize=16)
def _compile_rules(ruleset: RuleSet, literal_filter: bool) -> tuple[_Compiled, ...]:
    """The compiled form of every rule of ``ruleset`` (immutable, so shared by every scanner of an
    equal rule set in the process: compiling the shipped rules takes most of a second)."""
    return tuple(
        _Compiled(
            rule=r,
            # lower-case patterns on lower-cased text: case-insensitive without re.IGNORECASE,
            # which would disable the fast prefix scan
            regex=re.compile(r.pattern) if r.pattern else None,
            parts=_parts(r.pattern, literal_filter) if r.pattern else (),
            unless=re.compile(r.unless) if r.unless else None,
            detector=DETECTORS[r.detector] if r.detector else None,
            gate_words=frozenset(k for k in r.keywords if _WORD_RE.fullmatch(k)),
            gate_literals=tuple(k for k in r.keywords if not _WORD_RE.fullmatch(k)),
        )
        for r in ruleset.rules
    )


class RuleScanner:
    """Compiled form of a :class:`RuleSet`; ``scan(text)`` finds every matching rule."""

    def __init__(self, ruleset: RuleSet, *, decode_depth: int = 1, leetspeak: bool = True, check_gates: bool = False,
                 literal_filter: bool = True):
        if not isinstance(decode_depth, int) or isinstance(decode_depth, bool) or not 0 <= decode_depth <= 3:
            raise ValueError(f"decode_depth must be an integer in 0..3, got {decode_depth!r}")
        self.ruleset = ruleset
        self.decode_depth = decode_depth
        self.leetspeak = bool(leetspeak)
        #: with check_gates, rules are also run when their keywords are absent, and a match that
        #: the keywords would have skipped is counted here (rule id -> count): keywords must be 0
        self.check_gates = check_gates
        self.gate_misses: dict[str, int] = {}
        self._compiled = _compile_rules(ruleset, bool(literal_filter))
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
                if not any(p.search(text, tv.seen) for p in c.parts):
                    continue
                if c.unless is not None and _vetoed(c, text):
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
        joined = despaced(folded.text)
        if joined is not None:  # letters spaced apart ("i g n o r e"): the rules read the words
            if "spacing" not in folds:
                folds.append("spacing")
            self._scan_view(view, joined, "spacing" if via == "plain" else f"{via}+spacing", found)
        unsplit = unsplit_lines(folded.text)
        if unsplit is not None:  # one word per line: the rules read the sentence (the model tiers' view too)
            if "newline_split" not in folds:
                folds.append("newline_split")
            self._scan_view(view, unsplit, "newline_split" if via == "plain" else f"{via}+newline_split", found)
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
        # a JSON document (a tool's result): its string values one per line, escapes undone, so a
        # planted line reads as it would outside JSON ("\n" is a line break, not two letters)
        values = json_strings(text)
        if values:
            self._scan(values, "json", self.decode_depth, found, decoders, folds)
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
        cites: dict[str, list[str]] = {}
        for m in res.matches:  # the sub-categories the matched rules detect, per policy
            if m.rule.cites and m.rule.policy in self.policies:
                got = cites.setdefault(m.rule.policy, [])
                got.extend(c for c in m.rule.cites if c not in got)
        if cites:
            info["cites"] = cites
        return TierResult(scores=scores, rule_ids=rule_ids, info=info, latency_ms=(time.perf_counter() - t0) * 1000)

    def classify(self, texts: Sequence[str]) -> list[TierResult]:
        """One :class:`TierResult` per text; never raises for an individual text."""
        return [self._one(t) for t in texts]
