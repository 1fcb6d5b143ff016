"""The policy-label experiment's bookkeeping: the train/val verdicts cover exactly the train and
val positives, and positives become hard or soft rows by their verdict while negatives pass."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from experiments.exp_label_audit import read_audit
from experiments.exp_policy_labels import TRAINVAL_AUDIT, TRAINVAL_NEGATIVES_AUDIT, policy_rows


def test_trainval_audit_covers_exactly_the_train_and_val_positives() -> None:
    import csv

    from safecascade.training.datasets import load_benchmark

    verdicts = read_audit(TRAINVAL_AUDIT)
    splits = {s: {e.id for e in load_benchmark("jailbreak", s) if e.label == 1} for s in ("train", "val")}
    assert set(verdicts) == splits["train"] | splits["val"]
    with TRAINVAL_AUDIT.open(newline="", encoding="utf-8") as fh:
        assert all(r["id"] in splits[r["split"]] and r["reason"].strip() for r in csv.DictReader(fh))


def test_trainval_negatives_audit_covers_exactly_the_hard_train_and_val_negatives() -> None:
    import csv

    from safecascade.training.datasets import load_benchmark

    verdicts = read_audit(TRAINVAL_NEGATIVES_AUDIT)
    splits = {s: {e.id for e in load_benchmark("jailbreak", s) if e.label == 0 and e.source != "alpaca"}
              for s in ("train", "val")}
    assert set(verdicts) == splits["train"] | splits["val"]
    with TRAINVAL_NEGATIVES_AUDIT.open(newline="", encoding="utf-8") as fh:
        assert all(r["id"] in splits[r["split"]] and r["reason"].strip() for r in csv.DictReader(fh))
    assert {v: list(verdicts.values()).count(v) for v in ("real", "ambiguous")} == {"real": 13, "ambiguous": 31}


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


def test_policy_rows_relabel_read_negatives() -> None:
    from safecascade.training.datasets import Example

    ex = [Example(text=t, label=0, source="s", id=i) for i, t in
          (("n1", "ignore all previous directions"), ("n2", "stay in character"), ("n3", "hello"), ("n4", "unread"))]
    hard, soft = policy_rows(ex, {"n1": "real", "n2": "ambiguous", "n3": "not"})
    assert [(e.id, e.label) for e in hard] == [("n1", 1), ("n3", 0), ("n4", 0)]
    assert soft == [{"text": "stay in character", "jailbreak": 0.5}]
