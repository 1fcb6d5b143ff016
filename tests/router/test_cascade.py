"""Router semantics: bands, last tier, multi-policy, errors, replay, batch and async."""

from __future__ import annotations

import asyncio
import json

import pytest

from safecascade.router.cascade import Router
from safecascade.router.decision import json_default
from tests.router import fakes


def _table(name, table, band=(0.1, 0.9), policies=None, fail_on=(), **extra):
    opts = {"table": table, "fail_on": list(fail_on)}
    if policies:
        opts["policies"] = policies
    t = {"name": name, "type": "table", "options": opts, "bands": {"default": list(band)}}
    t.update(extra)
    return t


def _last(name, table, threshold=0.5, fail_on=(), **extra):
    t = {"name": name, "type": "table", "options": {"table": table, "fail_on": list(fail_on)}, "threshold": threshold}
    t.update(extra)
    return t


def test_band_allow_block_and_escalate(make_config):
    table1 = {"low": {"a": 0.05}, "high": {"a": 0.95}, "mid": {"a": 0.5}}
    table2 = {"mid": {"a": 0.7}}
    router = Router.load(make_config([_table("t1", table1), _last("t2", table2)]))
    low, high, mid = router.classify_batch(["low", "high", "mid"])
    assert (low.action, low.tier, low.reason) == ("allow", "t1", "band")
    assert (high.action, high.tier, high.reason) == ("block", "t1", "band")
    assert (mid.action, mid.tier, mid.reason) == ("block", "t2", "last_tier")
    assert [t.tier for t in mid.path] == ["t1", "t2"] and mid.path[0].outcome == "escalate"
    assert mid.policies["a"].score == pytest.approx(0.7) and mid.policies["a"].flagged
    assert mid.flagged and not low.flagged


def test_band_edges_are_inclusive(make_config):
    table = {"lo": {"a": 0.1}, "hi": {"a": 0.9}}
    router = Router.load(make_config([_table("t1", table), _last("t2", {})]))
    lo, hi = router.classify_batch(["lo", "hi"])
    assert (lo.action, lo.tier) == ("allow", "t1")
    assert (hi.action, hi.tier) == ("block", "t1")


def test_last_tier_threshold(make_config):
    router = Router.load(make_config([_last("only", {"x": {"a": 0.49}, "y": {"a": 0.5}})]))
    x, y = router.classify_batch(["x", "y"])
    assert x.action == "allow" and y.action == "block"
    assert x.reason == y.reason == "last_tier"


def test_null_allow_band_never_allows(make_config):
    table = {"clean": {"a": 0.0}}
    router = Router.load(make_config([_table("heur", table, band=(None, 0.98)), _last("t2", {"clean": {"a": 0.2}})]))
    d = router.classify("clean")
    assert d.tier == "t2" and d.action == "allow"


def test_multi_policy_block_if_any_allow_only_if_all(make_config):
    t1 = {
        "one_bad": {"a": 0.02, "b": 0.97},
        "both_ok": {"a": 0.02, "b": 0.03},
        "one_unsure": {"a": 0.02, "b": 0.5},
    }
    t2 = {"one_unsure": {"a": 0.1, "b": 0.2}}
    router = Router.load(make_config([_table("t1", t1), _last("t2", t2)], policies=("a", "b")))
    one_bad, both_ok, one_unsure = router.classify_batch(["one_bad", "both_ok", "one_unsure"])
    assert (one_bad.action, one_bad.tier) == ("block", "t1")
    assert one_bad.policies["b"].flagged and not one_bad.policies["a"].flagged
    assert (both_ok.action, both_ok.tier) == ("allow", "t1")
    assert (one_unsure.action, one_unsure.tier) == ("allow", "t2")


def test_tier_covering_one_policy_cannot_allow_alone(make_config):
    t1 = {"x": {"a": 0.0}, "y": {"a": 0.99}}
    router = Router.load(make_config([_table("t1", t1, policies=["a"]), _last("t2", {"x": {"a": 0.1, "b": 0.8}})],
                                     policies=("a", "b")))
    x, y = router.classify_batch(["x", "y"])
    assert x.tier == "t2" and x.action == "block"  # t1 was sure about a only
    assert y.tier == "t1" and y.action == "block"  # blocking on one policy is enough


