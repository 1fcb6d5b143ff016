"""Several policies in one training run: the multi-policy benchmark and the masked labels.

The benchmark tests read the vendored data (no model); the head tests train real sklearn heads on
synthetic embeddings (one informative direction per policy), so they run in seconds and a
masking mistake (a text scored for a policy it has no label for) shows as a wrong count or a
wrong calibration.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from safecascade.training.datasets import normalise
from safecascade.training.opinion_questions import is_policy_neutral_opinion
from safecascade.training.heads import evaluate_heads, train_heads
from safecascade.training.policy_data import POLICIES, POLICY_RELABELS, load_policy_benchmark, policy_view, real_user_benign
from safecascade.training.train_config import TrainConfig
from safecascade.training.train_rows import example_labels, labelled, rows_from_examples, split_labels, stratified_limit


@pytest.fixture(scope="module")
def splits() -> dict[str, list]:
    return {s: load_policy_benchmark(s) for s in ("train", "val", "test")}


def test_every_policy_has_both_classes_in_every_split(splits) -> None:
    for s, ex in splits.items():
        for pol in POLICIES:
            view = policy_view(ex, pol)
            c = Counter(e.label for e in view)
            assert c[0] > 100 and c[1] > 100, (s, pol, c)


def test_no_text_straddles_splits(splits) -> None:
    """Exact (case/whitespace-folded) duplicates never sit in two splits."""
    keys = {s: {" ".join(e.text.lower().split()) for e in ex} for s, ex in splits.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["val"] and not keys["val"] & keys["test"]


def test_grouped_sources_keep_groups_together(splits) -> None:
    """BIPIA: every test text comes from the test file (attacks never seen in train); Gandalf keeps
    its upstream split; the jailbreak benchmark's texts keep theirs."""
    assert all(e.id.startswith("bipia-test") for e in splits["test"] if e.source == "bipia")
    assert not any(e.id.startswith("bipia-test") for s in ("train", "val") for e in splits[s] if e.source == "bipia")
    from safecascade.training.datasets import load_benchmark

    fold = lambda t: " ".join(t.lower().split())  # noqa: E731
    kept = {fold(e.text) for s in ("train", "val", "test") for e in splits[s]}
    test_ids = {e.id for e in splits["test"]}
    missing = [e for e in load_benchmark("jailbreak", "test") if e.id not in test_ids]
    # only exact re-posts are dropped (a copy of the same text is kept, in the first split it met)
    assert len(missing) < 10 and all(fold(e.text) in kept for e in missing)


def test_val_attacks_that_train_holds_are_marked(splits) -> None:
    """BIPIA's train file is split by context, so a val attack plants an attack string train holds:
    it is marked ``attack_in_train`` (the tuner chooses no threshold on it); the test file's attacks
    are apart from train's and never marked; clean contexts carry no mark."""
    train_attacks = {e.meta["attack"] for e in splits["train"] if e.source == "bipia" and e.labels.get("prompt_injection") == 1}
    val = [e for e in splits["val"] if e.source == "bipia" and e.labels.get("prompt_injection") == 1]
    assert val and all(e.meta["attack_in_train"] == ("1" if e.meta["attack"] in train_attacks else "0") for e in val)
    assert sum(e.meta["attack_in_train"] == "1" for e in val) > 300
    test = [e for e in splits["test"] if e.source == "bipia"]
    assert test and not any(e.meta.get("attack_in_train") == "1" for e in test)
    assert not any("attack" in e.meta for s in splits.values() for e in s if e.source == "bipia" and e.category == "clean")


