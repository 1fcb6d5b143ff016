"""The eval harness on real routers built from small YAML configs (replay tiers with recorded
scores, and the real heuristic tier), checking counts that are worked out by hand."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from safecascade.router.cascade import Router
from safecascade.training.datasets import Example, load_benchmark
from safecascade.training.evaluate import evaluate_router, evaluate_router_with_decisions, stratified_sample, write_report
from safecascade.training.metrics import roc_auc


@dataclass(frozen=True)
class Row:
    text: str
    label: int
    a: float | None  # tier A's score (None = not recorded -> error, passed on)
    b: float | None  # tier B's score (None = not recorded -> error, on_error block)


ROWS = [
    Row("a0", 0, 0.10, None), Row("a1", 1, 0.15, None), Row("a2", 0, 0.0, None),   # A allows
    Row("a3", 1, 0.90, None), Row("a4", 0, 0.85, None),                             # A blocks
    Row("e0", 1, 0.5, 0.9), Row("e1", 0, 0.5, 0.7), Row("e2", 0, 0.5, 0.1),          # A escalates, B decides
    Row("e3", 1, 0.5, 0.3), Row("e4", 1, 0.5, 0.6),
    Row("missA", 1, None, 0.95),                                                    # A errors -> B
    Row("missB", 0, 0.5, None),                                                     # B errors -> fallback block
]
EXPECTED_SCORES = [0.10, 0.15, 0.0, 0.90, 0.85, 0.9, 0.7, 0.1, 0.3, 0.6, 0.95, 1.0]


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def two_tier_router(tmp_path: Path) -> Router:
    _write_csv(tmp_path / "a.csv", ["text", "jailbreak"], [[r.text, r.a] for r in ROWS if r.a is not None])
    _write_csv(tmp_path / "b.csv", ["text", "jailbreak"], [[r.text, r.b] for r in ROWS if r.b is not None])
    (tmp_path / "r.yaml").write_text(
        "name: two-tier\npolicies: {jailbreak: builtin:jailbreak}\ntiers:\n"
        "  - {name: A, type: replay, options: {path: a.csv}, bands: {jailbreak: [0.2, 0.8]}, on_error: next}\n"
        "  - {name: B, type: replay, options: {path: b.csv}, threshold: 0.5, on_error: block}\n", encoding="utf-8")
    return Router.load(tmp_path / "r.yaml")


def _examples() -> list[Example]:
    return [Example(text=r.text, label=r.label, source="hand", id=f"hand-{i}") for i, r in enumerate(ROWS)]


def test_counts_metrics_and_escalation(two_tier_router):
    rep = evaluate_router(two_tier_router, _examples(), batch_size=5, progress=False, baseline=False)
    assert rep.n == 12 and rep.positives == 6 and rep.policy == "jailbreak"
    assert rep.metrics["confusion"] == {"tp": 4, "fp": 3, "tn": 3, "fn": 2}
    assert rep.metrics["precision"] == pytest.approx(4 / 7)
    assert rep.metrics["recall"] == pytest.approx(4 / 6)
    assert rep.metrics["f1"] == pytest.approx(8 / 13)
    assert rep.metrics["roc_auc"] == pytest.approx(roc_auc([r.label for r in ROWS], EXPECTED_SCORES))
    a, b = rep.tiers
    assert (a.tier, a.reached, a.decided, a.passed_on, a.errors) == ("A", 12, 5, 7, 1)
    assert a.reached_share == 1.0 and a.decided_share == pytest.approx(5 / 12)
    assert a.escalation_rate == pytest.approx(7 / 12)
    assert (b.tier, b.reached, b.decided, b.passed_on, b.errors) == ("B", 7, 7, 0, 1)
    assert b.reached_share == pytest.approx(7 / 12) and b.escalation_rate == 0.0
    assert a.latency_ms["n"] == 12 and b.latency_ms["n"] == 7 and rep.cascade_latency_ms["n"] == 12
    assert rep.cascade_latency_ms["p99"] >= rep.cascade_latency_ms["p50"] >= 0
    assert rep.fallbacks == 1 and rep.errors == 2
    assert rep.decided_by == {"A": 5, "B": 7}
    assert rep.reasons == {"band": 5, "fallback:block": 1, "last_tier": 6}
    assert rep.baseline is None


def test_batch_size_does_not_change_results(two_tier_router):
    r1 = evaluate_router(two_tier_router, _examples(), batch_size=1, progress=False, baseline=False)
    r64 = evaluate_router(two_tier_router, _examples(), batch_size=64, progress=False, baseline=False)
    assert r1.metrics == r64.metrics
    assert [(t.reached, t.decided, t.passed_on) for t in r1.tiers] == [(t.reached, t.decided, t.passed_on) for t in r64.tiers]


def test_report_serialises_and_renders(two_tier_router, tmp_path):
    rep, decisions = evaluate_router_with_decisions(two_tier_router, _examples(), progress=False, baseline=False)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["tiers"][0]["tier"] == "A" and d["metrics"]["confusion"]["tp"] == 4
    md = rep.to_markdown()
    assert "| cascade `two-tier` (A -> B) | 0.571 | 0.667 | 0.615 |" in md
    assert "| A | 12 | 100.0 | 5 | 41.7 | 7 | 0.583 | 1 |" in md
    assert "| label 1 | 4 | 2 |" in md and "| label 0 | 3 | 3 |" in md
    paths = write_report(rep, tmp_path / "out", examples=_examples(), decisions=decisions)
    assert [p.name for p in paths] == ["report.json", "report.md", "predictions.csv"]
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open(encoding="utf-8")))
    assert [float(r["score"]) for r in rows] == pytest.approx(EXPECTED_SCORES)
    assert rows[-1]["reason"] == "fallback:block" and "text" not in rows[0]


def test_score_follows_the_benchmark_policy(tmp_path):
    texts = [f"t{i}" for i in range(6)]
    labels = [0, 0, 0, 1, 1, 1]
    jb = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]  # ranks perfectly
    hc = [0.4, 0.45, 0.49, 0.3, 0.2, 0.1]  # ranks exactly backwards, and never blocks
    _write_csv(tmp_path / "v.csv", ["text", "jailbreak", "harmful_content"], [[t, j, h] for t, j, h in zip(texts, jb, hc)])
    (tmp_path / "r.yaml").write_text(
        "name: two-pol\npolicies: {jailbreak: builtin:jailbreak, harmful_content: builtin:harmful_content}\n"
        "tiers:\n  - {name: R, type: replay, options: {path: v.csv}}\n", encoding="utf-8")
    router = Router.load(tmp_path / "r.yaml")
    exs = [Example(text=t, label=y, source="x", id=t) for t, y in zip(texts, labels)]
    assert evaluate_router(router, exs, policy="jailbreak", progress=False).metrics["roc_auc"] == 1.0
    assert evaluate_router(router, exs, policy="harmful_content", progress=False).metrics["roc_auc"] == 0.0
    rep = evaluate_router(router, exs, policy="nope", progress=False)
    assert rep.notes and "no policy 'nope'" in rep.notes[0]
    assert rep.metrics["roc_auc"] == 1.0  # falls back to d.score (max over policies), which ranks perfectly here


def test_bad_arguments(two_tier_router):
    with pytest.raises(ValueError, match="no examples"):
        evaluate_router(two_tier_router, [], progress=False)
    with pytest.raises(ValueError, match="label"):
        evaluate_router(two_tier_router, [Example(text="a0", label=3, source="x", id="1")], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_router(two_tier_router, _examples(), batch_size=0, progress=False)


def test_stratified_sample():
    exs = load_benchmark("jailbreak", "test")
    s = stratified_sample(exs, 500)
    assert len(s) == 500 and sum(e.label for e in s) == round(500 * 490 / 5269)
    assert s == stratified_sample(exs, 500)
    assert [e.id for e in s] == [e.id for e in exs if e in set(s)]  # input order kept
    assert stratified_sample(exs[:10], 100) == exs[:10]
    with pytest.raises(ValueError):
        stratified_sample(exs, 0)


def test_baseline_row_on_the_same_texts(tmp_path):
    _write_csv(tmp_path / "v.csv", ["text", "harmful_content"], [["unused", 0.0]])
    (tmp_path / "r.yaml").write_text(
        "name: allow-all\npolicies: {harmful_content: builtin:harmful_content}\n"
        "tiers:\n  - {name: R, type: replay, options: {path: v.csv, missing: allow}}\n", encoding="utf-8")
    exs = stratified_sample(load_benchmark("moderation", "test"), 60)
    rep = evaluate_router(Router.load(tmp_path / "r.yaml"), exs, benchmark="moderation", split="test", progress=False)
    assert rep.policy == "harmful_content"
    assert rep.metrics["recall"] == 0.0 and rep.metrics["confusion"]["tn"] == 60 - rep.positives
    assert rep.baseline["train_split"] == "moderation/train"
    assert rep.baseline["metrics"]["n"] == 60
    assert rep.baseline["metrics"]["roc_auc"] > 0.7  # TF-IDF is well above chance on moderation
    assert "TF-IDF + LR baseline (fit on moderation/train)" in rep.to_markdown()


def test_heuristic_tier_in_front(tmp_path):
    _write_csv(tmp_path / "v.csv", ["text", "jailbreak"], [["unused", 0.0]])
    (tmp_path / "r.yaml").write_text(
        "name: heur\npolicies: {jailbreak: builtin:jailbreak}\ntiers:\n"
        "  - {name: heuristic, type: heuristic, bands: {default: [null, 0.98]}}\n"
        "  - {name: last, type: replay, options: {path: v.csv, missing: allow}}\n", encoding="utf-8")
    exs = stratified_sample(load_benchmark("jailbreak", "test"), 200)
    rep = evaluate_router(Router.load(tmp_path / "r.yaml"), exs, progress=False, baseline=False)
    h, last = rep.tiers
    assert h.reached == 200 and h.decided + h.passed_on == 200 and h.decided > 0 and h.passed_on > 0
    assert last.reached == h.passed_on and last.decided == last.reached
    assert sum(rep.decided_by.values()) == 200
    assert h.latency_ms["p50"] < 50  # "well under 1 ms" per text; loose for a shared machine


def _block_all_config(tmp_path, name: str, policy: str) -> None:
    """r.yaml: one replay tier that knows no text and blocks every one it misses."""
    _write_csv(tmp_path / "v.csv", ["text", policy], [["unused", 0.0]])
    (tmp_path / "r.yaml").write_text(
        f"name: {name}\npolicies: {{{policy}: builtin:{policy}}}\n"
        "tiers:\n  - {name: R, type: replay, options: {path: v.csv, missing: block}}\n", encoding="utf-8")


def test_cli_writes_reports(tmp_path):
    from safecascade.cli import main

    _block_all_config(tmp_path, "cli", "harmful_content")
    out = tmp_path / "out"
    rc = main(["eval", "--benchmark", "xstest", "--split", "test", "--config", str(tmp_path / "r.yaml"), "--limit", "40",
               "--out", str(out), "--no-baseline", "--no-progress"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert rep["n"] == 40 and rep["positives"] == 18 and rep["limit"] == 40
    assert rep["metrics"]["recall"] == 1.0 and rep["metrics"]["confusion"]["fp"] == 22  # blocks everything
    assert rep["baseline"] is None
    assert (out / "report.md").read_text(encoding="utf-8").startswith("### cli on xstest/test")
    assert main(["eval", "--benchmark", "xstest", "--split", "train", "--config", str(tmp_path / "r.yaml"),
                 "--out", str(out), "--no-progress"]) == 2  # clear error, not a traceback


def test_cli_evaluates_against_the_policy_labels(tmp_path):
    from safecascade.cli import main

    _block_all_config(tmp_path, "all", "jailbreak")
    out = tmp_path / "out"
    assert main(["eval", "--benchmark", "jailbreak-policy", "--split", "test", "--config", str(tmp_path / "r.yaml"),
                 "--out", str(out), "--no-baseline", "--no-progress"]) == 0
    rep = json.loads((out / "report.json").read_text(encoding="utf-8"))
    # the policy's labels: 56 ambiguous texts left out, 336 violations instead of the collection's 490
    assert (rep["n"], rep["positives"]) == (5213, 336) and rep["metrics"]["confusion"]["fp"] == 5213 - 336
    assert (out / "report.md").read_text(encoding="utf-8").startswith("### all on jailbreak-policy/test")


def test_module_is_cheap_to_import():
    code = ("import sys, safecascade.training.evaluate, safecascade.training.datasets, safecascade.training.metrics, "
            "safecascade.training.baseline; heavy = [m for m in ('sklearn', 'torch', 'numpy', 'onnxruntime') "
            "if m in sys.modules]; print(heavy); assert not heavy")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_named_report_and_write(two_tier_router, tmp_path):
    rep = evaluate_router(two_tier_router, _examples(), progress=False, baseline=False, name="my run")
    assert rep.to_markdown().startswith("### my run (n=12, positives=6, policy=jailbreak)")
    paths = rep.write(tmp_path / "w")
    assert [p.name for p in paths] == ["report.json", "report.md"]
    assert json.loads(paths[0].read_text(encoding="utf-8"))["name"] == "my run"
