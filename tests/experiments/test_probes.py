"""The probe experiment counts what the router blocks per probe file, with the safe twins."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.exp_probes import PROBES, language_rows, probe_rows, read_lines
from safecascade.router.cascade import Router
from tests.router.conftest import make_config  # noqa: F401  (the fixture; registers the "table" tier)


def test_every_probe_has_safe_twins_and_no_blank_or_duplicate_lines() -> None:
    harms = sorted(PROBES.glob("*_harm.txt"))
    assert len(harms) >= 5
    for harm in harms:
        safe = harm.with_name(harm.name.replace("_harm.txt", "_safe.txt"))
        lines, twins = read_lines(harm), read_lines(safe)
        assert lines and twins, harm.name
        assert len(set(lines)) == len(lines) and len(set(twins)) == len(twins), harm.name
        assert not set(lines) & set(twins), harm.name


def _table_router(make_config, table: dict[str, dict[str, float]]) -> Router:
    """A router whose one tier blocks the texts ``table`` scores at 0.5 or more."""
    return Router.load(make_config([{"name": "last", "type": "table", "options": {"table": table}, "threshold": 0.5}]))


def test_probe_rows_count_blocks_and_named_requests(make_config, tmp_path: Path) -> None:
    (tmp_path / "x_harm.txt").write_text("bad one\nbad two\n\nfine\n", encoding="utf-8")
    (tmp_path / "x_safe.txt").write_text("fine\nbad two\n", encoding="utf-8")
    router = _table_router(make_config, {"bad one": {"a": 0.9}, "bad two": {"a": 0.9}, "fine": {"a": 0.1}})
    (row,) = probe_rows(router, tmp_path)
    assert (row["probe"], row["harmful"], row["blocked"], row["safe"], row["safe_blocked"]) == ("x", 3, 2, 2, 1)
    assert row["named_by_a_rule"] == 0 and row["blocked_by"] == "last 2"


def test_a_safe_only_probe_is_counted_and_reported_per_language(make_config, tmp_path: Path) -> None:
    (tmp_path / "ml_safe.txt").write_text("bonjour\nbad two\nhallo\n", encoding="utf-8")
    (tmp_path / "ml_langs.txt").write_text("fr\nfr\nde\n", encoding="utf-8")
    router = _table_router(make_config, {"bad two": {"a": 0.9}, "bonjour": {"a": 0.1}, "hallo": {"a": 0.1}})
    (row,) = probe_rows(router, tmp_path)
    assert (row["probe"], row["harmful"], row["blocked"], row["safe"], row["safe_blocked"]) == ("ml", 0, 0, 3, 1)
    assert row["recall"] is None  # no harmful lines: no recall (the table shows "–", not "nan")
    rows = {r["language"]: r for r in language_rows(router, tmp_path)}
    assert (rows["fr"]["safe"], rows["fr"]["blocked"], rows["fr"]["by_policy"]) == (2, 1, "a 1")
    assert (rows["de"]["safe"], rows["de"]["blocked"], rows["de"]["by_policy"]) == (1, 0, "")


def test_a_probe_with_harmful_lines_is_reported_per_language_too(make_config, tmp_path: Path) -> None:
    (tmp_path / "j_harm.txt").write_text("bad one\nbad two\n", encoding="utf-8")
    (tmp_path / "j_safe.txt").write_text("bonjour\nhallo\n", encoding="utf-8")
    (tmp_path / "j_langs.txt").write_text("fr\nde\n", encoding="utf-8")
    router = _table_router(make_config, {"bad one": {"a": 0.9}, "bad two": {"a": 0.1}, "bonjour": {"a": 0.9}, "hallo": {"a": 0.1}})
    rows = {r["language"]: r for r in language_rows(router, tmp_path, name="j")}
    assert [rows["fr"][k] for k in ("harmful", "harmful_blocked", "safe", "blocked")] == [1, 1, 1, 1]
    assert [rows["de"][k] for k in ("harmful", "harmful_blocked", "safe", "blocked")] == [1, 0, 1, 0]
    (tmp_path / "j_langs.txt").write_text("fr\n", encoding="utf-8")
    with pytest.raises(ValueError, match="j_langs.txt has 1 lines"):
        language_rows(router, tmp_path, name="j")


def test_the_multilingual_probe_lines_up_with_its_languages() -> None:
    texts, langs = read_lines(PROBES / "ml_safe.txt"), read_lines(PROBES / "ml_langs.txt")
    assert len(texts) == len(langs) == len(set(texts)) and len(set(langs)) >= 10
