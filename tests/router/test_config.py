"""Config validation: every bad key is named in the error."""

from __future__ import annotations

import pytest
import yaml

from safecascade.router.cascade import Router
from safecascade.router.combine import Term
from safecascade.router.config import ConfigError, load_config, parse_config

LAST = {"name": "t", "type": "table", "options": {"table": {}}}


def _cfg(**over):
    cfg = {"name": "c", "policies": {"a": "a.md"}, "tiers": [dict(LAST)]}
    cfg.update(over)
    return cfg


@pytest.mark.parametrize(
    "cfg,needle",
    [
        (_cfg(tiers=[{"name": "x", "type": "nonesuch"}]), "tiers[0].type: unknown tier type 'nonesuch'"),
        (_cfg(tiers=[]), "tiers: expected a non-empty list"),
        (_cfg(policies={}), "policies: expected a non-empty mapping"),
        (_cfg(bogus=1), "config.bogus: unknown key"),
        (_cfg(version=2), "version: unsupported"),
        (_cfg(input={"max_chars": -5}), "input.max_chars"),
        (_cfg(input={"on_empty": "maybe"}), "input.on_empty"),
        (_cfg(tiers=[{"name": "x", "type": "table", "bands": {"zzz": [0.1, 0.9]}}, dict(LAST)]), "tiers[0].bands.zzz: unknown policy 'zzz'"),
        (_cfg(tiers=[{"name": "x", "type": "table", "bands": {"a": [0.9, 0.1]}}, dict(LAST)]), "tiers[0].bands.a: allow_below"),
        (_cfg(tiers=[{"name": "x", "type": "table", "bands": {"a": [0.1, 1.5]}}, dict(LAST)]), "tiers[0].bands.a[1]: must be in [0, 1]"),
        (_cfg(tiers=[{"name": "x", "type": "table", "bands": {"a": "wide"}}, dict(LAST)]), "tiers[0].bands.a: expected [allow_below, block_above]"),
        (_cfg(tiers=[{"name": "x", "type": "table"}, dict(LAST)]), "tiers[0].bands: a non-final tier needs bands"),
        (_cfg(tiers=[{"name": "t", "type": "table", "bands": {"a": [0.1, 0.9]}}, dict(LAST)]), "tiers[1].name"),
        (_cfg(tiers=[dict(LAST, on_error="next")]), "tiers[0].on_error"),
        (_cfg(tiers=[dict(LAST, threshold="high")]), "tiers[0].threshold"),
        (_cfg(tiers=[dict(LAST, colour="red")]), "tiers[0].colour: unknown key"),
    ],
)
def test_bad_configs_name_the_key(cfg, needle):
    import tests.router.fakes  # noqa: F401

    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert needle in str(err.value)


def test_unknown_policy_file_fails_at_load(tmp_path):
    import tests.router.fakes  # noqa: F401

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_cfg(policies={"ghost": "ghost.md"})))
    with pytest.raises(ConfigError, match="policies.ghost: policy file not found"):
        Router.load(path)


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read router config"):
        load_config(tmp_path / "missing.yaml")


def test_roundtrip_yaml_keeps_hash(make_config):
    import tests.router.fakes  # noqa: F401

    path = make_config([{"name": "t1", "type": "table", "bands": {"default": [None, 0.9]}}, dict(LAST)])
    cfg = load_config(path)
    again = parse_config(yaml.safe_load(cfg.to_yaml()), base_dir=cfg.base_dir)
    assert again.sha == cfg.sha and again.tiers[0].bands["default"].allow_below is None


def test_embedded_default_config_parses():
    cfg = load_config(None)
    assert cfg.tiers and cfg.policies
    assert cfg.resolve_policies()  # shipped policy files exist and parse


@pytest.mark.parametrize("version", [True, 1.0, "1"])
def test_version_must_be_the_integer_1(version):
    data = {"version": version, "name": "x", "policies": {"jailbreak": "builtin:jailbreak"},
            "tiers": [{"name": "h", "type": "heuristic"}]}
    with pytest.raises(ConfigError, match="version"):
        parse_config(data, base_dir=".")