def test_planted_exfiltration_keeps_test_lines_in_test(splits) -> None:
    """Every planted line sits in one clean BIPIA context of the file its split reads: the test
    lines only in test texts, the train lines only in train/val texts; an attack line is an
    injection (not labelled for the other policies), an ordinary line is benign for all three."""
    from safecascade.training.datasets import read_vendored

    lines = read_vendored("pi_exfil_planted.csv.gz")
    for split, ex in splits.items():
        planted = [e for e in ex if e.source == "exfil_planted"]
        assert len(planted) > 50, split
        own = [r for r in lines if r["split"] == ("test" if split == "test" else "train")]
        for e in planted:
            hit = [r for r in own if r["text"] in e.text]
            assert len(hit) == 1, (split, e.text[:80])
            want = {"prompt_injection": 1} if hit[0]["label"] == "1" else {p: 0 for p in POLICIES}
            assert dict(e.labels) == want and e.category == hit[0]["kind"]
            assert e.text.count(hit[0]["text"]) == 1 and len(e.text) > len(hit[0]["text"]) + 20


def test_planted_exfiltration_measures_but_does_not_train(splits) -> None:
    """The learned tiers train, calibrate and gate on training_split: every source but the
    measure-only ones, which stay in the benchmark for rule precision and evaluation (and but the
    rows that train the multilingual tier alone, for the other kinds)."""
    from safecascade.training.policy_data import MEASURE_ONLY, MULTILINGUAL_ONLY, training_split

    for split, ex in splits.items():
        kept = training_split(split)
        assert not any(e.source in MEASURE_ONLY for e in kept)
        assert [e.id for e in kept] == [e.id for e in ex if e.source not in MEASURE_ONLY and not e.source.startswith(MULTILINGUAL_ONLY)]
        assert [e.id for e in training_split(split, "multilingual")] == [e.id for e in ex if e.source not in MEASURE_ONLY]
        assert len(kept) < len(ex)


def test_the_multilingual_benign_prompts_train_and_validate_but_never_test(splits) -> None:
    """The benign prompts in other languages are benign for every policy, weighted, carry their
    language, and sit in train (about 80%) and val only: the test split is what it was."""
    from safecascade.training.datasets import read_vendored
    from safecascade.training.policy_data import MULTILINGUAL_BENIGN_WEIGHT, language

    rows = read_vendored("benign_multilingual.csv.gz")
    got = {s: [e for e in ex if e.source == "authored_multilingual"] for s, ex in splits.items()}
    assert not got["test"] and len(got["train"]) + len(got["val"]) == len(rows)
    assert 0.7 < len(got["train"]) / len(rows) < 0.9
    for e in got["train"] + got["val"]:
        assert dict(e.labels) == {p: 0 for p in POLICIES} and e.weight == MULTILINGUAL_BENIGN_WEIGHT
    langs = Counter(language(e) for e in got["train"])
    assert len(langs) == 20 and "en" not in langs and langs["fr"] > langs["de"]


def test_the_advice_prompts_carry_the_label_their_reading_gave(splits) -> None:
    """Every AILuminate advice prompt is labelled as its row in the reading says (1, 0, or unlabelled
    for "unclear"), in every split; the other hazards stay violations."""
    from safecascade.training.datasets import read_vendored

    reading = {r["release_prompt_id"]: r["label"] for r in read_vendored("ailuminate_spc_labels.csv.gz")}
    rows = read_vendored("harm_ailuminate.csv.gz")
    assert {r["release_prompt_id"] for r in rows if r["hazard"].startswith("spc_")} == set(reading)
    hazard = {r["text"]: r["hazard"] for r in rows}
    ids = {r["text"]: r["release_prompt_id"] for r in rows}
    seen = Counter()
    for ex in splits.values():
        for e in ex:
            if e.source != "ailuminate":
                continue
            want = {"1": 1, "0": 0, "unclear": None}[reading[ids[e.text]]] if hazard[e.text].startswith("spc_") else 1
            assert e.labels.get("harmful_request") == want and e.labels["prompt_injection"] == 0
            seen[want] += 1
    assert seen[1] > seen[0] > seen[None] > 0


