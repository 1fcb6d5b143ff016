"""The per-sub-category rows of the policy eval (unit level: decisions built by hand)."""

from __future__ import annotations

from types import SimpleNamespace

from experiments.exp_policies import SUB_CATEGORIES, document_rows, sub_category, sub_category_rows
from safecascade.router.decision import Decision, PolicyVerdict
from safecascade.router.policy import Policy, builtin_policies
from safecascade.training.policy_data import PolicyExample

POL = "harmful_request"


def _decision(action: str, subs: tuple[str, ...] = ()) -> Decision:
    return Decision(action=action, tier="t", reason="r", score=0.9, latency_ms=0.0, path=(), text_hash="h", config_name="c",
                    config_hash="x", policy_hashes={}, policies={POL: PolicyVerdict(score=0.9, flagged=action == "block", sub_categories=subs)})


def test_every_mapped_sub_category_is_a_violating_rule_of_its_policy():
    for name, sources in SUB_CATEGORIES.items():
        policy = Policy.from_file(name, builtin_policies()[name])
        mapped = {sub for cats in sources.values() for sub in cats.values()}
        assert mapped <= set(policy.violating_rule_ids()), name


def test_rows_count_blocks_and_listed_sub_categories_per_sub_category():
    router = SimpleNamespace(policies={POL: Policy.from_file(POL, builtin_policies()[POL])})
    ex = [PolicyExample(text=f"t{i}", labels={POL: y}, source=src, id=f"e{i}", category=cat)
          for i, (src, cat, y) in enumerate([("ailuminate", "iwp", 1), ("ailuminate", "iwp", 1), ("ailuminate", "iwp", 0),
                                             ("toxigen", "hate", 1), ("ailuminate", "ipv", 1)])]
    dec = {"e0": _decision("block", ("HR1.b",)), "e1": _decision("allow"), "e2": _decision("block", ("HR1.b",)),
           "e3": _decision("block"), "e4": _decision("block")}
    assert sub_category(ex[4], POL) is None  # intellectual property: not a sub-category of this policy
    rows = {r["set"]: r for r in sub_category_rows("default", router, POL, ex, dec)}
    assert set(rows) == {"test violations: HR1.b Weapons", "test violations: HR4.a Hate"}
    weapons, hate = rows["test violations: HR1.b Weapons"], rows["test violations: HR4.a Hate"]
    assert (weapons["n"], weapons["R_blocked"], weapons["sub_category_listed"]) == (2, 0.5, 1.0)  # the label-0 row is not counted
    assert (hate["n"], hate["R_blocked"], hate["sub_category_listed"]) == (1, 1.0, 0.0)


def test_every_mapped_category_occurs_among_the_test_splits_violations():
    from safecascade.training.policy_data import load_policy_benchmark

    test = load_policy_benchmark("test")
    missing = []
    for name, sources in SUB_CATEGORIES.items():
        seen = {(e.source, e.category) for e in test if e.labels.get(name) == 1}
        missing += [(name, src, cat) for src, cats in sources.items() for cat in cats if (src, cat) not in seen]
    assert not missing, f"categories the test split does not have (renamed upstream?): {missing}"


def test_document_rows_give_attacks_blocked_and_clean_documents_blocked_per_category():
    pi = {"prompt_injection": 1}
    ex = [PolicyExample(text=f"t{i}", labels=labels, source=src, id=f"e{i}", category=cat)
          for i, (src, cat, labels) in enumerate([("bipia", "task-irrelevant", pi), ("bipia", "task-irrelevant", pi),
                                                  ("bipia", "clean", {"prompt_injection": 0}), ("bipia", "clean", {"prompt_injection": 0}),
                                                  ("bipia", "clean", {"prompt_injection": 0}), ("exfil_planted", "benign", {"prompt_injection": 0}),
                                                  ("gandalf", "", pi)])]
    dec = {"e0": _decision("block"), "e1": _decision("allow"), "e2": _decision("block"), "e3": _decision("allow"),
           "e4": _decision("allow"), "e5": _decision("allow"), "e6": _decision("block")}
    rows = {r["set"]: r for r in document_rows("default", ex, dec)}
    assert set(rows) == {"documents: BIPIA task-irrelevant attacks", "documents: BIPIA clean (benign)",
                         "documents: planted lines benign (benign)"}  # Gandalf is not a document
    attacks, clean = rows["documents: BIPIA task-irrelevant attacks"], rows["documents: BIPIA clean (benign)"]
    assert (attacks["n"], attacks["positives"], attacks["R_blocked"]) == (2, 2, 0.5) and "benign_flag_rate" not in attacks
    assert (clean["n"], clean["positives"], clean["benign_flag_rate"]) == (3, 0, 1 / 3) and "R_blocked" not in clean
