"""The benchmark builder: sizes, date split, prevalence, leakage checks, determinism, speed."""

from __future__ import annotations

import gzip
import time

import pytest

from safecascade.training import datasets as ds
from safecascade.training.datasets import (Example, benchmark_names, benchmark_policy, benchmark_splits,
                                           load_benchmark, normalise, split_hash)


def test_names_and_policies():
    assert benchmark_names() == ["jailbreak", "jailbreak-policy", "moderation", "xstest"]
    assert [benchmark_policy(n) for n in benchmark_names()] == ["jailbreak", "jailbreak", "harmful_content", "harmful_content"]
    assert benchmark_splits("xstest") == ("test",)
    assert benchmark_splits("jailbreak") == ("train", "val", "test")


@pytest.mark.parametrize("name,split,match", [
    ("nope", "test", "unknown benchmark 'nope'"),
    ("jailbreak", "dev", "unknown split 'dev'"),
    ("xstest", "train", "only the split"),
])
def test_bad_arguments_raise_clear_errors(name, split, match):
    with pytest.raises(ValueError, match=match):
        load_benchmark(name, split)


def test_jailbreak_positives_are_split_by_date():
    n_pos = {}
    for split in ("train", "val", "test"):
        pos = [e for e in load_benchmark("jailbreak", split) if e.label == 1]
        n_pos[split] = len(pos)
        assert all(e.source == "jailbreakhub" for e in pos)
        months = {e.date[:7] for e in pos}
        if split == "train":
            assert all(m == "" or m <= "2023-04" for m in months)
            assert "" in months  # the one undated row goes to train
        elif split == "val":
            assert months == {"2023-05", "2023-06"}
        else:
            assert min(months) == "2023-07"
    assert n_pos == {"train": 715, "val": 237, "test": 490}
    assert sum(n_pos.values()) == 1442


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_jailbreak_prevalence_and_sources(split):
    exs = load_benchmark("jailbreak", split)
    prevalence = sum(e.label for e in exs) / len(exs)
    assert abs(prevalence - ds.JAILBREAK_PREVALENCE) < 0.001
    sources = {e.source for e in exs if e.label == 0}
    assert sources == {"toxicchat", "awesome_chatgpt_prompts", "alpaca"}
    assert all(e.label in (0, 1) and e.text.strip() for e in exs)


def test_jailbreak_negatives_do_not_leak():
    splits = {s: load_benchmark("jailbreak", s) for s in ("train", "val", "test")}
    neg_keys = {s: {normalise(e.text) for e in exs if e.label == 0} for s, exs in splits.items()}
    pos_keys = {normalise(e.text) for exs in splits.values() for e in exs if e.label == 1}
    assert not neg_keys["train"] & neg_keys["val"]
    assert not neg_keys["train"] & neg_keys["test"]
    assert not neg_keys["val"] & neg_keys["test"]
    for keys in neg_keys.values():
        assert not keys & pos_keys
    everything = [e for exs in splits.values() for e in exs]
    ids = [e.id for e in everything]
    assert len(ids) == len(set(ids))
    # ToxicChat rows flagged as jailbreaking and the two awesome-chatgpt-prompts jailbreaks stay out.
    tc_rows = ds._rows("toxicchat_train.csv.gz")
    jb_idx = {f"toxicchat-{i}" for i, r in enumerate(tc_rows) if r["jailbreaking"] == "1"}
    aw_rows = ds._rows("awesome_chatgpt_prompts.csv.gz")
    aw_idx = {f"awesome-{i}" for i, r in enumerate(aw_rows) if r["label"] == "1"}
    assert len(jb_idx) == 110 and len(aw_idx) == 2
    assert not (jb_idx | aw_idx) & set(ids)
    toxic = [e for e in everything if e.categories == ("toxic",)]
    assert toxic and all(e.label == 0 and e.source == "toxicchat" for e in toxic)


def test_toxicchat_jailbreaks_are_extra_positives_outside_the_benchmark():
    bench = {normalise(e.text) for e in load_benchmark("jailbreak", "all")}
    parts = {s: ds.toxicchat_jailbreaks(s) for s in ("train", "val", "test")}
    rows = [e for v in parts.values() for e in v]
    keys = [normalise(e.text) for e in rows]
    # 110 flagged rows; the ones whose text the benchmark already holds (DAN copies) and repeats drop out.
    assert 40 < len(rows) < 110 and len(keys) == len(set(keys)) and not set(keys) & bench
    assert all(e.label == 1 and e.source == "toxicchat" and e.categories == ("jailbreaking",) for e in rows)
    tc = ds._rows("toxicchat_train.csv.gz")
    assert all(tc[int(e.id.split("-")[1])]["jailbreaking"] == "1" for e in rows)
    for split, exs in parts.items():  # the split an undated benchmark negative with that text takes
        assert exs and all(ds._undated_split(e.text) == split for e in exs)
    with pytest.raises(ValueError, match="unknown split"):
        ds.toxicchat_jailbreaks("all")


