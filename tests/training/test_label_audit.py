"""The label audit's bookkeeping: the committed verdicts cover exactly the seeded random sample of
test positives, and recall per verdict / Wilson intervals are computed right."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.exp_label_audit import AUDIT, N, VERDICTS, read_audit, recall_by_verdict, sample_ids, wilson


def test_audit_file_is_the_seeded_sample_of_test_positives() -> None:
    from safecascade.training.datasets import load_benchmark

    positives = [e for e in load_benchmark("jailbreak", "test") if e.label == 1]
    verdicts = read_audit()
    assert list(verdicts) == sample_ids(positives) and len(verdicts) == N
    assert set(verdicts.values()) <= set(VERDICTS)
    # a different seed is a different sample: the file is not just any 120 positives
    assert sample_ids(positives, seed=1) != list(verdicts)


def test_read_audit_rejects_unknown_verdicts(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_text("id,verdict,reason\nx-1,maybe,unsure\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown verdicts"):
        read_audit(p)
    assert AUDIT.is_file()


def test_wilson_and_recall_by_verdict() -> None:
    lo, hi = wilson(71, 73)
    assert 0.90 < lo < 0.91 and 0.99 < hi < 0.995  # the textbook interval for 71/73
    assert wilson(0, 0) == (0.0, 1.0) and wilson(5, 5)[1] == 1.0
    verdicts = {"a": "real", "b": "real", "c": "not", "d": "ambiguous"}
    rows = {r["verdict"]: r for r in recall_by_verdict(verdicts, {"a": True, "b": False, "c": True, "d": False})}
    assert rows["real"]["recall"] == 0.5 and rows["not"]["recall"] == 1.0 and rows["ambiguous"]["flagged"] == 0
    assert rows["real"]["share of positives"] == 0.5 and rows["real"]["texts"] == 2