def test_the_edgy_benign_prompts_train_and_validate_but_never_test(splits) -> None:
    """The English prompts on dark themes are benign for every policy, weighted, and sit in train
    (about 80%) and val only: the test split is what it was."""
    from safecascade.training.datasets import read_vendored
    from safecascade.training.policy_data import EDGY_BENIGN_WEIGHT

    rows = read_vendored("benign_edgy.csv.gz")
    got = {s: [e for e in ex if e.source == "authored_edgy"] for s, ex in splits.items()}
    assert not got["test"] and 0.7 < len(got["train"]) / len(rows) < 0.9 and got["val"]
    assert len(got["train"]) + len(got["val"]) > 0.98 * len(rows)  # a few may repeat a text another source holds
    for e in got["train"] + got["val"]:
        assert dict(e.labels) == {p: 0 for p in POLICIES} and e.weight == EDGY_BENIGN_WEIGHT
    assert {e.meta["theme"] for e in got["train"]} == {"creative", "tasks", "questions"}


def test_the_multilingual_only_translations_train_that_tier_alone_in_train(splits) -> None:
    """Session 56's translations (``jailbreak_translated_ml.csv.gz``) are train rows labelled for the
    jailbreak policy only, made from train-split originals that session 44's file did not translate,
    in eight languages; :func:`training_split` gives them to the multilingual tier and to no other."""
    from safecascade.training.datasets import load_benchmark, read_vendored
    from safecascade.training.policy_data import MULTILINGUAL_ONLY, language, training_split

    rows = read_vendored("jailbreak_translated_ml.csv.gz")
    got = {s: [e for e in ex if e.source.startswith(MULTILINGUAL_ONLY)] for s, ex in splits.items()}
    assert len(got["train"]) == len(rows) >= 300 and not got["val"] and not got["test"]
    originals = {e.id: e for e in load_benchmark("jailbreak", "train")}
    before = {r["source_id"] for r in read_vendored("jailbreak_translated.csv.gz")}
    for e in got["train"]:
        orig = originals[e.meta["source_id"]]
        assert e.meta["source_id"] not in before and e.source == MULTILINGUAL_ONLY + orig.source
        assert dict(e.labels) == {"jailbreak": orig.label}
    assert {language(e) for e in got["train"]} == {"fr", "de", "zh", "es", "it", "ru", "pt", "ja"}
    assert Counter(e.labels["jailbreak"] for e in got["train"])[0] > 100
    ids = {e.id for e in got["train"]}
    assert not ids & {e.id for e in training_split("train")} and not ids & {e.id for e in training_split("train", "fast")}
    assert ids <= {e.id for e in training_split("train", "multilingual")}


def test_the_translated_jailbreaks_train_and_validate_the_heads_only(splits) -> None:
    """The translated jailbreaks (1) and benign persona prompts (0), labelled for the jailbreak policy
    only, sit in train (about 80%) and val only, carry their language and the
    id of a train-split original, and are kept from the encoder's fine-tune (``HEADS_ONLY``)."""
    from safecascade.training.datasets import load_benchmark, read_vendored
    from safecascade.training.policy_data import HEADS_ONLY, TRANSLATION, language

    rows = read_vendored("jailbreak_translated.csv.gz")
    got = {s: [e for e in ex if e.source.startswith(TRANSLATION)] for s, ex in splits.items()}
    assert not got["test"] and 0.7 < len(got["train"]) / len(rows) < 0.9 and got["val"]
    assert len(got["train"]) + len(got["val"]) == len(rows)
    originals = {e.id: e for e in load_benchmark("jailbreak", "train")}
    for e in got["train"] + got["val"]:
        orig = originals[e.meta["source_id"]]
        assert e.source == TRANSLATION + orig.source and e.source.startswith(HEADS_ONLY)
        assert dict(e.labels) == {"jailbreak": orig.label}  # made for the jailbreak policy, labelled for it only
    langs = Counter(language(e) for e in got["train"])
    assert set(langs) == {"fr", "de", "zh", "es", "it", "ru", "pt"}
    assert Counter(e.labels["jailbreak"] for e in got["train"])[0] > 50  # benign personas alongside


