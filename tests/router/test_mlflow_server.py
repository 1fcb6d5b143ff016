"""Against a real ``mlflow server`` on loopback (SQLite backend, proxied artifact store):
``safecascade tune`` -> registered + promoted router -> ``Router.load("models:/...@champion")``
and the pyfunc answer like the tuned YAML's router."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("mlflow")

from safecascade.router.cascade import Router  # noqa: E402
from safecascade.router.config import load_config  # noqa: E402
from safecascade.hashing import text_hash  # noqa: E402
from tests.router.registry_helpers import (  # noqa: E402
    Server,
    assert_same,
    bench_texts,
    decision_rows,
    frame_rows,
    free_port,
    python_cmd,
)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    env.pop("MLFLOW_TRACKING_URI", None)
    server = Server(python_cmd("-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"),
                    env=env, log_path=root / "server.log")
    try:
        server.wait_ready(f"http://127.0.0.1:{port}/health")
        yield {"uri": f"http://127.0.0.1:{port}", "root": root}
    finally:
        server.stop()


def _write_tiny_router(dir_: Path, tiny_models: dict) -> Path:
    """heuristic -> static (tiny real model) -> replay (last tier: recorded verdicts for every val text)."""
    from safecascade.training.datasets import load_benchmark

    dir_.mkdir(parents=True, exist_ok=True)
    with (dir_ / "verdicts.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text_hash", "jailbreak"])
        for ex in load_benchmark("jailbreak", "val"):  # a fixed, label-independent stand-in verdict
            t = ex.text.lower()
            w.writerow([text_hash(ex.text), 0.85 if ("ignore" in t or "pretend" in t or "roleplay" in t) else 0.15])
    cfg = {"version": 1, "name": "server-tiny", "policies": {"jailbreak": "builtin:jailbreak"},
           "tiers": [{"name": "heuristic", "type": "heuristic", "bands": {"default": [None, 0.98]}},
                     {"name": "static", "type": "static", "options": {"model": str(tiny_models["static"].out_dir)},
                      "bands": {"default": [0.05, 0.95]}},
                     {"name": "safeguard", "type": "replay", "options": {"path": "verdicts.csv", "missing": "allow"},
                      "threshold": 0.5}]}
    path = dir_ / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.slow
def test_tune_register_load_round_trip_on_a_real_server(mlflow_server, tiny_models, tmp_path, monkeypatch, capsys):
    import mlflow
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from safecascade.cli import main

    monkeypatch.setenv("SAFECASCADE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server["uri"])
    cfg_path = _write_tiny_router(tmp_path / "src", tiny_models)
    out = tmp_path / "tuned" / "router.yaml"
    argv = ["tune", "--config", str(cfg_path), "--limit", "80", "--objective", "max-f1", "--max-escalation", "0.5",
            "--max-candidates", "200", "--grid", "8", "--out", str(out), "--no-progress", "--promote"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "registered:" in printed, printed[-2000:]

    client = MlflowClient(tracking_uri=mlflow_server["uri"], registry_uri=mlflow_server["uri"])
    mv = client.get_model_version_by_alias("safecascade-router", "champion")
    run = client.get_run(mv.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "safecascade-tuning"
    assert run.data.tags["safecascade.registered_model"] == f"models:/safecascade-router/{mv.version}"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts go through the server's proxy"
    assert any(Path(mlflow_server["root"], "artifacts").rglob("router.yaml")), "the packaged router landed in the server's store"

    tuned = load_config(out)
    texts = bench_texts(60, split="val")
    local = Router.load(out)
    want = decision_rows(local.classify_batch(texts))
    local.close()
    registered = Router.load("models:/safecascade-router@champion")
    try:
        assert [t.band_for("jailbreak") for t in registered.config.tiers] == [t.band_for("jailbreak") for t in tuned.tiers]
        assert_same(decision_rows(registered.classify_batch(texts)), want)
        assert str(tmp_path / "home") in registered.config.base_dir
    finally:
        registered.close()

    mlflow.set_tracking_uri(mlflow_server["uri"])
    mlflow.set_registry_uri(mlflow_server["uri"])
    model = mlflow.pyfunc.load_model(f"models:/safecascade-router/{mv.version}")
    assert_same(frame_rows(model.predict(pd.DataFrame({"text": texts})).to_dict("records")), want)
