"""The heuristic rules' exact pre-filter: the strings a regex cannot match without, and its split
into top-level alternatives."""

from __future__ import annotations

import re

import pytest

from safecascade.tiers.heuristic import RuleScanner
from safecascade.tiers.heuristic_rules import load_rules
from safecascade.tiers.regex_literals import required, satisfied, split_alternatives


def _holds(pattern: str, text: str) -> bool:
    need = required(pattern)
    return need is None or satisfied(need, text, {})


def test_a_match_needs_one_of_the_harm_words_not_the_opener():
    pat = r"\b(?:how to|help me|i want to)\s+(?:\w+\s+){0,2}?(?:kill(?:ing)?|poison(?:ing)?|stab)\s+(?:my|a) (?:neighbou?r|dog)\b"
    need = required(pat)
    assert need is not None
    assert _holds(pat, "how to quietly poison my neighbour")
    # the opener alone is not enough: the filter rejects without running the regex
    assert not _holds(pat, "how to bake bread for my neighbour")
    assert not _holds(pat, "help me kill time before the dog walk")  # 'kill' present, 'my|a' + object missing
    assert re.search(pat, "help me kill time before the dog walk") is None


@pytest.mark.parametrize("pattern", [r"\w+in", r".{3,}", r"[^a]+", r"(?i)kill", r"a|b", r"(?:x)?y"])
def test_patterns_without_a_useful_literal_need_nothing(pattern):
    assert required(pattern) is None


def test_optional_parts_and_alternations_are_multiplied_out():
    need = required(r"\bcolou?r (?:red|blue)\b")
    assert need == ("any", ("color blue", "color red", "colour blue", "colour red"))
    assert required(r"\b(?:a|b)c+ (?:dog|cat)s?") == ("any", (" cat", " dog"))


def test_split_alternatives_respects_groups_classes_and_escapes():
    assert split_alternatives(r"a|b(c|d)|[|]e|\|f|[]|]g|[^]|]h") == ["a", "b(c|d)", "[|]e", r"\|f", "[]|]g", "[^]|]h"]
    assert split_alternatives(r"(a)|\1") == [r"(a)|\1"]  # a backreference: kept whole
    assert split_alternatives(r"(?i)a|b") == [r"(?i)a|b"]  # a global flag: kept whole


def test_every_match_of_every_shipped_rule_meets_its_need():
    """Soundness on the shipped rules: each alternative's need holds wherever the alternative matches
    (on every example and on each example cut short, where partial matches appear)."""
    rules = load_rules(None).rules
    texts = [t.lower() for r in rules for t in (*r.positive_examples, *r.negative_examples)]
    texts += [t[: len(t) // 2] for t in texts] + [" ".join(texts[i : i + 3]) for i in range(0, len(texts), 3)]
    checked = 0
    for r in rules:
        if not r.pattern:
            continue
        alts = split_alternatives(r.pattern)
        assert "|".join(alts) == r.pattern
        for a in alts:
            rx = re.compile(a)
            for t in texts:
                if rx.search(t):
                    checked += 1
                    assert _holds(a, t), (r.id, a[:80], t[:80])
    assert checked > 300


def test_the_filtered_scanner_finds_exactly_what_the_plain_one_does():
    rules = load_rules(None)
    on, off = RuleScanner(rules), RuleScanner(rules, literal_filter=False)
    texts = [t for r in rules.rules for t in (*r.positive_examples, *r.negative_examples)]
    assert any(on.scan(t).matches for t in texts)
    for t in texts:
        assert [(m.rule.id, m.via) for m in on.scan(t).matches] == [(m.rule.id, m.via) for m in off.scan(t).matches], t
