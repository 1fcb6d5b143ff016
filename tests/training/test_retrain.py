"""The retrain loop: verdict-log rows as distillation data, the promotion rule, and the whole
loop (real Router -> real VerdictLog -> retrain -> real MLflow sqlite store and registry)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safecascade.router.decision import Decision, PolicyVerdict, TierTrace
from safecascade.hashing import text_hash
from safecascade.router.verdict_log import VerdictLog
from safecascade.training.train_rows import rows_from_log, rows_from_verdicts
from safecascade.training.retrain import decide, split_holdout
from safecascade.training.verdict_rows import is_verdict_log, teacher_rows

POL = "jailbreak"


def _decision(text: str, *, tier: str, traces: list[TierTrace], score: float, flagged: bool) -> Decision:
    return Decision(action="block" if flagged else "allow", tier=tier, reason="band", score=score,
                    policies={POL: PolicyVerdict(score=score, flagged=flagged)}, path=tuple(traces), latency_ms=1.0,
                    text_hash=text_hash(text), config_name="unit", config_hash="cfg0", policy_hashes={POL: "abc123"})


def _sg(score: float | None, *, outcome: str, error: str | None = None) -> TierTrace:
    scores = {} if score is None else {POL: score}
    return TierTrace(tier="safeguard", outcome=outcome, scores=scores, error=error,
                     rule_ids={POL: ("JB1.a",)} if score and score >= 0.5 else {})


def _fast(score: float, outcome: str = "escalate") -> TierTrace:
    return TierTrace(tier="fast", outcome=outcome, scores={POL: score})


@pytest.fixture
def unit_log(tmp_path) -> Path:
    """One row of each kind the extraction must tell apart: (text, decision, store the text?)."""
    db = tmp_path / "v.db"
    rows = [
        ("a jailbreak", "safeguard", [_fast(0.5), _sg(0.9, outcome="block")], 0.9, True, True),
        ("a recipe", "safeguard", [_fast(0.4), _sg(0.2, outcome="allow")], 0.2, False, True),
        ("a secret", "safeguard", [_fast(0.6), _sg(0.7, outcome="block")], 0.7, True, False),  # no text
        ("hello", "fast", [_fast(0.01, "allow")], 0.01, False, True),  # the teacher never ran
        ("odd one", "backstop", [_fast(0.5), _sg(0.65, outcome="escalate"),  # ran, a later tier decided
                                 TierTrace(tier="backstop", outcome="allow", scores={POL: 0.1})], 0.1, False, True),
        ("timeout text", "fast", [_fast(0.3), _sg(None, outcome="error", error="timeout")], 0.3, False, True),
        ("said twice", "safeguard", [_sg(0.2, outcome="allow")], 0.2, False, True),
        ("said twice", "safeguard", [_sg(0.8, outcome="block")], 0.8, True, True),  # newer
    ]
    with VerdictLog(db, store_text=True, sync="none") as vlog:
        for text, tier, traces, score, flagged, keep_text in rows:
            vlog.append(_decision(text, tier=tier, traces=traces, score=score, flagged=flagged), text if keep_text else None)
    return db


def test_teacher_rows_kinds_and_counts(unit_log):
    rows, st = teacher_rows(unit_log)
    assert st.rows_read == 8
    assert st.teacher_rows == 6  # 3 decided + no-text + ran-not-deciding + 2 dups
    assert (st.decided, st.ran_not_deciding, st.not_reached, st.teacher_failed) == (5, 1, 1, 1)
    assert (st.no_text, st.duplicates, st.usable) == (1, 1, 4)
    by_text = {r.text: r for r in rows}
    assert None in by_text and by_text[None].scores == {POL: 0.7}  # kept but marked: no text
    assert by_text["a jailbreak"].labels == {POL: 1} and by_text["a jailbreak"].rule_ids == {POL: ("JB1.a",)}
    assert by_text["a recipe"].labels == {POL: 0}
    # ran without deciding: label from the teacher's own score (0.65 -> 1), not the final allow
    assert by_text["odd one"].labels == {POL: 1} and not by_text["odd one"].decided
    assert by_text["said twice"].scores == {POL: 0.8}  # the newest row wins
    assert [r.ts for r in rows] == sorted(r.ts for r in rows)


def test_soft_rows_from_the_log_and_dispatch(unit_log, tmp_path):
    assert is_verdict_log(unit_log)
    rows = rows_from_log(unit_log, [POL], weight=0.5)
    got = {r.text: (r.targets[POL], r.weight) for r in rows}
    assert got == {"a jailbreak": (0.9, 0.5), "a recipe": (0.2, 0.5), "odd one": (0.65, 0.5), "said twice": (0.8, 0.5)}
    via_fast_train = rows_from_verdicts(unit_log, [POL], weight=0.5)  # dispatches on the file type
    assert [(r.text, dict(r.targets)) for r in via_fast_train] == [(r.text, dict(r.targets)) for r in rows]
    decided = {r.text for r in rows_from_log(unit_log, [POL], decided_only=True)}
    assert decided == {"a jailbreak", "a recipe", "said twice"}
    assert rows_from_log(unit_log, ["harmful_content"]) == []  # no teacher scores for that policy
    csv_path = tmp_path / "v.csv"
    csv_path.write_text("text,jailbreak\nhi,0.3\n")
    assert not is_verdict_log(csv_path) and rows_from_verdicts(csv_path, [POL])[0].targets == {POL: 0.3}


def test_log_without_texts_is_an_error_not_silence(tmp_path):
    db = tmp_path / "private.db"
    with VerdictLog(db, sync="none") as vlog:  # store_text off (the production default)
        vlog.append(_decision("x", tier="safeguard", traces=[_sg(0.9, outcome="block")], score=0.9, flagged=True), "x")
    rows, st = teacher_rows(db)
    assert (st.teacher_rows, st.no_text, st.usable) == (1, 1, 0) and rows[0].text is None
    with pytest.raises(ValueError, match="store_text"):
        rows_from_log(db, [POL])


def test_split_holdout_takes_the_newest(unit_log):
    rows, _ = teacher_rows(unit_log)
    train, hold = split_holdout(rows, fraction=0.25, min_holdout=1)
    usable = [r for r in rows if r.text is not None]
    assert len(hold) == 1 and len(train) == 3 and hold[0] is usable[-1]
    assert max(r.ts for r in train) <= hold[0].ts
    train, hold = split_holdout(rows, fraction=0.25, min_holdout=3)
    assert len(hold) == 3 and len(train) == 1
    with pytest.raises(ValueError, match="usable teacher row"):
        split_holdout(rows, fraction=0.5, min_holdout=4)


def _ev(test_f1, hold_f1):
    return {"benchmark_test": {"f1": test_f1}, "holdout": {"f1": hold_f1}}


def test_promotion_rule():
    ok, why = decide(_ev(0.9, 0.8), None)
    assert ok and "no champion" in why[0]
    assert decide(_ev(0.895, 0.805), _ev(0.9, 0.8), tolerance=0.01)[0]  # small dip within tolerance
    ok, why = decide(_ev(0.95, 0.78), _ev(0.9, 0.8), tolerance=0.01)  # better on test, worse on the log slice
    assert not ok and any("held-back log" in w and "regressed" in w for w in why)
    ok, why = decide(_ev(0.88, 0.9), _ev(0.9, 0.8), tolerance=0.01)
    assert not ok and any("benchmark test" in w and "regressed" in w for w in why)
    assert not decide(_ev(0.9, 0.8), _ev(0.9, 0.8), tolerance=-0.01)[0]  # negative tolerance demands a gain
    assert decide(_ev(0.92, 0.82), _ev(0.9, 0.8), tolerance=-0.01)[0]
    assert not decide(_ev(None, None), _ev(0.9, 0.8))[0]  # nothing comparable -> no promotion


# --------------------------------------------------------------------------- the whole loop


@pytest.fixture(scope="module")
def real_log(tmp_path_factory):
    """130 benchmark val texts through heuristic -> replay safeguard (a real Router and
    VerdictLog); the first 10 logged with store_text off."""
    from tests.training.verdict_log_helpers import build_log, pick_texts

    examples = pick_texts(35, 95)
    db = tmp_path_factory.mktemp("retrain-log") / "verdicts.db"
    counts = build_log(db, examples, no_text_first=10)
    return db, counts


TINY = dict(head="lr", max_iter=200, max_windows=2, limit=160)


@pytest.mark.slow
def test_retrain_loop_promotes_then_rejects(real_log, tmp_path, tmp_path_factory, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from safecascade.cli import main
    from safecascade.training.train_config import TrainConfig
    from safecascade.training.retrain import RetrainConfig, retrain

    db, counts = real_log
    assert counts["by_safeguard_with_text"] >= 80, counts
    home = tmp_path / "home"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("SAFECASCADE_HOME", str(home))  # no built default fast tier: the registry is empty too
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # mlflow's default artifact root (./mlruns) for a sqlite URI
    emb = home / "embeddings"  # shared by both runs (the CLI run uses the default cache under SAFECASCADE_HOME)

    # 1. no champion anywhere -> the candidate is promoted and becomes models:/safecascade-fast@champion
    cfg = RetrainConfig(log_path=str(db), test_limit=80, val_limit=80, holdout_fraction=0.25, min_holdout=10)
    r1 = retrain(cfg, TrainConfig(**TINY), out_dir=tmp_path / "run1", cache_root=emb, progress=False)
    assert r1.promoted and r1.champion is None and "no champion" in r1.reasons[0]
    d = r1.data
    assert d["log_no_text"] >= 1 and d["log_usable"] == d["distill_rows"] + d["holdout_rows"] + d["dropped_test_overlap"]
    assert d["holdout_rows"] >= 10 and d["log_not_reached"] >= 1  # rows decided by heuristic/fast are not teacher rows
    cand = r1.candidate["slices"]
    assert cand["benchmark_test"]["n"] == 80 and cand["holdout"]["n"] == d["holdout_rows"]
    t = cand["benchmark_test"]
    assert t["errors"] == 0 and sum(t["confusion"].values()) == 80 and t["roc_auc"] > 0.5  # every text scored; better than chance
    assert t["f1"] == pytest.approx(2 * t["confusion"]["tp"] / (2 * t["confusion"]["tp"] + t["confusion"]["fp"] + t["confusion"]["fn"]))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert int(client.get_model_version_by_alias("safecascade-fast", "champion").version) == r1.mlflow["candidate_version"]
    card = json.loads((tmp_path / "run1" / "candidate" / "card.json").read_text())
    assert card["distillation"]["distill_rows"] == d["distill_rows"] and card["training_data"]["verdicts"] == str(db)

    # 2. the CLI, same data and settings but a tolerance that demands +0.5 F1: the champion
    #    (version 1, downloaded from the registry) must be kept
    rc = main(["retrain", "--from-log", str(db), "--limit", "80", "--val-limit", "80", "--holdout", "0.25",
               "--head", "lr", "--max-iter", "200", "--max-windows", "2", "--train-limit", "160",
               "--tolerance", "-0.5", "--out", str(tmp_path / "run2"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "decision: REJECTED" in out and "REGRESSED" in out and "held-back log" in out
    r2 = json.loads((tmp_path / "run2" / "retrain_decision.json").read_text())
    assert r2["decision"] == "rejected" and r2["champion"]["version"] == r1.mlflow["candidate_version"]
    # the same pipeline on the same data is deterministic: the registered champion scores exactly as the candidate
    for s in ("benchmark_test", "holdout"):
        assert r2["candidate"]["slices"][s]["f1"] == pytest.approx(r2["champion"]["slices"][s]["f1"], abs=1e-9)
    v2 = r2["mlflow"]["candidate_version"]
    assert v2 == r1.mlflow["candidate_version"] + 1  # the rejected candidate is registered...
    assert int(client.get_model_version_by_alias("safecascade-fast", "champion").version) == r1.mlflow["candidate_version"]  # ...the alias stays
    assert client.get_model_version("safecascade-fast", str(v2)).tags["safecascade.retrain_decision"] == "rejected"

    # both decisions are MLflow runs with both evaluations
    exp = client.get_experiment_by_name("safecascade-retrain")
    runs = {r.data.tags["safecascade.decision"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"promoted", "rejected"}
    rej = runs["rejected"].data
    assert rej.metrics["promoted"] == 0.0 and runs["promoted"].data.metrics["promoted"] == 1.0
    for who in ("candidate", "champion"):
        for s in ("benchmark_test", "holdout"):
            assert f"{who}.{s}.f1" in rej.metrics
    assert "regressed" in rej.tags["safecascade.reasons"]
    assert client.list_artifacts(runs["rejected"].info.run_id)[0].path == "retrain_decision.json"


def test_bad_arguments_and_missing_log_are_errors(tmp_path, unit_log):
    from safecascade.cli import main
    from safecascade.training.retrain import RetrainConfig, retrain

    for bad in ({"holdout_fraction": 0.0}, {"holdout_fraction": 1.0}, {"metric": "accuracy"}, {"tolerance": 2.0},
                {"min_holdout": 0}, {"test_limit": 1}):
        with pytest.raises(ValueError):
            RetrainConfig(log_path="x.db", **bad)
    assert main(["retrain", "--from-log", str(tmp_path / "missing.db")]) == 2
    with pytest.raises(ValueError, match="usable teacher row"):  # 4 usable rows cannot give 10 held back + 1
        retrain(RetrainConfig(log_path=str(unit_log)), out_dir=tmp_path / "out", progress=False)