def test_per_policy_band_overrides_default(make_config):
    t1 = {"x": {"a": 0.3, "b": 0.3}}
    tier = _table("t1", t1, band=(0.1, 0.9))
    tier["bands"]["b"] = [0.4, 0.95]
    router = Router.load(make_config([tier, _last("t2", {"x": {"a": 0.9, "b": 0.9}})], policies=("a", "b")))
    assert router.classify("x").tier == "t2"  # a=0.3 is inside a's default band
    tier["bands"]["a"] = [0.35, 0.9]
    router = Router.load(make_config([tier, _last("t2", {})], policies=("a", "b"), name="second"))
    assert router.classify("x").tier == "t1"


def test_non_final_error_goes_next_and_is_recorded(make_config):
    router = Router.load(make_config([_table("t1", {}, fail_on=["e"]), _last("t2", {"e": {"a": 0.1}})]))
    d = router.classify("e")
    assert d.tier == "t2" and d.action == "allow"
    assert d.path[0].outcome == "error" and d.path[0].error == "backend down"


@pytest.mark.parametrize("on_error,expected", [("allow", "allow"), ("block", "block")])
def test_last_tier_error_applies_configured_action(make_config, on_error, expected):
    router = Router.load(make_config([_table("t1", {"e": {"a": 0.5}}), _last("t2", {}, fail_on=["e"], on_error=on_error)]))
    d = router.classify("e")
    assert d.action == expected and d.reason == f"fallback:{on_error}" and d.tier == "t2"
    assert "t2_error" in d.warnings


def test_fast_verdict_fallback_uses_previous_tier(make_config):
    tiers = [_table("fast", {"e": {"a": 0.7}, "f": {"a": 0.3}}), _last("sg", {}, fail_on=["e", "f"], on_error="fast-verdict")]
    router = Router.load(make_config(tiers))
    e, f = router.classify_batch(["e", "f"])
    assert (e.action, e.tier, e.reason) == ("block", "fast", "fallback:fast-verdict")
    assert (f.action, f.tier) == ("allow", "fast")


def test_crashing_tier_does_not_lose_the_batch(make_config):
    router = Router.load(make_config([_table("t1", {}), _last("t2", {}, on_error="block")]))
    decisions = router.classify_batch(["fine", "__crash__"])
    assert len(decisions) == 2
    # both tiers see the poisoned batch and crash: every text still gets its recorded fallback
    assert all(d.path[0].outcome == "error" and d.path[1].outcome == "error" for d in decisions)
    assert all(d.action == "block" and d.reason == "fallback:block" for d in decisions)
    assert "RuntimeError: tier crashed" in decisions[0].path[0].error


def test_batch_only_sends_undecided_texts_onward(make_config):
    fakes.CALLS.clear()
    t1 = {"a1": {"a": 0.0}, "b1": {"a": 1.0}, "m1": {"a": 0.5}, "m2": {"a": 0.6}}
    router = Router.load(make_config([_table("t1", t1), _last("t2", {})]))
    router.classify_batch(["a1", "b1", "m1", "m2"])
    assert fakes.CALLS["t2"] == ["m1", "m2"]


def test_decision_carries_hashes_latency_and_rules(make_config):
    router = Router.load(make_config([_last("only", {"x": {"a": 0.9}})]))
    d = router.classify("x")
    assert len(d.config_hash) == 12 and set(d.policy_hashes) == {"a"}
    assert d.latency_ms >= 0 and d.path[0].latency_ms >= 0
    assert d.rule_ids == ("X1.a",)
    as_dict = d.to_dict()
    assert as_dict["flagged"] is True and as_dict["path"][0]["tier"] == "only"


def test_config_hash_changes_with_bands(make_config):
    r1 = Router.load(make_config([_table("t1", {}, band=(0.1, 0.9)), _last("t2", {})], name="one"))
    r2 = Router.load(make_config([_table("t1", {}, band=(0.1, 0.8)), _last("t2", {})], name="one"))
    assert r1.config_hash != r2.config_hash


def test_aclassify_matches_classify(make_config):
    router = Router.load(make_config([_last("only", {"x": {"a": 0.9}, "y": {"a": 0.1}})]))

    async def go():
        return await asyncio.gather(*(router.aclassify(t) for t in ["x", "y", "x"]))

    out = asyncio.run(go())
    assert [d.action for d in out] == ["block", "allow", "block"]


