"""Routers in the MLflow registry, for real: a local SQLite store in tmp, the tiny ONNX / static
models, the pyfunc loaded by MLflow, and `mlflow models serve` answering over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("mlflow")

from safecascade.router.cascade import Router  # noqa: E402
from safecascade.router.config import ConfigError, load_config  # noqa: E402
from safecascade.router.registry import (  # noqa: E402
    DEFAULT_MODEL_NAME,
    EXPERIMENT,
    load_registered_config,
    package_router,
    register_router,
    set_champion,
)
from tests.router.registry_helpers import (  # noqa: E402
    Server,
    assert_same,
    bench_texts,
    decision_rows,
    frame_rows,
    free_port,
    python_cmd,
    write_router,
)

CHAMPION_URI = f"models:/{DEFAULT_MODEL_NAME}@champion"


@pytest.fixture(scope="module")
def registered(tiny_models, tmp_path_factory):
    """One router registered (and promoted) in a fresh local store; its source files then deleted."""
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAFECASCADE_HOME", str(root / "home"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        texts = bench_texts(45)
        cfg_path = write_router(root / "src", tiny_models, replay_texts=texts[5:25])
        original = Router.load(cfg_path)
        want = decision_rows(original.classify_batch(texts))
        source_sha = original.config.sha
        policy_hashes = dict(original.policy_hashes)
        original.close()
        info = register_router(cfg_path, promote=True, tags={"origin": "test"})
        # Everything the config referenced by relative path is gone: the package must carry it.
        shutil.rmtree(root / "src")
        yield {"info": info, "texts": texts, "want": want, "source_sha": source_sha,
               "policy_hashes": policy_hashes, "home": root / "home", "root": root}


def test_register_then_load_by_alias_and_version(registered):
    info = registered["info"]
    assert info["model_name"] == DEFAULT_MODEL_NAME and info["version"] == 1
    assert info["model_uri"] == f"models:/{DEFAULT_MODEL_NAME}/1" and len(info["run_id"]) == 32
    for uri in (CHAMPION_URI, info["model_uri"]):
        router = Router.load(uri)
        try:
            assert_same(decision_rows(router.classify_batch(registered["texts"])), registered["want"])
            assert router.policy_hashes == registered["policy_hashes"]
        finally:
            router.close()
    tiers = [r[2] for r in registered["want"]]
    assert {"heuristic", "static", "input"} <= set(tiers), f"the texts should exercise several tiers: {set(tiers)}"

    cfg = load_registered_config(CHAMPION_URI)
    base = Path(cfg.base_dir)
    assert load_registered_config(info["model_uri"]).base_dir == cfg.base_dir, "one cached download per version"
    assert str(base).startswith(str(registered["home"] / "mlflow" / "routers")), base
    packaged = yaml.safe_load((base / "router.yaml").read_text())
    assert packaged["policies"] == {"jailbreak": "policies/jailbreak.md"}
    opts = {t["name"]: t["options"] for t in packaged["tiers"]}
    assert opts["static"]["model"] == "tiers/static/model" and opts["fast"]["model"] == "tiers/fast/model"
    assert opts["heuristic"]["rules"] == "tiers/heuristic/rules.yaml" and opts["safeguard"]["path"] == "tiers/safeguard/verdicts.csv"
    for rel in ("tiers/fast/model/model.onnx", "tiers/static/model/static.npy", "tiers/heuristic/rules.yaml"):
        assert (base / rel).is_file(), rel
    manifest = json.loads((base / "package.json").read_text())
    assert manifest["source_config_sha"] == registered["source_sha"]
    assert manifest["policy_hashes"] == registered["policy_hashes"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    mv = client.get_model_version_by_alias(DEFAULT_MODEL_NAME, "champion")
    assert str(mv.version) == "1" and mv.tags["origin"] == "test"
    assert mv.tags["safecascade.config_sha"] == registered["source_sha"]
    run = client.get_run(info["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    assert str(registered["home"]) in run.info.artifact_uri, "local store artifacts stay under the cache dir"


def test_pyfunc_predict_matches_classify_batch(registered):
    import mlflow.pyfunc
    import pandas as pd

    from safecascade.router.pyfunc_model import output_columns

    model = mlflow.pyfunc.load_model(CHAMPION_URI)
    texts = registered["texts"]
    df = model.predict(pd.DataFrame({"text": texts}))
    assert list(df.columns) == [c for c, _ in output_columns(["jailbreak"])]
    assert_same(frame_rows(df.to_dict("records")), registered["want"])
    # A list of strings and a Series are accepted too, with the same answers.
    assert_same(frame_rows(model.predict(texts[:10]).to_dict("records")), registered["want"][:10])
    assert_same(frame_rows(model.predict(pd.Series(texts[10:20])).to_dict("records")), registered["want"][10:20])


def test_bad_uris_and_versions(registered):
    with pytest.raises(ValueError, match="no registered model 'no-such-router'"):
        Router.load("models:/no-such-router@champion")
    with pytest.raises(ValueError, match=r"no alias 'staging' \(aliases: champion\)"):
        Router.load(f"models:/{DEFAULT_MODEL_NAME}@staging")
    with pytest.raises(ValueError, match=r"no version 99 \(versions: \[1\]\)"):
        Router.load(f"models:/{DEFAULT_MODEL_NAME}/99")
    with pytest.raises(ValueError, match="bad model URI"):
        Router.load(f"models:/{DEFAULT_MODEL_NAME}")
    with pytest.raises(ValueError, match="no version 7"):
        set_champion(DEFAULT_MODEL_NAME, 7)


def test_second_version_into_given_run_and_promotion(registered, tiny_models, tmp_path):
    import mlflow

    from safecascade.mlflow_store import configured_mlflow

    cfg_path = write_router(tmp_path / "v2", tiny_models, fast=False)
    configured_mlflow()
    with mlflow.start_run(run_name="tuning-job") as run:  # e.g. the tune command's parent run, still active
        info = register_router(cfg_path, run_id=run.info.run_id)
    assert info["version"] == 2 and info["run_id"] == run.info.run_id
    assert mlflow.get_run(run.info.run_id).data.tags["safecascade.config_name"] == "registry-test"
    assert load_registered_config(CHAMPION_URI).tiers[-2].name == "fast", "champion stays on version 1"
    set_champion(DEFAULT_MODEL_NAME, 2)
    try:
        cfg = load_registered_config(CHAMPION_URI)
        assert [t.name for t in cfg.tiers] == ["heuristic", "static", "safeguard"] and "-v2-" in cfg.base_dir
    finally:
        set_champion(DEFAULT_MODEL_NAME, 1)


def test_package_router_rewrites_paths_and_keeps_safeguard_reference(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("SAFECASCADE_HOME", str(tmp_path / "home"))
    cfg_path = write_router(tmp_path / "src", tiny_models, fast=False)
    data = yaml.safe_load(cfg_path.read_text())
    data["tiers"][-1] = {"name": "safeguard", "type": "safeguard", "options": {"backend": "llama_cpp", "model_path": "gguf/judge.gguf"}}
    data["tiers"].insert(2, {"name": "remote", "type": "safeguard", "bands": {"default": [0.1, 0.9]},
                             "options": {"backend": "openai", "base_url": "http://judge:8080/v1", "model": "gpt-oss-safeguard-20b"}})
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    pkg = package_router(cfg_path, tmp_path / "pkg")
    opts = {t.name: dict(t.options) for t in pkg.config.tiers}
    assert opts["safeguard"]["model_path"] == str((tmp_path / "src" / "gguf" / "judge.gguf").resolve())
    assert opts["remote"]["base_url"] == "http://judge:8080/v1"
    assert not list((tmp_path / "pkg").rglob("*.gguf"))
    assert Path(pkg.config.base_dir) == tmp_path / "pkg" and pkg.source_sha == load_config(cfg_path).sha
    assert pkg.config.resolve_policies()["jailbreak"].sha == load_config(cfg_path).resolve_policies()["jailbreak"].sha
    with pytest.raises(ValueError, match="not empty"):
        package_router(cfg_path, tmp_path / "pkg")
    (tmp_path / "src" / "verdicts.csv").unlink()
    data["tiers"][-1] = {"name": "last", "type": "replay", "options": {"path": "verdicts.csv"}}
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match="replay verdict file not found"):
        package_router(cfg_path, tmp_path / "pkg2")


@pytest.mark.slow
def test_mlflow_models_serve_answers_like_classify_batch(registered, tmp_path):
    import httpx

    from safecascade.mlflow_store import default_tracking_uri

    # The module fixture points SAFECASCADE_HOME at its store; the server resolves the URI there too.
    # (mlflow models serve execs `uvicorn`: the venv's bin dir must be on PATH, as in an activated venv.)
    env = dict(os.environ, MLFLOW_TRACKING_URI=default_tracking_uri(),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    port = free_port()
    server = Server(python_cmd("-m", "mlflow", "models", "serve", "-m", CHAMPION_URI, "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port), "-w", "1"), env=env, log_path=tmp_path / "serve.log")
    try:
        server.wait_ready(f"http://127.0.0.1:{port}/ping")
        texts = registered["texts"]
        r = httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=120,
                       json={"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}})
        assert r.status_code == 200, r.text[:1000]
        assert_same(frame_rows(r.json()["predictions"]), registered["want"])
        r2 = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": texts[:8]}, timeout=120)
        assert r2.status_code == 200, r2.text[:1000]
        assert_same(frame_rows(r2.json()["predictions"]), registered["want"][:8])
        bad = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"nonsense": 1}, timeout=60)
        assert bad.status_code == 400
    finally:
        code = server.stop()
    assert code is not None, "the server process has exited"

