"""MLflow tracking for fast/static tier training runs, and loading tiers back by ``models:/`` URI.

Default store: ``sqlite:///<cache_dir>/mlflow/mlflow.db`` with artifacts under
``<cache_dir>/mlflow/artifacts``; ``MLFLOW_TRACKING_URI`` overrides it (a server, another DB).

Each run logs the :class:`~safecascade.training.fast_train.TrainConfig` as params, val/test
metrics per policy, ``card.json``, the ONNX file, a PR-curve PNG, and the whole artifact
directory under the run's ``model/`` artifact path, which is registered as a model version of
``safecascade-fast`` / ``safecascade-static``. ``models:/safecascade-fast/3`` or
``models:/safecascade-fast@champion`` downloads that directory (cached) for the tier.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

MODEL_NAMES = {"fast": "safecascade-fast", "static": "safecascade-static"}
EXPERIMENTS = {"fast": "safecascade-fast-tier", "static": "safecascade-static-tier"}


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the local SQLite store under the cache dir."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    from safecascade.paths import artifact_dir

    return f"sqlite:///{artifact_dir('mlflow') / 'mlflow.db'}"


def default_artifact_root() -> str:
    from safecascade.paths import artifact_dir

    return artifact_dir("mlflow", "artifacts").as_uri()


def _mlflow() -> Any:
    import logging as _logging

    import mlflow

    for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        _logging.getLogger(noisy).setLevel(_logging.WARNING)
    mlflow.set_tracking_uri(default_tracking_uri())
    mlflow.set_registry_uri(default_tracking_uri())
    return mlflow


def experiment_id(mlflow: Any, name: str) -> str:
    """The id of experiment ``name``, created on first use.

    With a local SQLite store its artifacts go next to the database (``<db dir>/artifacts``),
    never into ``./mlruns`` of the working directory; a server chooses its own artifact root.
    (The tracking URI is read back from MLflow: ``mlflow.set_tracking_uri`` exports
    ``MLFLOW_TRACKING_URI``, so the environment cannot tell the default store from a chosen one.)
    """
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = str(mlflow.get_tracking_uri())
    loc = None
    if uri.startswith("sqlite:///"):
        loc = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "artifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=loc)


_experiment_id = experiment_id  # the name older modules import


def _flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = re.sub(r"[^A-Za-z0-9_\-./ ]", "_", f"{prefix}{k}")
        if isinstance(v, Mapping):
            out.update(_flat_metrics(v, f"{key}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def pr_curve_png(labels: Mapping[str, list[int]], scores: Mapping[str, list[float]], path: str | Path, title: str = "") -> Path:
    """Precision-recall curve per policy (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve

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
    mlflow = _mlflow()
    from mlflow.tracking import MlflowClient

    kind = result.card.get("kind", result.config.kind)
    exp_id = _experiment_id(mlflow, EXPERIMENTS[kind])
    out = Path(result.out_dir)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name or f"{kind}-{result.config.head}") as run:
        params = {k: (str(v) if not isinstance(v, (int, float, str)) or isinstance(v, bool) else v) for k, v in result.config.to_dict().items()}
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics(_flat_metrics(result.metrics))
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


def set_alias(name: str, alias: str, version: int) -> None:
    """Point ``models:/name@alias`` at a version (e.g. ``champion``)."""
    _mlflow()
    from mlflow.tracking import MlflowClient

    MlflowClient().set_registered_model_alias(name, alias, str(version))


def download_model_dir(uri: str) -> Path:
    """Resolve ``models:/name/version`` or ``models:/name@alias`` to a local artifact directory.

    Downloads are cached under ``<cache_dir>/mlflow/downloads/<name>-v<version>-<store hash>``.
    """
    m = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([A-Za-z0-9_\-]+))", uri.strip())
    if not m:
        raise ValueError(f"bad model URI {uri!r}: expected models:/<name>/<version> or models:/<name>@<alias>")
    name, version, alias = m.groups()
    try:
        _mlflow()
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except ImportError as exc:
        raise ValueError(f"loading {uri} needs mlflow (pip install 'safecascade[mlflow]')") from exc
    except Exception as exc:
        raise ValueError(f"cannot resolve {uri} in MLflow registry {default_tracking_uri()}: {exc}") from exc
    from safecascade.paths import artifact_dir

    store = hashlib.sha256(default_tracking_uri().encode()).hexdigest()[:8]  # same name/version in two stores differ
    dest = artifact_dir("mlflow", "downloads") / f"{name}-v{mv.version}-{store}"
    if (dest / "card.json").is_file():
        return dest
    import mlflow

    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=dest.parent))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp)))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(local, dest)
    except Exception as exc:
        raise ValueError(f"cannot download {uri} (source {mv.source}): {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
