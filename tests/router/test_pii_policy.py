"""The shipped PII policy: same structure and 400-600 token budget as the other shipped policies,
exact rule ids, and it composes with them in one joint (multi-policy) safeguard prompt."""

from __future__ import annotations

import re

import pytest

from safecascade.router.policy import RULE_ID, Policy, builtin_policies, builtin_policy_path
from tests.router.test_policy import SECTIONS, _minilm_tokenizer

PII_IDS = ("PII1.a", "PII1.b", "PII1.c", "PII1.d", "PII1.e", "PII2.a", "PII2.b",
           "PII0.a", "PII0.b", "PII0.c", "PII0.d", "PII0.e")


def _pii() -> Policy:
    return Policy.from_file("pii", builtin_policy_path("pii.md"))


def test_pii_is_shipped_with_exact_rule_ids():
    assert "pii" in builtin_policies()
    pol = _pii()
    assert pol.rule_ids == PII_IDS
    assert pol.violating_rule_ids() == PII_IDS[:7]


def test_pii_structure_follows_the_safeguard_guide():
    text = builtin_policy_path("pii.md").read_text(encoding="utf-8")
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions), "sections out of order"
    for key in ('"violation"', '"policy_category"', '"rule_ids"', '"confidence"', '"rationale"'):
        assert key in text
    cited = RULE_ID.findall(text[text.index("## EXAMPLES"):])
    known, bad = _pii().check_citations(cited)
    assert not bad and set(known) & set(_pii().violating_rule_ids()) and set(known) - set(_pii().violating_rule_ids())


def test_pii_token_budget():
    text = builtin_policy_path("pii.md").read_text(encoding="utf-8")
    assert 400 <= len(text.split()) / 0.75 <= 600
    n = len(_minilm_tokenizer().encode(text, add_special_tokens=False).ids)
    assert 400 <= n <= 600, n


def test_rule_id_prefixes_do_not_collide_with_other_policies():
    shipped = {n: Policy.from_file(n, p) for n, p in builtin_policies().items()}
    for name, pol in shipped.items():
        if name == "pii":
            continue
        assert not set(pol.rule_ids) & set(PII_IDS)


def test_joint_prompt_and_grammar_hold_all_three_policies():
    from safecascade.tiers.safeguard.parse import parse_verdicts
    from safecascade.tiers.safeguard.prompt import developer_text, json_grammar

    pols = {n: Policy.from_file(n, builtin_policy_path(f"{n}.md")) for n in ("jailbreak", "harmful_content", "pii")}
    dev = developer_text(pols, joint=True)
    for n, p in pols.items():
        assert f"## Policy: {n}" in dev and p.text.strip() in dev
    assert "in the order jailbreak, harmful_content, pii" in dev
    g = json_grammar(list(pols), joint=True, prefilled=False)
    root = g.splitlines()[0]
    assert all(f'\\"{n}\\": ' in root for n in pols)
    assert re.match(r'^rid ::= .*\[A-Z\] \[A-Z0-9\]\{0,4\}', [ln for ln in g.splitlines() if ln.startswith("rid")][0])
    answer = ('{"jailbreak": {"violation": 0, "policy_category": "none", "rule_ids": [], "confidence": "high", "rationale": "x"}, '
              '"harmful_content": {"violation": 0, "policy_category": "none", "rule_ids": [], "confidence": "high", "rationale": "x"}, '
              '"pii": {"violation": 1, "policy_category": "identifier", "rule_ids": ["PII1.a"], "confidence": "high", "rationale": "x"}}')
    v = parse_verdicts(answer, list(pols), joint=True)
    assert v["pii"].violation == 1 and v["pii"].rule_ids == ("PII1.a",) and v["jailbreak"].violation == 0
    # PII ids fit the grammar's rule-id shape (prefix of up to 5 characters)
    assert all(re.fullmatch(r"[A-Z][A-Z0-9]{0,4}\.[a-z0-9]{1,3}", r) for r in PII_IDS)


@pytest.mark.parametrize("rid", PII_IDS)
def test_every_pii_rule_can_be_ablated(rid):
    from safecascade.training.policy_checks import drop_rule

    var = drop_rule(_pii(), rid)
    assert rid not in var.rule_ids and rid not in var.text