def test_replay_tier_escalation(make_config, tmp_path):
    from safecascade.hashing import text_hash

    csv_path = tmp_path / "verdicts.csv"
    csv_path.write_text(f"text_hash,a,a_rule_ids\n{text_hash('uncertain text')},0.93,A1.a;A1.b\n")
    tiers = [
        _table("fast", {"uncertain text": {"a": 0.5}, "clear": {"a": 0.01}}),
        {"name": "replay", "type": "replay", "options": {"path": str(csv_path)}, "threshold": 0.5, "on_error": "block"},
    ]
    router = Router.load(make_config(tiers))
    d, clear, unknown = router.classify_batch(["uncertain text", "clear", "never recorded"])
    assert (d.action, d.tier) == ("block", "replay")
    assert d.policies["a"].rule_ids == ("A1.a", "A1.b")
    assert (clear.action, clear.tier) == ("allow", "fast")
    assert unknown.reason == "fallback:block" and "no recorded verdict" in unknown.path[-1].error


def test_replay_missing_file_fails_at_load(make_config, tmp_path):
    tiers = [{"name": "replay", "type": "replay", "options": {"path": "nope.csv"}}]
    with pytest.raises(ValueError, match="nope.csv"):
        Router.load(make_config(tiers))


class _DictCache:
    def __init__(self):
        self.data = {}

    def get(self, key):
        return self.data.get(key)

    def put(self, key, decision):
        self.data[key] = decision


class _Budget:
    def __init__(self, n):
        self.n = n
        self.released = 0

    def acquire(self, n):
        granted = min(n, self.n)
        self.n -= granted
        return granted

    def release(self, n):
        self.released += n


def test_cache_hits_skip_tiers_and_sinks_see_every_decision(make_config):
    fakes.CALLS.clear()
    seen = []
    router = Router.load(make_config([_last("only", {"x": {"a": 0.9}})]))
    router.cache = _DictCache()
    router.sinks.append(lambda d, text: seen.append((d.action, d.cache_hit, text)))
    first = router.classify("x")
    second = router.classify("x")
    assert fakes.CALLS["only"] == ["x"]  # the second call never reached the tier
    assert not first.cache_hit and second.cache_hit and second.action == first.action
    assert seen == [("block", False, "x"), ("block", True, "x")]
    assert len(router.cache_key(first.text_hash).split("|")) == 3


def test_escalation_budget_keeps_fast_verdict(make_config):
    t1 = {"m1": {"a": 0.6}, "m2": {"a": 0.4}, "m3": {"a": 0.55}}
    router = Router.load(make_config([_table("fast", t1), _last("sg", {"m1": {"a": 0.1}}, on_budget_exhausted="fast-verdict")]))
    router.budget = _Budget(1)  # a budget with only acquire(n) / release(n) still works
    d1, d2, d3 = router.classify_batch(["m1", "m2", "m3"])
    assert (d1.tier, d1.action, d1.reason) == ("sg", "allow", "last_tier")
    assert (d2.tier, d2.action, d2.reason) == ("fast", "allow", "budget_exhausted")
    assert (d3.tier, d3.action, d3.reason) == ("fast", "block", "budget_exhausted")
    assert d2.path[-1].outcome == "skipped" and router.budget.released == 1


def test_failing_sink_is_never_silent_and_does_not_lose_the_decision(make_config):
    from safecascade.router.cascade import DecisionSinkError

    router = Router.load(make_config([_last("only", {"x": {"a": 0.9}})]))
    seen = []

    def bad_sink(d, text):
        raise OSError("disk full")

    router.sinks.extend([bad_sink, lambda d, text: seen.append(d.action)])
    with pytest.raises(DecisionSinkError, match="disk full") as info:  # no hook: classify raises
        router.classify("x")
    assert [d.action for d in info.value.decisions] == ["block"] and seen == ["block"]  # other sinks still ran
    assert isinstance(info.value.errors[0][1], OSError) and info.value.errors[0][0] is bad_sink
    hooked = []
    router.on_sink_error = hooked.append  # an explicit hook: the decision is returned
    assert router.classify("x").action == "block"
    assert len(hooked) == 1 and isinstance(hooked[0], DecisionSinkError)


