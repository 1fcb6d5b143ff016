"""MLflow tracking of fast/static tier training runs (training layer).

Each run logs the :class:`~safecascade.training.train_config.TrainConfig` as params, val/test
metrics per policy, ``card.json``, the ONNX file, a PR-curve PNG, and the whole artifact
directory under the run's ``model/`` artifact path, which is registered as a model version of
``safecascade-fast`` / ``safecascade-static``. ``models:/safecascade-fast/3`` or
``models:/safecascade-fast@champion`` then loads that directory for the tier
(:func:`safecascade.mlflow_store.download_model_dir`). The store itself, URIs and aliases:
:mod:`safecascade.mlflow_store`.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

from safecascade.mlflow_store import MODEL_NAMES, configured_mlflow, experiment_id

log = logging.getLogger(__name__)

EXPERIMENTS = {"fast": "safecascade-fast-tier", "static": "safecascade-static-tier"}


def flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested metrics -> ``{"a.b.c": value}`` with MLflow-safe keys; non-numeric values and bools dropped."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = re.sub(r"[^A-Za-z0-9_\-./ ]", "_", f"{prefix}{k}")
        if isinstance(v, Mapping):
            out.update(flat_metrics(v, f"{key}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def pr_curve_png(labels: Mapping[str, list[int]], scores: Mapping[str, list[float]], path: str | Path, title: str = "") -> Path:
    """Precision-recall curve per policy (matplotlib, Agg backend)."""
    import matplotlib  # heavy, optional

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy, optional
    from sklearn.metrics import average_precision_score, precision_recall_curve  # heavy, optional

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for pol, s in scores.items():
        y = labels[pol]
        if len(set(y)) < 2:
            continue
        p, r, _ = precision_recall_curve(y, s)
        ax.plot(r, p, label=f"{pol} (AP {average_precision_score(y, s):.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title or "precision-recall (test)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def log_training_run(result: Any, *, register: bool = True, run_name: str | None = None) -> dict[str, Any]:
    """Log a :class:`TrainResult` to MLflow; register its artifact dir. Returns run id / model URI."""
    mlflow = configured_mlflow()
    from mlflow.tracking import MlflowClient  # heavy, optional

    kind = result.card.get("kind", result.config.kind)
    exp_id = experiment_id(mlflow, EXPERIMENTS[kind])
    out = Path(result.out_dir)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name or f"{kind}-{result.config.head}") as run:
        params = {k: (str(v) if not isinstance(v, (int, float, str)) or isinstance(v, bool) else v) for k, v in result.config.to_dict().items()}
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics(flat_metrics(result.metrics))
        mlflow.log_metric("train_seconds", float(result.seconds))
        if "int8" in result.card:  # the drop the gate decided on (a train-only twin's for a train+val refit)
            gate = result.card["int8"]
            mlflow.log_metrics({"int8_val_f1_drop": float(gate.get("twin", gate)["f1_drop"]), "int8_offered": float(gate["offered"])})
        mlflow.log_artifact(str(out / "card.json"))
        if (out / "model.onnx").is_file():
            mlflow.log_artifact(str(out / "model.onnx"))
        if result.test_scores:
            with tempfile.TemporaryDirectory() as tmp:
                png = pr_curve_png(result.test_labels, result.test_scores, Path(tmp) / "pr_curve.png", title=f"{kind} tier, test split")
                mlflow.log_artifact(str(png))
        mlflow.log_artifacts(str(out), artifact_path="model")
        mlflow.set_tags({"safecascade.kind": kind, "safecascade.data_hash": result.card.get("training_data", {}).get("hash", "")})
        run_id = run.info.run_id
        source = f"{run.info.artifact_uri.rstrip('/')}/model"
    info: dict[str, Any] = {"run_id": run_id, "artifact_uri": source}
    if register:
        client = MlflowClient()
        name = MODEL_NAMES[kind]
        try:
            client.get_registered_model(name)
        except Exception:  # RESOURCE_DOES_NOT_EXIST
            client.create_registered_model(name, description=f"safecascade {kind} tier (artifact dir: model.onnx/static.npy, tokenizer.json, card.json)")
        mv = client.create_model_version(name, source=source, run_id=run_id)
        info.update(model_name=name, version=int(mv.version), model_uri=f"models:/{name}/{mv.version}")
        log.info("registered %s version %s", name, mv.version)
    return info