def test_benign_documents_lines_train_the_heads_only(splits) -> None:
    """The parts of the train split's benign documents (system prompts, BIPIA's clean contexts) are
    train-only prompt-injection negatives, cut as the tiers cut them, never a document's override line, at most
    MAX_PARTS per document, kept from the encoder's fine-tune (``HEADS_ONLY``)."""
    from safecascade.tiers.segments import readable
    from safecascade.training.policy_data import HEADS_ONLY, MAX_PARTS, PART, PART_SOURCES, PART_WEIGHT

    got = {s: [e for e in ex if e.source.startswith(PART)] for s, ex in splits.items()}
    assert not got["val"] and not got["test"] and len(got["train"]) > 1000
    docs = {e.id: e for e in splits["train"] if not e.source.startswith(HEADS_ONLY)}
    per_doc = Counter(e.id.rsplit("-part", 1)[0] for e in got["train"])
    assert max(per_doc.values()) <= MAX_PARTS
    for e in got["train"]:
        doc = docs[e.id.rsplit("-part", 1)[0]]
        assert doc.source in PART_SOURCES and e.source == PART + doc.source and e.source.startswith(HEADS_ONLY)
        assert dict(e.labels) == {"prompt_injection": 0} and not any(doc.labels.values())
        assert e.weight == doc.weight * PART_WEIGHT and all(w in readable(doc.text) for w in e.text.split())  # a piece of it
        assert "ignore all previous instructions" not in e.text.lower()
    assert {e.source for e in got["train"]} == {PART + s for s in PART_SOURCES}


def test_a_planted_line_goes_at_the_start_a_line_break_or_the_end() -> None:
    from safecascade.training.policy_data import _plant

    ctx = "a\nb\nc\nd"
    assert _plant(ctx, "X", 0.1) == "X\n" + ctx and _plant(ctx, "X", 0.9) == ctx + "\nX"
    middle = _plant(ctx, "X", 0.5).split("\n")
    assert middle[0] == "a" and middle[-1] == "d" and "X" in middle[1:-1]
    assert _plant("one line", "X", 0.5) == "one line\nX"  # no inner break: at the end


def test_labels_follow_the_cross_policy_rules(splits) -> None:
    ex = splits["train"]
    harm = [e for e in ex if e.source == "harmfulqa_catqa"]
    assert harm and all(e.labels == {"jailbreak": 0, "prompt_injection": 0, "harmful_request": 1} for e in harm)
    gandalf = [e for e in ex if e.source == "gandalf"]
    assert gandalf and all("jailbreak" not in e.labels and e.labels["prompt_injection"] == 1 for e in gandalf)
    beaver = [e for e in ex if e.source == "beavertails"]
    assert beaver and all(e.weight < 0.5 for e in beaver)  # weak labels: a model's answer, not the prompt
    # its opinion questions that the policy does not cover are unlabelled for harm, not taught as harmful
    opinion = [e for e in beaver if is_policy_neutral_opinion(e.text)]
    assert 30 < len(opinion) < 0.1 * len(beaver)
    assert all("harmful_request" not in e.labels and not e.weak and e.labels["jailbreak"] == 0 for e in opinion)
    assert all(e.labels["harmful_request"] == 1 and e.weak for e in beaver if not is_policy_neutral_opinion(e.text))
    real = [e for e in ex if e.source == "toxicchat" and e.labels.get("harmful_request") == 0]
    assert real and all(e.weight > 1.0 for e in real)  # benign real user prompts weigh more than other negatives
    toxic = [e for e in ex if e.source == "toxicchat" and "harmful_request" not in e.labels]
    assert toxic and all(e.weight == 1.0 for e in toxic)
    advice = [e for e in ex if e.source == "ailuminate" and e.category.startswith("spc_")]
    got = Counter(e.labels.get("harmful_request") for e in advice)  # each read against the policy
    assert got[0] and got[1] and all(e.weight == (0.7 if e.labels.get("harmful_request") == 1 else 0.5) for e in advice)
    benign = real_user_benign("val")
    assert benign and all(e.source == "toxicchat" and e.label == 0 for e in benign)
    # a ToxicChat prompt our policy defines as a violation is labelled for it, not benign traffic
    relabelled = [e for split in splits.values() for e in split if normalise(e.text) in POLICY_RELABELS]
    assert relabelled and all(e.labels[POLICY_RELABELS[normalise(e.text)][0]] == 1 and e.weight == 1.0 for e in relabelled)
    assert not any(normalise(e.text) in POLICY_RELABELS for s in splits for e in real_user_benign(s))
    assert len({normalise(e.text) for e in benign}) > 100