@pytest.mark.parametrize("value", ["no", "yes", 0, None])
def test_heuristic_leetspeak_must_be_a_boolean(value):
    data = {"version": 1, "name": "x", "policies": {"jailbreak": "builtin:jailbreak"},
            "tiers": [{"name": "h", "type": "heuristic", "options": {"leetspeak": value}}]}
    with pytest.raises(ValueError, match="leetspeak must be true or false"):
        Router.load(parse_config(data, base_dir="."))


def test_per_policy_thresholds_decide_each_policy(make_config):
    """The last tier's threshold may differ per policy: the same score blocks for one policy and
    not for another, and the Decision flags only the policy over its own threshold."""
    table = {"t1": {"a": 0.6, "b": 0.6}, "t2": {"a": 0.3, "b": 0.85}}
    path = make_config([{"name": "last", "type": "table", "options": {"table": table},
                         "threshold": {"default": 0.5, "b": 0.8}}], policies=("a", "b"))
    router = Router.load(path)
    tc = router.config.tiers[0]
    assert (tc.threshold_for("a"), tc.threshold_for("b")) == (0.5, 0.8)
    d1, d2 = router.classify_batch(["t1", "t2"])
    assert d1.action == "block" and d1.policies["a"].flagged and not d1.policies["b"].flagged
    assert d2.action == "block" and d2.policies["b"].flagged and not d2.policies["a"].flagged


@pytest.mark.parametrize("threshold, needle", [({"nope": 0.5}, "unknown policy 'nope'"), ({"a": 1.5}, r"threshold\.a: must be in \[0, 1\]"),
                                               ({"a": "high"}, "threshold.a")])
def test_bad_per_policy_threshold_names_the_key(make_config, threshold, needle):
    path = make_config([{"name": "last", "type": "table", "threshold": threshold}], policies=("a",))
    with pytest.raises(ConfigError, match=needle):
        load_config(path)


def test_a_policy_name_given_twice_fails_at_load(tmp_path):
    """Two policies under one name (YAML would silently keep the last) are refused, naming the key."""
    (tmp_path / "a.md").write_text("# A\n## VIOLATES (1)\n- **A1.a** Bad.\n")
    path = tmp_path / "dup.yaml"
    path.write_text("name: t\npolicies:\n  jailbreak: a.md\n  jailbreak: builtin:jailbreak\n"
                    "tiers:\n  - {name: last, type: table}\n")
    with pytest.raises(ConfigError, match="duplicate key 'jailbreak'"):
        load_config(path)


def test_a_policy_without_rule_ids_fails_at_load(tmp_path):
    (tmp_path / "none.md").write_text("# Policy\nNo list of rules here.\n")
    path = tmp_path / "c.yaml"
    path.write_text("name: t\npolicies:\n  mine: none.md\ntiers:\n  - {name: last, type: table}\n")
    with pytest.raises((ConfigError, ValueError), match="defines no rule ids"):
        Router.load(load_config(path))


def test_named_threshold_is_per_policy_never_above_the_threshold_and_last_tier_only(make_config):
    """``named_threshold`` (a number or per policy) lowers the last tier's threshold for a text a
    heuristic rule named; it is capped at the policy's own threshold, round-trips through the
    config's dict form, and an earlier tier may not set it."""
    path = make_config([{"name": "last", "type": "table", "threshold": {"default": 0.9, "b": 0.3},
                         "named_threshold": {"default": 0.5}}], policies=("a", "b"))
    tc = Router.load(path).config.tiers[0]
    assert (tc.named_threshold_for("a"), tc.named_threshold_for("b")) == (0.5, 0.3)
    assert load_config(path).to_dict()["tiers"][0]["named_thresholds"] == {"default": 0.5}
    plain = make_config([{"name": "last", "type": "table", "threshold": 0.9}], policies=("a",))
    assert "named_thresholds" not in load_config(plain).to_dict()["tiers"][0]  # hashes as before
    one = make_config([{"name": "last", "type": "table", "named_threshold": 0.4}], policies=("a",))
    assert load_config(one).tiers[0].named_threshold_for("a") == 0.4
    early = make_config([{"name": "first", "type": "table", "bands": {"default": [0.1, 0.9]}, "named_threshold": 0.5},
                         {"name": "last", "type": "table"}], policies=("a",))
    with pytest.raises(ConfigError, match=r"tiers\[0\]\.named_threshold: only the last tier"):
        load_config(early)
    bad = make_config([{"name": "last", "type": "table", "named_threshold": {"nope": 0.5}}], policies=("a",))
    with pytest.raises(ConfigError, match=r"named_threshold\.nope: unknown policy"):
        load_config(bad)


