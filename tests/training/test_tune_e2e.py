"""Threshold tuning against real routers: the vectorised sweep agrees with ``Router.classify_batch``,
tuning from cached scores is reproducible (byte-identical YAML), the score cache follows tier
content, and ``safecascade tune`` end to end (tiny real models, a real MLflow SQLite store, the
router registered and promoted)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from safecascade.router.config import load_config, parse_config
from safecascade.hashing import text_hash
from safecascade.training.tuning.cost import CostModel
from safecascade.training.tuning.job import TuneOptions, tune
from safecascade.training.tuning.sweep import Objective, _random_bands, evaluate

N = 240


def _write_replay(path: Path, texts: list[str], scores: np.ndarray, keep: np.ndarray | None = None) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text_hash", "jailbreak"])
        for i, (t, s) in enumerate(zip(texts, scores)):
            if keep is None or keep[i]:
                w.writerow([text_hash(t), repr(float(s))])


@pytest.fixture()
def replay_router(tmp_path: Path) -> dict:
    """A three-tier router of replay tiers over synthetic texts (tier b misses some texts: errors)."""
    rng = np.random.default_rng(11)
    texts = [f"synthetic prompt number {i} " + "x" * (i % 7) for i in range(N)] + ["   "]  # + one empty text
    y = np.r_[(rng.random(N) < 0.15).astype(int), 0]
    a = np.round(np.clip(0.45 * y + rng.normal(0.25, 0.2, N + 1), 0, 1), 3)
    b = np.round(np.clip(0.6 * y + rng.normal(0.2, 0.15, N + 1), 0, 1), 3)
    c = np.round(np.clip(0.7 * y + rng.normal(0.15, 0.15, N + 1), 0, 1), 3)
    _write_replay(tmp_path / "a.csv", texts, a)
    _write_replay(tmp_path / "b.csv", texts, b, keep=rng.random(N + 1) > 0.1)
    _write_replay(tmp_path / "c.csv", texts, c)
    cfg = {"version": 1, "name": "synth", "policies": {"jailbreak": "builtin:jailbreak"},
           "tiers": [{"name": "a", "type": "replay", "options": {"path": "a.csv"}, "bands": {"default": [0.1, 0.9]}},
                     {"name": "b", "type": "replay", "options": {"path": "b.csv"}, "bands": {"default": [0.2, 0.8]}},
                     {"name": "c", "type": "replay", "options": {"path": "c.csv"}, "threshold": 0.5}]}
    path = tmp_path / "synth.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return {"path": path, "texts": texts, "labels": y.tolist(), "dir": tmp_path}


def test_sweep_matches_the_real_router(replay_router, tmp_path):
    from safecascade.router.cascade import Router
    from safecascade.training.metrics import classification_summary

    cfg = load_config(replay_router["path"])
    opts = TuneOptions(objective=Objective(kind="max-f1"), max_candidates=50, grid=8, progress=False,
                       cache_dir=tmp_path / "cache")
    res = tune(cfg, replay_router["texts"], replay_router["labels"], opts)
    assert res.table.final.type == "replay" and np.isfinite(res.model.final_score[:N]).all()
    lo, hi = _random_bands(res.space, np.random.default_rng(4), 6)
    lo, hi = np.concatenate([lo, res.candidates.lo[[res.chosen]]]), np.concatenate([hi, res.candidates.hi[[res.chosen]]])
    r = evaluate(res.model, lo, hi)
    from safecascade.training.tuning.report import tuned_config_dict

    for j in range(len(lo)):
        d = tuned_config_dict(cfg, lo[j], hi[j], res.space.active, name=f"cand{j}")
        router = Router.load(parse_config(d, base_dir=tmp_path, source="cand.yaml"))
        decisions = router.classify_batch(replay_router["texts"])
        preds = [d.flagged for d in decisions]
        scores = [(d.policies["jailbreak"].score if d.policies["jailbreak"].score is not None else d.score) for d in decisions]
        m = classification_summary(replay_router["labels"], preds, scores)
        assert (r["tp"][j], r["fp"][j], r["fn"][j]) == (m["confusion"]["tp"], m["confusion"]["fp"], m["confusion"]["fn"])
        assert r["f1"][j] == pytest.approx(m["f1"])
        assert r["recall_at_1pct_fpr"][j] == pytest.approx(m["recall_at_1pct_fpr"])
        for tier in ("a", "b", "c"):
            reached = sum(any(t.tier == tier for t in d.path) for d in decisions) / len(decisions)
            assert r[f"reach.{tier}"][j] == pytest.approx(reached)


def test_tuning_from_cached_scores_reproduces_the_config(replay_router, tmp_path):
    cfg = load_config(replay_router["path"])
    opts = TuneOptions(objective=Objective(kind="max-f1", max_escalation=0.2), seed=3, max_candidates=300, grid=10,
                       progress=False, cache_dir=tmp_path / "cache")
    first = tune(cfg, replay_router["texts"], replay_router["labels"], opts)
    second = tune(cfg, replay_router["texts"], replay_router["labels"], opts)
    assert not any(t.cached for t in first.table.tiers) and all(t.cached for t in second.table.tiers)
    y1, y2 = first.write_yaml(tmp_path / "one" / "router.yaml"), second.write_yaml(tmp_path / "two" / "router.yaml")
    assert y1.read_bytes() == y2.read_bytes()
    assert np.array_equal(first.candidates.lo[first.chosen], second.candidates.lo[second.chosen], equal_nan=True)
    tuned = load_config(y1)  # a valid config, loadable from anywhere (paths absolute)
    assert [t.name for t in tuned.tiers] == ["a", "b", "c"] and tuned.name == "synth-tuned"
    assert Path(tuned.tiers[0].options["path"]).is_absolute()
    # a tier's content changes -> only that tier is re-scored
    (replay_router["dir"] / "b.csv").write_text((replay_router["dir"] / "b.csv").read_text() + "ffffffffffffffff,0.5\n")
    third = tune(cfg, replay_router["texts"], replay_router["labels"], opts)
    assert [t.cached for t in third.table.tiers] == [True, False]


@pytest.mark.slow
def test_tune_cli_end_to_end(tiny_models, tmp_path, monkeypatch, capsys):
    """``safecascade tune`` on a small real run: heuristic -> static -> fast (tiny real models) ->
    safeguard (assumed), into a real MLflow SQLite store; registered and promoted."""
    from safecascade.cli import main
    from safecascade.router.registry import load_registered_config
    monkeypatch.setenv("SAFECASCADE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    cfg = {"version": 1, "name": "tiny", "policies": {"jailbreak": "builtin:jailbreak"},
           "tiers": [{"name": "heuristic", "type": "heuristic", "bands": {"default": [None, 0.98]}},
                     {"name": "static", "type": "static", "options": {"model": str(tiny_models["static"].out_dir)},
                      "bands": {"default": [0.05, 0.95]}},
                     {"name": "fast", "type": "fast", "options": {"model": str(tiny_models["fast"].out_dir), "threads": 1},
                      "bands": {"default": [0.05, 0.95]}},
                     {"name": "safeguard", "type": "safeguard", "options": {"backend": "llama_cpp", "model_path": "stand-in"},
                      "on_error": "fast-verdict"}]}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    out = tmp_path / "tuned" / "router.yaml"
    argv = ["tune", "--config", str(tmp_path / "tiny.yaml"), "--limit", "60", "--objective", "max-f1",
            "--max-escalation", "0.1", "--max-candidates", "400", "--grid", "10", "--out", str(out), "--no-progress", "--promote"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "chosen #" in printed and "Pareto front" in printed
    tuned = load_config(out)
    chosen = next(r for r in csv.DictReader((out.parent / "candidates.csv").open()) if r["chosen"] == "1")
    for tc in tuned.tiers[:-1]:
        band = tc.band_for("jailbreak")
        for value, col in ((band.allow_below, "allow_below"), (band.block_above, "block_above")):
            cell = chosen[f"{tc.name}.jailbreak.{col}"]  # every tuned band has its column
            assert (value is None and cell == "") or value == float(cell)
    assert float(chosen["escalation"]) <= 0.1
    summary = json.loads((out.parent / "tune_summary.json").read_text())
    assert summary["final_tier"]["source"] == "none" and summary["safeguard_assumption"]["precision"] == 0.634

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("safecascade-tuning")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["objective_kind"] == "max-f1" and run.data.params["assume_precision"] == "0.634"
    assert run.data.params["data_hash"] == summary["data"]["data_hash"]
    assert run.data.metrics["f1"] == pytest.approx(float(chosen["f1"]), abs=1e-6)
    assert run.info.artifact_uri.startswith((tmp_path / "artifacts").as_uri())  # next to the DB, not ./mlruns
    assert not (tmp_path / "mlruns").exists()
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"pareto.csv", "pareto.png", "candidates.csv", "router.yaml", "tune_summary.json"} <= names
    mv = client.get_model_version_by_alias("safecascade-router", "champion")
    assert mv.run_id == run.info.run_id
    reg = load_registered_config("models:/safecascade-router@champion")
    assert [t.band_for("jailbreak") for t in reg.tiers[:-1]] == [t.band_for("jailbreak") for t in tuned.tiers[:-1]]


def test_recorded_safeguard_verdicts_and_latency_from_a_replay_file(replay_router, tmp_path):
    """A safeguard final tier is never run: --replay gives its verdicts (and latency_ms) where
    recorded; the other escalated texts fall back to the logged assumption."""
    texts, labels = replay_router["texts"], replay_router["labels"]
    data = yaml.safe_load(replay_router["path"].read_text())
    data["tiers"][-1] = {"name": "safeguard", "type": "safeguard", "options": {"backend": "llama_cpp", "model_path": "stand-in"},
                         "on_error": "fast-verdict"}
    cfg = parse_config(data, base_dir=replay_router["dir"], source="sg.yaml")
    replay = tmp_path / "verdicts.csv"
    with replay.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "jailbreak", "latency_ms"])
        for i in range(0, N, 2):  # every other text has a recorded verdict
            w.writerow([texts[i], "0.9" if labels[i] else "0.1", "1234.5"])
    opts = TuneOptions(objective=Objective(kind="max-f1"), max_candidates=40, grid=6, progress=False, replay=replay,
                       cache_dir=None, costs=CostModel(safeguard_ms=3000.0))
    res = tune(cfg, texts, labels, opts)
    recorded = np.isfinite(res.model.final_score)
    assert recorded.sum() == N // 2 and recorded[:N:2].all() and not recorded[1:N:2].any()
    assert res.table.final.source == "replay:verdicts.csv"
    assert set(np.unique(res.model.latency[-1][:N])) == {1234.5, 3000.0}
    nan = np.full((2, 1), np.nan)
    r = evaluate(res.model, nan, nan)  # everything escalates: half recorded (perfect), half assumed
    assert r["assumed_share"][0] == pytest.approx((N + 1 - N // 2 - 1) / (N + 1))  # the empty text is an input rule
    a = res.model.assumption
    y = np.asarray(labels)
    odd = np.zeros(N + 1, dtype=bool)
    odd[1:N:2] = True
    assert r["tp"][0] == pytest.approx(y[:N:2].sum() + a.tpr * y[odd].sum())
    assert r["fp"][0] == pytest.approx(a.fpr * (1 - y[odd]).sum())


def test_cli_infeasible_constraint_exits_non_zero_naming_the_best_value(tmp_path, monkeypatch, capsys):
    from safecascade.cli import main

    monkeypatch.setenv("SAFECASCADE_HOME", str(tmp_path / "home"))
    cfg = {"version": 1, "name": "h", "policies": {"jailbreak": "builtin:jailbreak"},
           "tiers": [{"name": "heuristic", "type": "heuristic", "bands": {"default": [None, 0.98]}},
                     {"name": "safeguard", "type": "safeguard", "options": {"model_path": "stand-in"}}]}
    (tmp_path / "h.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    rc = main(["tune", "--config", str(tmp_path / "h.yaml"), "--limit", "60", "--objective", "min-cost", "--min-f1", "0.9999",
               "--max-candidates", "50", "--no-mlflow", "--no-progress", "--out", str(tmp_path / "t.yaml")])
    err = capsys.readouterr().err
    assert rc == 2 and "best achievable F1 is" in err
    assert not (tmp_path / "t.yaml").exists()


def test_objective_arguments():
    import argparse

    from safecascade.training.tuning.tune_cli import add_arguments, objective_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    o = objective_from_args(p.parse_args(["--objective", "target-escalation", "0.05"]))
    assert (o.kind, o.target) == ("target-escalation", 0.05)
    o = objective_from_args(p.parse_args(["--objective", "max-f1", "--max-escalation", "0.03"]))
    assert (o.kind, o.max_escalation) == ("max-f1", 0.03)
    o = objective_from_args(p.parse_args(["--objective", "min-cost", "--min-f1", "0.92"]))
    assert (o.kind, o.min_f1) == ("min-cost", 0.92)
    with pytest.raises(ValueError, match="min-f1"):
        objective_from_args(p.parse_args(["--objective", "min-cost"]))
    with pytest.raises(ValueError, match="not a number"):
        objective_from_args(p.parse_args(["--objective", "target-escalation", "lots"]))
