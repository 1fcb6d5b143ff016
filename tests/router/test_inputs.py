"""Bad input never crashes: a clear error or a recorded decision per the documented rules."""

from __future__ import annotations

import pytest

from safecascade.router.cascade import Router


@pytest.fixture
def router(make_config):
    tiers = [{"name": "only", "type": "table", "options": {"table": {}}, "threshold": 0.9}]
    return Router.load(make_config(tiers, input_cfg={"max_chars": 1000}))


@pytest.mark.parametrize("bad", [None, 12, 3.5, ["list"], {"a": 1}, object()])
def test_non_text_is_a_type_error(router, bad):
    with pytest.raises(TypeError, match="text must be str or bytes"):
        router.classify(bad)


@pytest.mark.parametrize("empty", ["", "   ", "\n\t ", "\x00", b""])
def test_empty_is_allowed_with_reason(router, empty):
    d = router.classify(empty)
    assert (d.action, d.tier, d.reason) == ("allow", "input", "empty_input")


def test_nul_bytes_removed_with_warning(router):
    d = router.classify("hello\x00world")
    assert d.tier == "only" and "nul_removed" in d.warnings


def test_lone_surrogates_replaced(router):
    d = router.classify("bad \ud800 surrogate")
    assert d.tier == "only" and "invalid_surrogates" in d.warnings


def test_invalid_utf8_bytes(router):
    d = router.classify(b"caf\xe9 \xff\xfe")
    assert d.tier == "only" and "invalid_utf8" in d.warnings


def test_oversize_is_blocked_by_default_rule(router):
    d = router.classify("x" * 1_000_001)
    assert (d.action, d.tier, d.reason) == ("block", "input", "input_too_large")


def test_oversize_truncate_mode(make_config):
    tiers = [{"name": "only", "type": "table", "options": {"table": {}}, "threshold": 0.9}]
    router = Router.load(make_config(tiers, input_cfg={"max_chars": 10, "on_oversize": "truncate"}, name="trunc"))
    d = router.classify("y" * 50)
    assert d.tier == "only" and "truncated" in d.warnings


def test_batch_type_errors(router):
    with pytest.raises(TypeError, match="single text"):
        router.classify_batch("just one string")
    with pytest.raises(TypeError):
        router.classify_batch(["ok", 5])


def test_mixed_batch_keeps_order(router):
    out = router.classify_batch(["", "text", "z" * 2000])
    assert [d.reason for d in out] == ["empty_input", "last_tier", "input_too_large"]
