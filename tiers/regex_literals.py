"""What a regex cannot match without: a cheap, exact pre-filter for the heuristic rules.

:func:`required` reads a pattern's parse tree (Python's own ``re`` parser) and returns what every
match needs in the text: ``("any", strings)`` (one of the strings occurs), ``("all", needs)`` or
``("one", needs)``; :func:`satisfied` tests a text. When a need is not satisfied the regex cannot
match, so skipping it changes no result. Substring tests are much faster than a backtracking regex
over a long text whose alternations defeat ``re``'s prefix scan (a rule opening "how to | help me |
i want to | ..." and needing a harm verb later is tried at every position of a 5,000-character
persona template; the harm verbs are what it cannot do without).

How needs are found: a sequence's items with a small finite language (literals, character classes
of a few letters, optional suffixes such as ``kill(?:ing)?``, zero-width assertions) are multiplied
out into runs, each run a need; an alternation needs one of its branches' needs; a repeat of at
least one needs its body's. Strings shorter than three characters are not worth a test, and
patterns with case-insensitive flags need nothing (the rules are written in lower case for the
lower-cased text). :func:`split_alternatives` cuts a pattern at its top-level ``|`` so that each
alternative is searched only when its own needs hold.
"""

from __future__ import annotations

import re
from re import _constants as C  # type: ignore[attr-defined]
from re import _parser as P  # type: ignore[attr-defined]
from typing import Any

MAX_STRINGS = 64
"""Largest finite language multiplied out."""
MIN_LENGTH = 3
"""A set whose shortest string is shorter than this filters too little to be worth checking."""

_Lang = frozenset[str]


_GROUPS = tuple(op for op in (C.SUBPATTERN, getattr(C, "ATOMIC_GROUP", None)) if op is not None)


def _group_body(op: Any, av: Any) -> Any:
    """The items inside a group, or None for a case-insensitive one."""
    if op is C.SUBPATTERN:
        _group, add_flags, _del_flags, body = av
        return None if add_flags & re.IGNORECASE else body
    return av  # an atomic group


def _product(a: _Lang, b: _Lang) -> _Lang | None:
    if len(a) * len(b) > MAX_STRINGS:
        return None
    return frozenset(x + y for x in a for y in b)


def _item_lang(op: Any, av: Any) -> _Lang | None:
    """The finite language of one parse item (``{""}`` for a zero-width one), or None."""
    if op is C.LITERAL:
        return frozenset({chr(av)})
    if op in (C.AT, C.ASSERT, C.ASSERT_NOT):
        return frozenset({""})
    if op is C.IN:
        chars: set[str] = set()
        for iop, iav in av:
            if iop is C.LITERAL:
                chars.add(chr(iav))
            elif iop is C.RANGE and iav[1] - iav[0] < 8:
                chars.update(chr(c) for c in range(iav[0], iav[1] + 1))
            else:  # NEGATE, CATEGORY, a wide range
                return None
        return frozenset(chars) if 0 < len(chars) <= 8 else None
    if op in _GROUPS:
        body = _group_body(op, av)
        return None if body is None else _seq_lang(body)
    if op is C.BRANCH:
        out: set[str] = set()
        for alt in av[1]:
            lang = _seq_lang(alt)
            if lang is None:
                return None
            out |= lang
            if len(out) > MAX_STRINGS:
                return None
        return frozenset(out)
    if op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)):
        lo, hi, p = av
        if hi is C.MAXREPEAT or hi > 3:
            return None
        body = _seq_lang(p)
        if body is None:
            return None
        out = set()
        power: _Lang | None = frozenset({""})
        for k in range(hi + 1):
            if k >= lo:
                out |= power  # type: ignore[arg-type]
            if k < hi:
                power = _product(power, body)  # type: ignore[arg-type]
                if power is None:
                    return None
        return frozenset(out) if len(out) <= MAX_STRINGS else None
    return None


def _seq_lang(items: Any) -> _Lang | None:
    lang: _Lang | None = frozenset({""})
    for op, av in items:
        part = _item_lang(op, av)
        if part is None:
            return None
        lang = _product(lang, part)  # type: ignore[arg-type]
        if lang is None:
            return None
    return lang


def _usable(s: _Lang | None) -> bool:
    return s is not None and 0 < len(s) <= MAX_STRINGS and "" not in s and min(map(len, s)) >= MIN_LENGTH