def test_decision_sums_tier_costs():
    from safecascade.router.decision import Decision, TierTrace

    path = (TierTrace(tier="fast", outcome="escalate", cost={"windows": 2}),
            TierTrace(tier="sg", outcome="block", cost={"prompt_tokens": 700, "completion_tokens": 40, "windows": 1}))
    d = Decision(action="block", tier="sg", reason="last_tier", score=0.9, policies={}, path=path, latency_ms=1.0,
                 text_hash="h", config_name="c", config_hash="x", policy_hashes={})
    assert d.cost == {"windows": 3.0, "prompt_tokens": 700.0, "completion_tokens": 40.0}
    assert d.to_dict()["cost"]["prompt_tokens"] == 700.0


RULES_A = """
min_support: 10
default_precision: 0.5
rules:
  - id: A-STRONG-1
    family: a
    policy: a
    description: measured, decides alone
    pattern: '\\bstrongword\\b'
    precision: 1.0
    support: 50
  - id: A-WEAK-1
    family: a
    policy: a
    description: too weakly measured to decide alone
    pattern: '\\bweakword\\b'
    precision: null
    support: 0
"""


def test_a_named_rule_that_does_not_decide_is_never_allowed_by_a_cheap_band(make_config, tmp_path):
    """A heuristic rule too weakly measured to decide alone still names the text: a later tier's
    allow band may not allow it, so the tiers after see it (here the last one, at its threshold)."""
    (tmp_path / "rules.yaml").write_text(RULES_A)
    cheap = {"plain": {"a": 0.05}, "has weakword": {"a": 0.05}, "has strongword": {"a": 0.05}}
    last = {"plain": {"a": 0.7}, "has weakword": {"a": 0.7}, "has strongword": {"a": 0.7}}
    heur = {"name": "heur", "type": "heuristic", "options": {"rules": "rules.yaml"}, "bands": {"default": [None, 0.99]}}
    router = Router.load(make_config([heur, _table("cheap", cheap), _last("last", last)]))
    plain, weak, strong = router.classify_batch(["plain", "has weakword", "has strongword"])
    assert (plain.action, plain.tier) == ("allow", "cheap")
    assert (weak.action, weak.tier) == ("block", "last")
    assert [t.outcome for t in weak.path] == ["escalate", "escalate", "block"]
    assert weak.path[0].rule_ids["a"] == ("A-WEAK-1",)
    assert (strong.action, strong.tier) == ("block", "heur")


def test_the_last_tier_decides_a_named_policy_at_its_named_threshold(make_config, tmp_path):
    """A policy a heuristic rule named (without deciding) is decided by the last tier at its
    ``named_threshold``; the same score on an unnamed text, or on a policy no rule named, is
    decided at the ordinary threshold. The verdict's rule ids stay the deciding tier's own."""
    (tmp_path / "rules.yaml").write_text(RULES_A)
    last = {"plain": {"a": 0.6, "b": 0.6}, "has weakword": {"a": 0.6, "b": 0.1}, "has weakword too": {"a": 0.1, "b": 0.6}}
    heur = {"name": "heur", "type": "heuristic", "options": {"rules": "rules.yaml"}, "bands": {"default": [None, 0.99]}}
    router = Router.load(make_config([heur, _last("last", last, threshold=0.9, named_threshold=0.5)], policies=("a", "b")))
    plain, named, other = router.classify_batch(["plain", "has weakword", "has weakword too"])
    assert plain.action == "allow"
    assert (named.action, named.tier, named.reason) == ("block", "last", "last_tier")
    assert named.policies["a"].flagged and not named.policies["b"].flagged
    assert "A-WEAK-1" not in named.policies["a"].rule_ids and named.path[0].rule_ids["a"] == ("A-WEAK-1",)
    assert other.action == "allow"  # A-WEAK-1 names policy a, not b