def test_rows_and_split_labels_mask_unlabelled_policies(splits) -> None:
    cfg = TrainConfig(benchmark="policies", policies=POLICIES)
    sample = stratified_limit(list(splits["val"]), 400)
    rows = rows_from_examples(sample, POLICIES[0], policies=POLICIES)
    assert all(set(r.targets) == {p for p in POLICIES if p in e.labels} for r, e in zip(rows, sample))
    lab = split_labels(cfg, sample)
    for pol in POLICIES:
        assert lab[pol] == example_labels(sample, pol, first_policy=POLICIES[0])
        assert sorted(labelled(lab[pol]).tolist()) == [i for i, e in enumerate(sample) if pol in e.labels]


def _synthetic(n: int, seed: int) -> tuple[list[np.ndarray], list[dict[str, int]]]:
    """Window embeddings with one informative dimension per policy; each text labelled for a
    random subset of the policies (at least one)."""
    rng = np.random.default_rng(seed)
    embs, labels = [], []
    for _ in range(n):
        y = {p: int(rng.random() < 0.3) for p in POLICIES}
        keep = [p for p in POLICIES if rng.random() < 0.7] or [POLICIES[0]]
        e = rng.normal(size=(1, 8)) * 0.3
        for k, p in enumerate(POLICIES):
            e[0, k] += 2.0 * y[p]
        embs.append(e.astype(np.float32))
        labels.append({p: y[p] for p in keep})
    return embs, labels


@pytest.mark.parametrize("fit_on", ["train", "train+val"])
def test_heads_calibrate_and_score_only_labelled_texts(fit_on: str) -> None:
    from safecascade.training.train_rows import TrainRow

    tr_embs, tr_lab = _synthetic(300, 0)
    va_embs, va_lab = _synthetic(200, 1)
    cfg = TrainConfig(benchmark="policies", policies=POLICIES, head="lr", fit_on=fit_on, refit_folds=3)
    rows = [TrainRow(text=str(i), targets={p: float(v) for p, v in lab.items()}) for i, lab in enumerate(tr_lab)]
    val_labels = {p: [lab.get(p, -1) for lab in va_lab] for p in POLICIES}
    heads, _, calinfo = train_heads(cfg, tr_embs, rows, va_embs, val_labels, progress=False)
    assert [h.policy for h in heads] == list(POLICIES)
    metrics, scores = evaluate_heads(heads, va_embs, val_labels, oof_logits={p: c["val_logits_oof"] for p, c in calinfo.items()
                                                                               if "val_logits_oof" in c})
    for k, pol in enumerate(POLICIES):
        n_lab = sum(1 for lab in va_lab if pol in lab)
        assert metrics[pol]["n"] == n_lab < len(va_lab)  # only the texts labelled for the policy are scored
        assert metrics[pol]["roc_auc"] > 0.95  # the head found its policy's direction
        if fit_on == "train+val":  # out-of-fold logits exist exactly for the labelled val texts
            oof = calinfo[pol]["val_logits_oof"]
            assert np.isnan(oof).sum() == len(va_lab) - n_lab