Need = tuple[Any, ...]
"""A requirement a match puts on the text: ``("any", strings)`` (one of them is in it),
``("all", needs)`` (every one holds) or ``("one", needs)`` (at least one holds)."""


def _minimal(strings: _Lang | tuple[str, ...]) -> tuple[str, ...]:
    """Drop every string that contains a shorter one of the set (finding the shorter one suffices)."""
    keep: list[str] = []
    for s in sorted(strings, key=lambda x: (len(x), x)):
        if not any(k in s for k in keep):
            keep.append(s)
    return tuple(sorted(keep))


def _all(needs: list[Need]) -> Need | None:
    needs = [n for n in needs if n is not None]
    if not needs:
        return None
    # the likeliest to fail first: the longest shortest string (rarer), the fewest alternatives
    needs.sort(key=lambda n: (-_rarity(n), _width(n)))
    return needs[0] if len(needs) == 1 else ("all", tuple(needs))


def _rarity(n: Need) -> int:
    if n[0] == "any":
        return min(map(len, n[1]))
    vals = [_rarity(c) for c in n[1]]
    return max(vals) if n[0] == "all" else min(vals)


def _width(n: Need) -> int:
    return len(n[1]) if n[0] == "any" else sum(_width(c) for c in n[1])


def _item_need(op: Any, av: Any) -> Need | None:
    """What every match of this (non-finite) item requires of the text, or None."""
    if op in _GROUPS:
        body = _group_body(op, av)
        return None if body is None else _seq_need(body)
    if op is C.BRANCH:
        alts = [_seq_need(alt) for alt in av[1]]
        if any(a is None for a in alts):
            return None
        return alts[0] if len(alts) == 1 else ("one", tuple(alts))
    if op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)) and av[0] >= 1:
        return _seq_need(av[2])
    return None


def _seq_need(items: Any) -> Need | None:
    """Every run of finite items multiplied out, and every other item's own need, all required."""
    needs: list[Need] = []
    run: _Lang | None = frozenset({""})
    run_items: list[_Lang] = []

    def close() -> None:
        if _usable(run):
            needs.append(("any", _minimal(run)))  # type: ignore[arg-type]
        elif run is None:  # too many strings multiplied out: each item on its own
            needs.extend(("any", _minimal(x)) for x in run_items if _usable(x))

    for op, av in items:
        lang = _item_lang(op, av)
        if lang is not None:
            run_items.append(lang)
            run = None if run is None else _product(run, lang)
            continue
        close()
        run, run_items = frozenset({""}), []
        needs.append(_item_need(op, av))  # type: ignore[arg-type]
    close()
    return _all(needs)


def required(pattern: str) -> Need | None:
    """What every match of ``pattern`` requires of the text (see :func:`satisfied`), or None."""
    try:
        parsed = P.parse(pattern)
    except re.error:
        return None
    if parsed.state.flags & re.IGNORECASE:
        return None
    return _seq_need(list(parsed))


def satisfied(need: Need, text: str, seen: dict[str, bool]) -> bool:
    """Whether ``text`` meets ``need``; ``seen`` caches substring tests across the rules of one text."""
    kind, parts = need
    if kind == "any":
        for s in parts:
            hit = seen.get(s)
            if hit is None:
                hit = seen[s] = s in text
            if hit:
                return True
        return False
    if kind == "all":
        return all(satisfied(n, text, seen) for n in parts)
    return any(satisfied(n, text, seen) for n in parts)


_GLOBAL_FLAGS = re.compile(r"\(\?[aiLmsux]+\)")
_BACKREF = re.compile(r"\(\?P=|\\[1-9]")


def split_alternatives(pattern: str) -> list[str]:
    """The top-level alternatives of ``pattern`` (``a|b(c|d)|e`` -> ``a``, ``b(c|d)``, ``e``).

    ``re.search(pattern)`` finds a match exactly when one of them does, so each can be searched
    on its own, and only those whose :func:`required` strings are in the text. A pattern with a
    backreference or an inline global flag is returned whole (splitting would change it)."""
    if _BACKREF.search(pattern) or _GLOBAL_FLAGS.search(pattern):
        return [pattern]
    parts, depth, start, i, n = [], 0, 0, 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":  # a character class: skip to its end ("[]" and "[^]" open with a literal ']')
            i += 2 if pattern.startswith("[^", i) else 1
            if i < n and pattern[i] == "]":
                i += 1
            while i < n and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
        i += 1
    parts.append(pattern[start:])
    return parts