def test_combine_decides_a_policy_on_its_own_and_an_earlier_tiers_logits(make_config):
    """With ``combine: {a: {t1: 1.0}}`` the last tier decides policy ``a`` on
    sigmoid(logit(own) + logit(t1's score)): two tiers that lean the same way block where neither
    would alone, and one that disagrees pulls the other down. Policy ``b`` is decided on the last
    tier's own score. The trace and the verdict carry the combined score, ``info["combined"]``
    the tier's own; a text the earlier tier failed on is decided on the last tier's own score."""
    t1 = {"agree": {"a": 0.8, "b": 0.5}, "disagree": {"a": 0.2, "b": 0.5}, "b only": {"a": 0.5, "b": 0.5}}
    t2 = {"agree": {"a": 0.8, "b": 0.1}, "disagree": {"a": 0.95, "b": 0.1}, "b only": {"a": 0.1, "b": 0.8},
          "t1 down": {"a": 0.8, "b": 0.1}}
    cfg = [_table("t1", t1, band=(None, None), fail_on=["t1 down"]),
           _last("t2", t2, threshold=0.9, combine={"a": {"t1": 1.0}})]
    agree, disagree, b_only, down = Router.load(make_config(cfg, policies=("a", "b"))).classify_batch(["agree", "disagree", "b only", "t1 down"])
    want = 1.0 / (1.0 + (0.2 / 0.8) ** 2)  # logit 0.8 twice: odds 4 * 4 = 16
    assert agree.action == "block" and agree.policies["a"].score == pytest.approx(want) and agree.policies["a"].flagged
    assert agree.path[-1].scores["a"] == pytest.approx(want)
    assert agree.path[-1].info["combined"]["a"]["own"] == pytest.approx(0.8)
    assert agree.path[-1].info["combined"]["a"]["earlier"] == {"t1": pytest.approx(0.8)}
    assert disagree.action == "allow" and disagree.policies["a"].score < 0.9  # 0.95 alone would block
    assert b_only.action == "allow" and b_only.policies["b"].score == pytest.approx(0.8)  # b is not combined (t1 said 0.5)
    assert b_only.policies["a"].score == pytest.approx(0.1)  # t1's 0.5 is even odds: a keeps its own score
    assert down.action == "allow" and down.policies["a"].score == pytest.approx(0.8) and "combined" not in down.path[-1].info


def test_combine_judges_a_long_text_on_the_piece_the_later_tier_found(make_config):
    """A long text the earlier tier read only in windows (``parts_skipped``) is combined with the
    earlier tier's score of the piece the later tier's score rests on (``TierResult.evidence``),
    scored in one batch, not with the ``fill``; the trace says so (``on: evidence``). Without a
    piece, or where the earlier tier fails on it, the fill counts; a text read whole asks nothing."""
    fakes.CALLS.clear()
    t1 = {"long": {"a": 0.3}, "long calm": {"a": 0.3}, "long bare": {"a": 0.3}, "long broken": {"a": 0.3},
          "the request": {"a": 0.95}, "a recipe": {"a": 0.05}, "short": {"a": 0.95}}
    t2 = {"long": {"a": 0.8}, "long calm": {"a": 0.8}, "long bare": {"a": 0.8}, "long broken": {"a": 0.8}, "short": {"a": 0.8}}
    windowed = ["long", "long calm", "long bare", "long broken", "piece t1 fails on"]
    evidence = {"long": {"a": "the request"}, "long calm": {"a": "a recipe"}, "long broken": {"a": "piece t1 fails on"},
                "short": {"a": "the request"}}
    cfg = [_table("t1", t1, band=(None, None), fail_on=["piece t1 fails on"]),
           _last("t2", t2, threshold=0.9, combine={"a": {"t1": {"weight": 1.0, "fill": 0.7}}})]
    cfg[0]["options"]["windowed"], cfg[1]["options"]["evidence"] = windowed, evidence
    router = Router.load(make_config(cfg, policies=("a",)))
    long, calm, bare, broken, short = router.classify_batch(["long", "long calm", "long bare", "long broken", "short"])
    both = 1.0 / (1.0 + (0.2 / 0.8) * (0.05 / 0.95))
    assert long.action == "block" and long.policies["a"].score == pytest.approx(both)
    assert long.path[-1].info["combined"]["a"]["earlier"] == {"t1": pytest.approx(0.95)}
    assert long.path[-1].info["combined"]["a"]["on"] == {"t1": "evidence"}
    assert calm.action == "allow" and calm.path[-1].info["combined"]["a"]["earlier"] == {"t1": pytest.approx(0.05)}
    for d in (bare, broken):  # no piece, or the earlier tier failed on it: the fill
        assert d.path[-1].info["combined"]["a"]["earlier"] == {"t1": pytest.approx(0.7)} and "on" not in d.path[-1].info["combined"]["a"]
    assert short.path[-1].info["combined"]["a"]["earlier"] == {"t1": pytest.approx(0.95)}  # read whole: its own score
    asked = fakes.CALLS["t1"][5:]  # after the five texts themselves, one batch of pieces
    assert sorted(asked) == ["a recipe", "piece t1 fails on", "the request"]
    assert "the request" not in json.dumps(long.to_dict(), default=json_default)  # the piece is never on the Decision