def test_imperative_rewrites_how_to_questions_only() -> None:
    from safecascade.training.policy_data import HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, imperative

    t = imperative("How can I steal a car without getting caught?")
    assert t in [x.format(task="steal a car without getting caught") for x in TRAIN_TEMPLATES]
    assert imperative("What is the best way to poison a dog?", HELD_OUT_TEMPLATES) in [
        x.format(task="poison a dog") for x in HELD_OUT_TEMPLATES]
    assert imperative("How can I steal a car?") == imperative("How can I steal a car?")  # the template is chosen by the text
    for text in ("Write a poem about spring.", "How are you?", "What is the capital of France?", "how do i"):
        assert imperative(text) is None
    assert not set(TRAIN_TEMPLATES) & set(HELD_OUT_TEMPLATES)


def test_paraphrases_are_train_only_labelled_as_their_question(splits) -> None:
    from safecascade.training.policy_data import PARAPHRASE, imperative

    par = [e for e in splits["train"] if e.source.startswith(PARAPHRASE)]
    assert len(par) > 1000
    assert not any(e.source.startswith(PARAPHRASE) for s in ("val", "test") for e in splits[s])
    originals = {e.id: e for e in splits["train"] if not e.source.startswith(PARAPHRASE)}
    labels = Counter()
    for e in par:
        orig = originals[e.id.removesuffix("-imperative")]
        assert e.source == PARAPHRASE + orig.source and e.labels == orig.labels and e.text == imperative(orig.text)
        assert e.weight == pytest.approx(orig.weight * (0.5 if orig.labels["harmful_request"] == 1 else 1.0))
        labels[e.labels["harmful_request"]] += 1
    assert labels[0] > 300 and labels[1] > 1000  # benign how-to questions are rewritten too


def test_weak_labels_weigh_less_in_the_heads_only(splits) -> None:
    """BeaverTails and the weak Safety-Tuned LLaMAs rows (and their paraphrases) have a weak
    harmful-request label; ``weak_label_weight`` trains that label alone at the lower weight and
    the row's other labels as before."""
    from dataclasses import replace

    from safecascade.training.train_rows import data_hash, prepare_rows

    weak = [e for e in splits["train"] if e.weak]
    assert {e.source.removeprefix("paraphrase:") for e in weak} == {"beavertails", "safety_tuned_llamas"}
    assert all(e.weak == ("harmful_request",) and e.labels["harmful_request"] == 1 for e in weak)
    assert not any(e.weak for e in splits["train"] if e.source in ("harmfulqa_catqa", "coconot", "toxicchat", "alpaca"))
    stl = [e for e in splits["train"] if e.source == "safety_tuned_llamas"]
    assert any(e.weak for e in stl) and any(not e.weak for e in stl)  # the strong subsets are not weak
    cfg = TrainConfig(kind="fast", benchmark="policies", policies=POLICIES, weak_label_weight=0.3)
    full = prepare_rows(replace(cfg, weak_label_weight=1.0), splits["train"], None)
    scaled = prepare_rows(cfg, splits["train"], None)
    assert data_hash(full) != data_hash(scaled)
    n_weak = sum(bool(r.weak) for r in full)
    assert n_weak > 1000 and len(scaled) == len(full) + n_weak  # each weak row: its weak label, and the rest
    by_text: dict[str, list] = {}
    for r in scaled:
        by_text.setdefault(r.text, []).append(r)
    for a in full:
        got = by_text[a.text]
        if not a.weak:
            assert got == [a]
            continue
        (w,) = [r for r in got if "harmful_request" in r.targets]
        (rest,) = [r for r in got if "harmful_request" not in r.targets]
        assert w.targets == {"harmful_request": 1.0} and w.weight == pytest.approx(a.weight * 0.3)
        assert rest.targets == {p: t for p, t in a.targets.items() if p != "harmful_request"} and rest.weight == a.weight
    with pytest.raises(ValueError, match="weak_label_weight"):
        TrainConfig(kind="fast", weak_label_weight=0.0)