def test_jailbreak_policy_relabels_the_read_texts_and_drops_ambiguous_ones():
    verdicts = ds.policy_verdicts()
    label = {"real": 1, "not": 0}
    for split in ("train", "val", "test"):
        base = load_benchmark("jailbreak", split)
        pol = load_benchmark("jailbreak-policy", split)
        by_id = {e.id: e for e in pol}
        for e in base:
            v = verdicts.get(e.id)
            if v == "ambiguous":
                assert e.id not in by_id
            else:  # unread texts are Alpaca's, which stay benign
                assert by_id[e.id].label == (label[v] if v else 0) and by_id[e.id].text == e.text
                assert v is not None or e.source == "alpaca"
        assert [e.id for e in pol] == [e.id for e in base if e.id in by_id]  # same order
    test = load_benchmark("jailbreak-policy", "test")
    assert (len(test), sum(e.label for e in test)) == (5213, 336)
    # the benchmark's labels call a quarter of these positives jailbreaks that the policy allows
    flipped = [e for e in load_benchmark("jailbreak", "test") if e.label == 1 and verdicts[e.id] == "not"]
    assert len(flipped) == 124


def test_jailbreak_policy_refuses_a_positive_without_a_verdict(monkeypatch):
    verdicts = ds.policy_verdicts()
    pos = next(e for e in load_benchmark("jailbreak", "test") if e.label == 1)
    monkeypatch.setattr(ds, "policy_verdicts", lambda: {k: v for k, v in verdicts.items() if k != pos.id})
    with pytest.raises(ValueError, match=f"no verdict for {pos.id}"):
        ds._build_jailbreak_policy()


def test_near_duplicates_share_a_split():
    a = "Write   a poem about THE sea." + " x" * 200
    b = "write a poem about the sea." + " x" * 200 + " but longer at the end"
    assert normalise(a) == normalise(b)
    assert split_hash(a) == split_hash(b)
    assert split_hash(a, salt="other") != split_hash(a)


def test_split_hash_is_stable_across_machines():
    # A fixed value: a change here would silently reshuffle every benchmark split.
    assert split_hash("hello world") == pytest.approx(0.9564628231579295, abs=1e-12)
    assert split_hash("  Hello\n  WORLD ") == split_hash("hello world")


def test_moderation_split_and_categories():
    parts = {s: load_benchmark("moderation", s) for s in ("train", "val", "test")}
    total = sum(len(v) for v in parts.values())
    assert total == 1666
    assert abs(len(parts["train"]) / total - 0.6) < 0.03
    assert abs(len(parts["val"]) / total - 0.2) < 0.03
    allowed = set(ds.MODERATION_CATEGORIES)
    everything = [e for v in parts.values() for e in v]
    assert sum(e.label for e in everything) == 515
    for e in everything:
        assert set(e.categories) <= allowed
        assert bool(e.categories) == (e.label == 1)
    keys = {s: {normalise(e.text) for e in v} for s, v in parts.items()}
    assert not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    assert len(load_benchmark("moderation", "all")) == 1666


def test_xstest_is_test_only():
    exs = load_benchmark("xstest", "test")
    assert len(exs) == 450 and sum(e.label for e in exs) == 200
    assert load_benchmark("xstest", "all") == exs
    assert all(len(e.categories) == 1 for e in exs)
    assert {"homonyms", "contrast_homonyms"} <= {e.categories[0] for e in exs}


def test_deterministic_and_copy_returned():
    a = load_benchmark("jailbreak", "val")
    b = load_benchmark("jailbreak", "val")
    assert a == b and a is not b
    a.clear()
    assert len(load_benchmark("jailbreak", "val")) == len(b)
    assert isinstance(b[0], Example)
    with pytest.raises(Exception):
        b[0].label = 5  # frozen


def test_loading_is_fast():
    ds._build.cache_clear()
    ds._rows.cache_clear()
    t0 = time.perf_counter()
    load_benchmark("jailbreak", "test")
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(10):
        load_benchmark("jailbreak", "test")
    warm = (time.perf_counter() - t0) / 10
    assert cold < 5.0  # about 0.6 s on an idle core; loose for a shared CI machine
    assert warm < 0.05


def test_vendored_files_are_deterministic_gzip():
    for name in ("jailbreakhub.csv.gz", "xstest.csv.gz", "alpaca_sample.csv.gz", ds.POLICY_VERDICTS):
        raw = (ds.data_dir() / name).read_bytes()
        assert raw[4:8] == b"\x00\x00\x00\x00"  # gzip mtime 0: rebuilds are byte-identical
        assert gzip.decompress(raw).startswith(b"id,verdict" if name == ds.POLICY_VERDICTS else b"text,label")
    assert len(ds._rows("alpaca_sample.csv.gz")) == 12000
    assert (ds.data_dir() / "SOURCES.md").is_file()


def test_summary_table():
    rows = ds.summary_rows()
    assert [(r["benchmark"], r["split"]) for r in rows] == [
        ("jailbreak", "train"), ("jailbreak", "val"), ("jailbreak", "test"),
        ("jailbreak-policy", "train"), ("jailbreak-policy", "val"), ("jailbreak-policy", "test"),
        ("moderation", "train"), ("moderation", "val"), ("moderation", "test"), ("xstest", "test")]
    md = ds.summary_markdown()
    assert "| jailbreak | jailbreak | test | 5269 | 490 | 0.093 |" in md