def test_a_tier_passes_on_a_text_it_does_not_read(make_config):
    """A tier that does not read a text by design (no scores, ``info["not_read"]``; the
    multilingual tier's documents) passes it on without an error, and a later tier that combines it
    counts its ``fill``; as the last tier it cannot pass anything on: its ``on_error`` applies."""
    t1 = {"short": {"a": 0.95}}
    t2 = {"doc": {"a": 0.8}, "short": {"a": 0.8}}
    cfg = [_table("t1", t1, band=(None, None)), _last("t2", t2, threshold=0.9, combine={"a": {"t1": {"weight": 1.0, "fill": 0.7}}})]
    cfg[0]["options"]["unread"] = ["doc"]
    cfg[0]["on_error"] = "block"  # would show if the unread text were taken for a failure
    router = Router.load(make_config(cfg, policies=("a",)))
    doc, short = router.classify_batch(["doc", "short"])
    first = doc.path[0]
    assert (first.tier, first.outcome, first.error, first.scores) == ("t1", "escalate", None, {})
    assert first.info["not_read"] == "document" and doc.tier == "t2"
    assert doc.path[-1].info["combined"]["a"]["earlier"] == {"t1": pytest.approx(0.7)}  # the fill
    assert short.path[-1].info["combined"]["a"]["earlier"] == {"t1": pytest.approx(0.95)}
    last_only = [_last("t1", t1, threshold=0.9)]
    last_only[0]["options"]["unread"], last_only[0]["on_error"] = ["doc"], "block"
    alone = Router.load(make_config(last_only, policies=("a",))).classify("doc")
    assert alone.path[-1].outcome == "error" and alone.action == "block" and alone.reason == "fallback:block"


def test_a_verdict_lists_the_sub_categories_the_tiers_found(make_config, tmp_path):
    """A policy's verdict lists the policy's own rule ids that a heuristic rule detected on the way
    (here from the rule's description, "(A1.b)"), even when a later tier decides; an id the policy
    does not define (the table tier's "X1.a") or a SAFE one is never listed."""
    (tmp_path / "rules.yaml").write_text(RULES_A.replace("too weakly measured to decide alone", "too weak to decide alone (A1.b, A0.a)"))
    last = {"plain": {"a": 0.95}, "has weakword": {"a": 0.6}}
    heur = {"name": "heur", "type": "heuristic", "options": {"rules": "rules.yaml"}, "bands": {"default": [None, 0.99]}}
    router = Router.load(make_config([heur, _last("last", last, threshold=0.9, named_threshold=0.5)]))
    plain, named = router.classify_batch(["plain", "has weakword"])
    assert plain.action == "block" and plain.policies["a"].sub_categories == () and plain.policies["a"].rule_ids == ("X1.a",)
    assert (named.action, named.tier) == ("block", "last") and named.policies["a"].sub_categories == ("A1.b",)
    assert json.loads(json.dumps(named.to_dict(), default=json_default))["policies"]["a"]["sub_categories"] == ["A1.b"]


def test_odd_cites_from_a_custom_tier_are_ignored_not_fatal(make_config):
    """A tier's ``info["cites"]`` that is not a mapping of policy -> list of ids is ignored, and so
    is any entry that is not an id the policy defines; nothing raises."""
    from types import SimpleNamespace

    from safecascade.router.decision import TierTrace

    router = Router.load(make_config([_last("only", {"x": {"a": 0.9}})]))
    cases = [(["A1.a"], ()), ({"a": "A1.a"}, ()), (None, ()), ({"a": [["A1.a"], None, 3, "A1.b", "A0.a", "Z9.z"]}, ("A1.b",))]
    for odd, want in cases:
        pending = SimpleNamespace(path=[TierTrace(tier="only", outcome="block", info={"cites": odd})])
        assert router._sub_categories(pending, "a") == want, odd
