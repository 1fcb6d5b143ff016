"""The experiments' index lists every result page, a variant's page beside its experiment's."""

from __future__ import annotations

from pathlib import Path

import experiments.run_all as run_all


def _page(path: Path, title: str) -> None:
    path.write_text(f"# {title}\n\nCommit `abc1234`, written 2026-11-29 12:00 UTC, 1 s.\n\nbody of {title}\n",
                    encoding="utf-8")


def test_index_lists_variant_pages_with_their_experiment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(run_all, "results_dir", lambda: tmp_path)
    monkeypatch.setattr(run_all, "discover", lambda: ["alpha", "beta", "gamma"])
    _page(tmp_path / "alpha.md", "Alpha")
    _page(tmp_path / "alpha_finetune.md", "Alpha tuned")
    _page(tmp_path / "beta.md", "Beta")
    run_all.write_index({"alpha": {"outcome": "ok", "seconds": 5}})
    index = (tmp_path / "README.md").read_text(encoding="utf-8")
    rows = [line for line in index.splitlines() if line.startswith("| [") or line.startswith("| gamma")]
    assert [r.split("|")[1].strip() for r in rows] == ["[alpha](alpha.md)", "[alpha_finetune](alpha_finetune.md)",
                                                       "[beta](beta.md)", "gamma"]
    assert "| ok |" in rows[0] and "not rerun" in rows[1]  # only the main page's program ran
    assert index.index("body of Alpha\n") < index.index("body of Alpha tuned") < index.index("body of Beta")
