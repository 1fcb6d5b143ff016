"""MLflow store access (core layer): the tracking store, ``models:/`` URIs and registered model downloads.

Default store: ``sqlite:///<cache_dir>/mlflow/mlflow.db`` with artifacts under
``<cache_dir>/mlflow/artifacts``; ``MLFLOW_TRACKING_URI`` overrides it (a server, another DB).

This module holds what serving and training share: the configured ``mlflow`` module
(:func:`configured_mlflow`), experiment ids, the one ``models:/`` parser (:func:`parse_model_uri`),
the one model-version resolver (:func:`resolve_version`), aliases, and the cached downloads of a
registered tier artifact (``models:/safecascade-fast/3`` for ``options.model``,
:func:`download_model_dir`) and of a registered router (:func:`download_router`,
:func:`registered_router_config`). Logging a training run lives in
:mod:`safecascade.training.mlflow_runs`; packaging and registering a router in
:mod:`safecascade.router.registry`.

mlflow is a heavy, optional dependency (the ``mlflow`` extra): it is imported inside the functions
that need it, so importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from safecascade.paths import artifact_dir

log = logging.getLogger(__name__)

MODEL_NAMES = {"fast": "safecascade-fast", "static": "safecascade-static"}  # registered tier models
ROUTER_ARTIFACT_KEY = "router"  # the pyfunc artifact of a registered router: its packaged directory
ROUTER_CONFIG_NAME = "router.yaml"  # the packaged config inside that directory
_URI = re.compile(r"models:/([^/@]+)(?:/(\d+)|@([A-Za-z0-9_\-]+))/?")


class ModelNotFoundError(ValueError):
    """A ``models:/`` URI names a registered model, version or alias that does not exist."""


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the local SQLite store under the cache dir."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{artifact_dir('mlflow') / 'mlflow.db'}"


def configured_mlflow() -> Any:
    """The ``mlflow`` module with tracking and registry URI set to :func:`default_tracking_uri`
    (and its noisy loggers quietened). Raises ``ImportError`` when mlflow is not installed."""
    import mlflow  # heavy, optional

    for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(default_tracking_uri())
    mlflow.set_registry_uri(default_tracking_uri())
    return mlflow


def registry_client() -> Any:
    """An ``MlflowClient`` on the configured store (``ImportError`` without mlflow)."""
    configured_mlflow()
    from mlflow.tracking import MlflowClient  # heavy, optional

    return MlflowClient()


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


def safe_name(name: str) -> str:
    """``name`` with every character outside ``[A-Za-z0-9_.-]`` replaced by ``_`` (a file name)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "_"


# --------------------------------------------------------------------------- models:/ URIs
def parse_model_uri(uri: str) -> tuple[str, int | None, str | None]:
    """``models:/name/3`` -> ``(name, 3, None)``; ``models:/name@champion`` -> ``(name, None, "champion")``."""
    m = _URI.fullmatch(uri.strip())
    if not m:
        raise ValueError(f"bad model URI {uri!r}: expected models:/<name>/<version> or models:/<name>@<alias>")
    name, version, alias = m.groups()
    return name, (int(version) if version else None), alias


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc)


def resolve_version(name: str, *, version: int | str | None = None, alias: str | None = None) -> Any:
    """The ``ModelVersion`` of registered model ``name`` at ``version`` or ``alias``.

    Raises :class:`ModelNotFoundError` naming what exists when the model, version or alias does
    not, ``ValueError`` when the registry cannot be read, ``ImportError`` without mlflow.
    """
    client = registry_client()
    reg = default_tracking_uri()
    uri = f"models:/{name}@{alias}" if alias is not None else f"models:/{name}/{version}"
    try:
        rm = client.get_registered_model(name)
    except Exception as exc:
        if _not_found(exc):
            raise ModelNotFoundError(f"cannot resolve {uri}: no registered model {name!r} in MLflow registry {reg}") from exc
        raise ValueError(f"cannot resolve {uri} in MLflow registry {reg}: {exc}") from exc
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, str(version))
    except Exception as exc:
        if not _not_found(exc):
            raise ValueError(f"cannot resolve {uri} in MLflow registry {reg}: {exc}") from exc
        if alias is not None:
            known = ", ".join(sorted(getattr(rm, "aliases", {}) or {})) or "none"
            raise ModelNotFoundError(f"cannot resolve {uri}: model {name!r} has no alias {alias!r} (aliases: {known}) in {reg}") from exc
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        raise ModelNotFoundError(f"cannot resolve {uri}: model {name!r} has no version {version} "
                                 f"(versions: {versions or 'none'}) in {reg}") from exc


