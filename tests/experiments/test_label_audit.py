"""The label audit's bookkeeping: the committed verdicts cover exactly the test positives (the
seeded random sample first), the second reading re-reads sampled texts only, and recall per
verdict, Wilson intervals, agreement and the policy-labelled views are computed right."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from experiments.exp_label_audit import (AUDIT, N, NEG_AUDIT, NEG_SECOND, NEG_SOURCES, SECOND, VERDICTS, VIEWS, agreement,
                                         check_coverage, check_negatives, read_audit, read_readings, recall_by_verdict,
                                         relabel, sample_ids, split_verdicts, view_metrics, wilson)


@pytest.fixture(scope="module")
def positives() -> list:
    from safecascade.training.datasets import load_benchmark

    return [e for e in load_benchmark("jailbreak", "test") if e.label == 1]


def test_audit_covers_every_test_positive_with_the_seeded_sample_first(positives: list) -> None:
    verdicts, readings = read_audit(), read_readings()
    check_coverage(verdicts, readings, positives)  # raises on any gap
    assert len(verdicts) == len(positives) and list(verdicts)[:N] == sample_ids(positives)
    assert set(verdicts.values()) <= set(VERDICTS) and sum(r == "sample" for r in readings.values()) == N
    # a different seed is a different sample: the first reading is not just any 120 positives
    assert sample_ids(positives, seed=1) != list(verdicts)[:N]


def test_second_reading_re_reads_sampled_texts_only() -> None:
    second, readings = read_audit(SECOND), read_readings()
    assert len(second) >= 20 and all(readings[i] == "sample" for i in second)


def test_check_coverage_rejects_gaps_and_a_reordered_sample(positives: list) -> None:
    verdicts, readings = read_audit(), read_readings()
    gap = dict(list(verdicts.items())[:-1])
    with pytest.raises(ValueError, match="1 missing"):
        check_coverage(gap, readings, positives)
    items = list(verdicts.items())
    swapped = dict([items[1], items[0]] + items[2:])
    with pytest.raises(ValueError, match="seeded sample"):
        check_coverage(swapped, readings, positives)


def test_read_audit_rejects_unknown_verdicts_and_repeats(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_text("id,verdict,reason\nx-1,maybe,unsure\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown verdicts"):
        read_audit(p)
    p.write_text("id,verdict,reason\nx-1,real,a\nx-1,not,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="read twice"):
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


def test_agreement_counts_and_kappa() -> None:
    first = {"a": "real", "b": "real", "c": "not", "d": "not", "e": "ambiguous", "z": "real"}
    second = {"a": "real", "b": "not", "c": "not", "d": "not", "e": "real"}
    ag = agreement(first, second)
    assert ag["n"] == 5 and ag["agree"] == pytest.approx(3 / 5) and ag["agree_binary"] == pytest.approx(4 / 5)
    # binary: first [1,1,0,0,1], second [1,0,0,0,1]: po 0.8, pe 0.6*0.4 + 0.4*0.6 = 0.48
    assert ag["kappa_binary"] == pytest.approx((0.8 - 0.48) / (1 - 0.48))
    assert ag["pairs"][("real", "not")] == 1
    with pytest.raises(ValueError, match="no ids"):
        agreement(first, {"q": "real"})


def test_policy_views_relabel_what_was_read_and_keep_the_rest() -> None:
    ex = [SimpleNamespace(id=i, label=lab) for i, lab in (("p1", 1), ("p2", 1), ("p3", 1), ("n1", 0), ("n2", 0))]
    verdicts = {"p1": "real", "p2": "not", "p3": "ambiguous", "n2": "real"}
    assert relabel(ex, verdicts, VIEWS["benchmark (as collected)"]) == [(0, 1), (1, 1), (2, 1), (3, 0), (4, 0)]
    # n1 was not read and stays benign; n2, a jailbreak the source labelled benign, becomes a violation
    assert relabel(ex, verdicts, VIEWS["policy, ambiguous left out"]) == [(0, 1), (1, 0), (3, 0), (4, 1)]
    assert relabel(ex, verdicts, VIEWS["policy, ambiguous = violation"]) == [(0, 1), (1, 0), (2, 1), (3, 0), (4, 1)]
    # a scorer that flags p1 and p2: a hit on p2 counts for the benchmark and against it by the policy
    scores = [0.9, 0.8, 0.1, 0.2, 0.0]
    bench = view_metrics(ex, verdicts, VIEWS["benchmark (as collected)"], scores)
    pol = view_metrics(ex, verdicts, VIEWS["policy, ambiguous left out"], scores)
    assert bench["precision"] == 1.0 and bench["recall"] == pytest.approx(2 / 3)
    assert pol["precision"] == 0.5 and pol["recall"] == 0.5 and pol["FPR"] == 0.5 and pol["texts"] == 4
    with pytest.raises(ValueError, match="no verdict"):
        relabel(ex, {"p1": "real"}, VIEWS["policy, ambiguous left out"])


def test_second_reading_of_negatives_re_reads_both_kinds_of_first_verdict() -> None:
    first, second = read_audit(NEG_AUDIT), read_audit(NEG_SECOND)
    assert len(second) == 32 and set(second) <= set(first)
    assert sum(first[i] != "not" for i in second) == 16  # half read as real or ambiguous the first time


def test_negatives_audit_covers_the_hard_negatives_only() -> None:
    from safecascade.training.datasets import load_benchmark

    test = load_benchmark("jailbreak", "test")
    neg = read_audit(NEG_AUDIT)
    check_negatives(neg, test)  # raises on any gap
    assert {e.source for e in test if e.id in neg} == set(NEG_SOURCES)
    allv = split_verdicts(test)
    assert len(allv) == len(neg) + sum(e.label for e in test)
    with pytest.raises(ValueError, match="1 missing"):
        check_negatives(dict(list(neg.items())[1:]), test)
    with pytest.raises(ValueError, match="1 extra"):
        check_negatives({**neg, "alpaca-0": "not"}, test)


def test_package_verdicts_are_the_audit_files(tmp_path: Path) -> None:
    """The jailbreak-policy benchmark's vendored labels are exactly the readings in experiments/data
    (rewrite them with ``python -m experiments.exp_label_audit --write-package-verdicts``)."""
    from experiments.exp_label_audit import all_readings, write_package_verdicts
    from safecascade.training import datasets as ds

    assert ds.policy_verdicts() == all_readings()
    fresh = write_package_verdicts(tmp_path / "v.csv.gz")
    assert fresh.read_bytes() == (ds.data_dir() / ds.POLICY_VERDICTS).read_bytes()  # deterministic
