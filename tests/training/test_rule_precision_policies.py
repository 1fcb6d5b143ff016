"""Rule precision per policy: each rule is counted against its own policy's labels."""

from __future__ import annotations

from safecascade.tiers.heuristic_rules import load_rules
from safecascade.training.rule_precision import measure


def test_each_rule_counts_against_its_own_policy() -> None:
    rs = load_rules()
    jb = next(r for r in rs.rules if r.policy == "jailbreak")
    pi = next(r for r in rs.rules if r.policy == "prompt_injection")
    matched = [(jb.id, pi.id), (jb.id, pi.id), (pi.id,)]
    labels = [1, 1, 0]  # the single-label view: ignored when labels per policy are given
    by_policy = {"jailbreak": [1, -1, -1], "prompt_injection": [0, 1, -1]}
    stats = {s.rule_id: s for s in measure(rs, matched, labels, by_policy)}
    assert (stats[jb.id].tp, stats[jb.id].fp) == (1, 0)  # texts 2 and 3 are not labelled for jailbreak
    assert (stats[pi.id].tp, stats[pi.id].fp) == (1, 1)  # text 3 is not labelled for prompt_injection
    plain = {s.rule_id: s for s in measure(rs, matched, labels)}
    assert (plain[pi.id].tp, plain[pi.id].fp) == (2, 1)