def resolve_model_uri(uri: str) -> tuple[str, Any]:
    """``models:/name/3`` or ``models:/name@alias`` -> ``(name, ModelVersion)`` (see :func:`resolve_version`)."""
    name, version, alias = parse_model_uri(uri)
    return name, resolve_version(name, version=version, alias=alias)


def set_alias(name: str, alias: str, version: int | str) -> None:
    """Point ``models:/name@alias`` at a version (e.g. ``champion``)."""
    registry_client().set_registered_model_alias(name, alias, str(version))


# --------------------------------------------------------------------------- downloads
def download_model_dir(uri: str) -> Path:
    """Resolve ``models:/name/version`` or ``models:/name@alias`` to a local tier artifact directory.

    Downloads are cached under ``<cache_dir>/mlflow/downloads/<name>-v<version>-<store hash>``.
    """
    try:
        name, mv = resolve_model_uri(uri)
    except ImportError as exc:
        raise ValueError(f"loading {uri} needs mlflow (pip install 'safecascade[mlflow]')") from exc
    store = hashlib.sha256(default_tracking_uri().encode()).hexdigest()[:8]  # same name/version in two stores differ
    dest = artifact_dir("mlflow", "downloads") / f"{name}-v{mv.version}-{store}"
    if (dest / "card.json").is_file():
        return dest
    import mlflow  # heavy, optional

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


def download_router(uri: str) -> Path:
    """Download (cached) the registered router behind ``uri`` and return its packaged directory.

    Cache: ``<cache_dir>/mlflow/routers/<name>-v<version>-<key>``, where ``key`` hashes the
    registry URI and the version's source, so equal version numbers in different registries
    never collide. Aliases are resolved on every call (they move); versions are immutable.
    """
    try:
        name, mv = resolve_model_uri(uri)
    except ImportError as exc:
        raise ValueError("the router registry needs mlflow: pip install 'safecascade[mlflow]'") from exc
    key = hashlib.sha256(f"{default_tracking_uri()}|{mv.source}|{mv.run_id}".encode()).hexdigest()[:10]
    dest = artifact_dir("mlflow", "routers") / f"{safe_name(name)}-v{mv.version}-{key}"
    found = _router_dir(dest)
    if found is not None:
        return found
    import mlflow  # heavy, optional

    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=dest.parent))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(tmp)))
        if _router_dir(local) is None:
            raise ValueError(f"{uri} (version {mv.version}) is not a safecascade router model: "
                             f"no {ROUTER_ARTIFACT_KEY}/{ROUTER_CONFIG_NAME} artifact")
        if dest.exists() and _router_dir(dest) is None:  # a broken earlier download
            shutil.rmtree(dest, ignore_errors=True)
        try:
            os.replace(local, dest)
        except OSError:  # another process got there first
            if _router_dir(dest) is None:
                raise
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot download {uri} (version {mv.version}, source {mv.source}): {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = _router_dir(dest)
    assert found is not None
    log.info("downloaded %s (version %s) to %s", uri, mv.version, dest)
    return found


def _router_dir(model_dir: Path) -> Path | None:
    """The packaged router directory inside a downloaded pyfunc model (from its MLmodel file)."""
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        return None
    try:
        meta = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
        rel = meta["flavors"]["python_function"]["artifacts"][ROUTER_ARTIFACT_KEY]["path"]
    except (KeyError, TypeError, yaml.YAMLError):
        return None
    d = model_dir / rel
    return d if (d / ROUTER_CONFIG_NAME).is_file() else None


def registered_router_config(uri: str) -> Path:
    """The packaged ``router.yaml`` of a registered router (``models:/name/3`` or ``models:/name@alias``),
    inside its downloaded, cached artifact directory (load it with ``load_config``)."""
    return download_router(uri) / ROUTER_CONFIG_NAME