def test_combine_names_earlier_tiers_known_policies_and_finite_weights(make_config):
    """``combine`` (policy -> {earlier tier: weight}) round-trips through the config's dict form
    (and a config without it hashes as before); a later or unknown tier, an unknown policy, or a
    negative, infinite or non-numeric weight is a clear error naming the key."""
    first = {"name": "first", "type": "table", "bands": {"default": [0.1, 0.9]}}
    ok = make_config([first, {"name": "last", "type": "table", "combine": {"a": {"first": 1.5}}}], policies=("a", "b"))
    cfg = load_config(ok)
    assert cfg.tiers[1].combine == {"a": {"first": Term(weight=1.5)}} and cfg.tiers[0].combine == {}
    assert cfg.to_dict()["tiers"][1]["combine"] == {"a": {"first": {"weight": 1.5, "fill": None, "fill_none": None}}}
    assert "combine" not in cfg.to_dict()["tiers"][0]
    filled = make_config([first, {"name": "last", "type": "table", "combine": {"a": {"first": {"weight": 1, "fill": 0.9}}}}],
                         policies=("a", "b"), name="filled")
    assert load_config(filled).tiers[1].combine == {"a": {"first": Term(weight=1.0, fill=0.9)}}
    both = make_config([first, {"name": "last", "type": "table", "combine": {"a": {"first": {"weight": 1, "fill": 0.9, "fill_none": 0.7}}}}],
                       policies=("a", "b"), name="both")
    assert load_config(both).tiers[1].combine == {"a": {"first": Term(weight=1.0, fill=0.9, fill_none=0.7)}}
    cases = [({"a": {"last": 1.0}}, r"tiers\[1\]\.combine\.a\.last: not an earlier tier"),
             ({"a": {"ghost": 1.0}}, r"combine\.a\.ghost: not an earlier tier"),
             ({"nope": {"first": 1.0}}, r"combine\.nope: unknown policy"),
             ({"a": {"first": -1.0}}, r"combine\.a\.first: expected a finite weight >= 0"),
             ({"a": {"first": float("inf")}}, r"combine\.a\.first: expected a finite weight >= 0"),
             ({"a": {"first": "x"}}, r"combine\.a\.first: expected a number"),
             ({"a": {}}, r"combine\.a: expected a mapping earlier tier -> weight"),
             ({"a": {"first": {"weight": 1.0, "fill": 1.5}}}, r"combine\.a\.first\.fill: must be in \[0, 1\]"),
             ({"a": {"first": {"weight": 1.0, "fill_none": -0.1}}}, r"combine\.a\.first\.fill_none: must be in \[0, 1\]"),
             ({"a": {"first": {"fill": 0.5}}}, r"combine\.a\.first: expected \{weight: w, fill: score\}"),
             ({"a": {"first": {"weight": 1.0, "fil": 0.5}}}, r"combine\.a\.first"),
             ([1], r"combine: expected a mapping")]
    for i, (combine, needle) in enumerate(cases):
        bad = make_config([first, {"name": "last", "type": "table", "combine": combine}], policies=("a", "b"), name=f"bad{i}")
        with pytest.raises(ConfigError, match=needle):
            load_config(bad)
