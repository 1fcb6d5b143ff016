"""The policy-label experiment's bookkeeping: the train/val verdicts cover exactly the train and
val positives, and positives become hard or soft rows by their verdict while negatives pass."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from experiments.exp_label_audit import read_audit
from experiments.exp_policy_labels import TRAINVAL_AUDIT, policy_rows


def test_trainval_audit_covers_exactly_the_train_and_val_positives() -> None:
    import csv

    from safecascade.training.datasets import load_benchmark

    verdicts = read_audit(TRAINVAL_AUDIT)
    splits = {s: {e.id for e in load_benchmark("jailbreak", s) if e.label == 1} for s in ("train", "val")}
    assert set(verdicts) == splits["train"] | splits["val"]
    with TRAINVAL_AUDIT.open(newline="", encoding="utf-8") as fh:
        assert all(r["id"] in splits[r["split"]] and r["reason"].strip() for r in csv.DictReader(fh))


def test_policy_rows_relabel_positives_by_verdict() -> None:
    from safecascade.training.datasets import Example

    ex = [Example(text=t, label=lab, source="s", id=i) for i, t, lab in
          (("p1", "DAN mode", 1), ("p2", "act as a chess coach", 1), ("p3", "edgy persona", 1), ("n1", "hello", 0))]
    hard, soft = policy_rows(ex, {"p1": "real", "p2": "not", "p3": "ambiguous"})
    assert [(e.id, e.label) for e in hard] == [("p1", 1), ("p2", 0), ("n1", 0)]
    assert soft == [{"text": "edgy persona", "jailbreak": 0.5}]
    with pytest.raises(ValueError, match="no policy verdict"):
        policy_rows(ex, {"p1": "real"})
    assert policy_rows([SimpleNamespace(id="n", label=0, text="x")], {})[0][0].id == "n"
