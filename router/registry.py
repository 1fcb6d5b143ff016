"""Routers in the MLflow model registry: package, register, promote, and load back by URI.

A router config is registered as an MLflow ``python_function`` model (``safecascade-router`` by
default) whose ``router`` artifact is a self-contained directory::

    router.yaml          # the config, every path rewritten to point inside this directory
    package.json         # provenance: source config + its sha, tier model cards, safecascade version
    policies/<name>.md   # every policy the config uses (builtin ones too, so the text is pinned)
    tiers/<tier>/...     # heuristic rules, replay verdicts, ONNX fast / static model directories

So a router loaded from the registry on another machine has everything except the safeguard
model: a GGUF is too large to copy into every model version and runs in process through
llama.cpp, so the packaged config keeps the safeguard tier's ``model_path`` (``stand-in`` or an
absolute path, which must exist on the loading machine) or its ``base_url`` endpoint unchanged.

::

    from safecascade.router.registry import register_router
    info = register_router("router.yaml", promote=True)       # {"model_name", "version", "model_uri", "run_id"}
    Router.load("models:/safecascade-router@champion")        # or models:/safecascade-router/3

Tracking and registry URI: ``$MLFLOW_TRACKING_URI`` or the local SQLite store under the cache
dir. Resolving a ``models:/`` URI and downloading a registered router (cached under
``<cache_dir>/mlflow/routers``) is store access: :mod:`safecascade.mlflow_store`, which
``Router.load("models:/...")`` uses directly.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import yaml

from safecascade.mlflow_store import (
    ROUTER_ARTIFACT_KEY,
    ROUTER_CONFIG_NAME,
    configured_mlflow,
    experiment_id,
    registered_router_config,
    resolve_version,
    safe_name,
    set_alias,
)
from safecascade.router.config import ConfigError, RouterConfig, load_config, parse_config
from safecascade.tiers.fast import resolve_model_dir
from safecascade.tiers.heuristic_rules import default_rules_path

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "safecascade-router"
EXPERIMENT = "safecascade-routers"
CHAMPION = "champion"
MANIFEST_NAME = "package.json"


# --------------------------------------------------------------------------- packaging
@dataclass(frozen=True, kw_only=True)
class PackagedRouter:
    """A router config copied with everything it references into ``root``."""

    root: Path
    config: RouterConfig  # the rewritten config (base_dir = root)
    source_sha: str  # sha of the config that was packaged
    manifest: Mapping[str, Any]


def _as_config(config: RouterConfig | str | Path) -> RouterConfig:
    if isinstance(config, RouterConfig):
        return config
    if isinstance(config, str) and config.startswith("models:/"):
        return load_registered_config(config)
    return load_config(config)


def package_router(config: RouterConfig | str | Path, dest: str | Path) -> PackagedRouter:
    """Copy ``config`` and every file it references into ``dest`` (created; must be empty).

    Policies go to ``policies/``, and per tier: heuristic rules (the shipped rules file when the
    config names none), replay verdict CSVs, and the fast / static model directories resolved
    from ``options.model`` (``default``, a path, or a ``models:/`` URI) go to ``tiers/<tier>/``.
    The written ``router.yaml`` refers to them by relative paths. A llama.cpp safeguard tier's
    relative ``model_path`` is made absolute (the GGUF is not copied; see the module doc).
    Options of other tier types are kept as they are. Raises :class:`ConfigError` / ``ValueError`` when a referenced file is missing.
    """
    cfg = _as_config(config)
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise ValueError(f"package destination {root} is not empty")
    base = Path(cfg.base_dir)
    data = cfg.to_dict()

    policies = cfg.resolve_policies()  # validates every policy file
    (root / "policies").mkdir()
    data["policies"] = {}
    for pname, pol in policies.items():
        rel = f"policies/{safe_name(pname)}.md"
        (root / rel).write_text(pol.text, encoding="utf-8")
        data["policies"][pname] = rel

    copied: dict[Path, str] = {}  # resolved source dir -> packaged relative path (shared models copied once)
    tiers_manifest: dict[str, Any] = {}
    for i, tc in enumerate(cfg.tiers):
        opts = dict(tc.options)
        tdir = f"tiers/{safe_name(tc.name)}"
        entry: dict[str, Any] = {"type": tc.type}
        if tc.type in ("fast", "static"):
            src = resolve_model_dir(opts.get("model", "default"), base_dir=base, kind=tc.type, tier_name=tc.name).resolve()
            if not (src / "card.json").is_file():
                raise ValueError(f"tier {tc.name!r}: model directory {src} has no card.json")
            if src not in copied:
                rel = f"{tdir}/model"
                shutil.copytree(src, root / rel)
                copied[src] = rel
            opts["model"] = copied[src]
            card = json.loads((src / "card.json").read_text(encoding="utf-8"))
            entry.update(model_source=str(tc.options.get("model", "default")),
                         model_dir=str(src), policies=card.get("policies"), kind=card.get("kind"),
                         encoder=card.get("encoder"))
        elif tc.type == "heuristic":
            rules = opts.get("rules")
            src = default_rules_path() if rules is None else (Path(rules) if Path(rules).is_absolute() else base / str(rules))
            opts["rules"] = _vendor_file(Path(src), root, f"{tdir}/rules.yaml", f"tiers[{i}].options.rules", "heuristic rules")
            entry.update(rules_source=str(src))
        elif tc.type == "replay":
            path = opts.get("path")
            if path:
                src = Path(path) if Path(path).is_absolute() else base / str(path)
                opts["path"] = _vendor_file(src, root, f"{tdir}/{safe_name(src.name)}", f"tiers[{i}].options.path", "replay verdict")
                entry.update(verdicts_source=str(src))
        elif tc.type == "safeguard":
            backend = opts.get("backend", "llama_cpp")
            entry["backend"] = backend
            mp = opts.get("model_path")
            if backend == "llama_cpp" and mp not in (None, "", "stand-in"):
                p = Path(os.path.expanduser(str(mp)))
                if not p.is_absolute():
                    p = (base / p).resolve()
                    log.warning("tier %s: the GGUF is not packaged; model_path %r recorded as the absolute path %s, "
                                "which must exist where the router is loaded", tc.name, mp, p)
                opts["model_path"] = str(p)
            entry["not_packaged"] = ("the safeguard model (GGUF / endpoint) is referenced, not copied: "
                                     f"model_path={opts.get('model_path', 'stand-in')!r} base_url={opts.get('base_url')!r}")
        data["tiers"][i]["options"] = opts
        tiers_manifest[tc.name] = entry

    text = yaml.safe_dump(data, sort_keys=False)
    (root / ROUTER_CONFIG_NAME).write_text(text, encoding="utf-8")
    packaged = parse_config(yaml.safe_load(text), base_dir=root, source=str(root / ROUTER_CONFIG_NAME))
    manifest = {
        "format": 1,
        "config_name": cfg.name,
        "source_config_sha": cfg.sha,
        "packaged_config_sha": packaged.sha,
        "source_base_dir": str(base),
        "policy_hashes": {n: p.sha for n, p in policies.items()},
        "tiers": tiers_manifest,
        "safecascade_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    return PackagedRouter(root=root, config=packaged, source_sha=cfg.sha, manifest=manifest)


def _version() -> str:
    try:
        return metadata.version("safecascade")
    except Exception:  # not installed as a distribution (a source checkout on sys.path)
        return "0+unknown"


def default_pip_requirements(config: RouterConfig) -> list[str]:
    """What a serving environment installs: safecascade with the extras the tiers need."""
    extras = ["fast", "mlflow"]
    if any(t.type == "safeguard" for t in config.tiers):
        extras.append("llm")
    v = _version()
    pin = f"=={v}" if v != "0+unknown" else ""
    return [f"safecascade[{','.join(extras)}]{pin}"]


# --------------------------------------------------------------------------- MLflow plumbing
def _mlflow() -> Any:
    try:
        return configured_mlflow()
    except ImportError as exc:
        raise ValueError("the router registry needs mlflow: pip install 'safecascade[mlflow]'") from exc


def _vendor_file(src: Path, root: Path, rel: str, key: str, what: str) -> str:
    """Copy ``src`` to ``root/rel`` inside the package; a missing file is a ConfigError naming ``key``."""
    if not src.is_file():
        raise ConfigError(f"{key}: {what} file not found: {src}")
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, root / rel)
    return rel


def register_router(config: RouterConfig | str | Path, *, name: str = DEFAULT_MODEL_NAME, run_id: str | None = None,
                    promote: bool = False, tags: Mapping[str, Any] | None = None,
                    pip_requirements: list[str] | None = None) -> dict[str, Any]:
    """Log ``config`` as an MLflow pyfunc model and register it as a version of ``name``.

    The model is logged into run ``run_id`` (e.g. a tuning job's parent run; the active run when
    it is that one) or, with ``None``, a new run in experiment ``safecascade-routers``. Its
    ``router`` artifact is :func:`package_router`'s directory. ``promote`` points the alias
    ``champion`` at the new version. ``tags`` are set on the model version (and the run).
    ``pip_requirements`` default: :func:`default_pip_requirements`.

    Returns ``{"model_name", "version", "model_uri", "run_id"}`` (``model_uri`` =
    ``models:/<name>/<version>``).
    """
    from safecascade.router.pyfunc_model import model_signature  # imports mlflow (heavy, optional)

    cfg = _as_config(config)
    mlflow = _mlflow()
    with tempfile.TemporaryDirectory(prefix="safecascade-router-") as tmp:
        pkg = package_router(cfg, Path(tmp) / ROUTER_ARTIFACT_KEY)
        version_tags = {
            "safecascade.config_name": cfg.name,
            "safecascade.config_sha": cfg.sha,
            "safecascade.packaged_config_sha": pkg.config.sha,
            "safecascade.tiers": " -> ".join(t.name for t in cfg.tiers),
            "safecascade.policy_hashes": json.dumps(dict(pkg.manifest["policy_hashes"]), sort_keys=True),
            **{str(k): str(v) for k, v in (tags or {}).items()},
        }
        active = mlflow.active_run()
        if run_id is None:
            ctx = mlflow.start_run(experiment_id=experiment_id(mlflow, EXPERIMENT), run_name=f"router-{cfg.name}", nested=active is not None)
        elif active is not None and active.info.run_id == run_id:
            ctx = nullcontext(active)
        else:
            ctx = mlflow.start_run(run_id=run_id, nested=active is not None)
        with ctx as run, warnings.catch_warnings():
            # No input example on purpose (MLflow would load the router, safeguard included, to
            # validate it); the explicit signature stands in for it.
            warnings.filterwarnings("ignore", message=".*input_example")
            info = mlflow.pyfunc.log_model(
                name="router",
                python_model=str(Path(__file__).with_name("pyfunc_entry.py")),  # models from code: nothing pickled
                artifacts={ROUTER_ARTIFACT_KEY: str(pkg.root)},
                signature=model_signature(list(pkg.config.policies)),
                pip_requirements=pip_requirements or default_pip_requirements(cfg),
                metadata={"safecascade": {k: v for k, v in pkg.manifest.items() if k != "tiers"}},
            )
            mlflow.set_tags(version_tags)
            used_run = run.info.run_id
    from mlflow.tracking import MlflowClient  # heavy, optional

    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except Exception:  # RESOURCE_DOES_NOT_EXIST
        client.create_registered_model(name, description="safecascade router (pyfunc: text -> action, flagged, score, tier, "
                                                           "per-policy scores); artifacts: config, policies, tier models")
    mv = mlflow.register_model(info.model_uri, name, tags=version_tags)
    version = int(mv.version)
    if promote:
        set_champion(name, version)
    log.info("registered router %s (%s) as %s version %d%s", cfg.name, cfg.sha, name, version, " [champion]" if promote else "")
    return {"model_name": name, "version": version, "model_uri": f"models:/{name}/{version}", "run_id": used_run}


def set_champion(name: str, version: int | str, *, alias: str = CHAMPION) -> None:
    """Point ``models:/<name>@<alias>`` (default ``champion``) at ``version`` (which must exist)."""
    _mlflow()
    resolve_version(name, version=version)
    set_alias(name, alias, version)
    log.info("%s@%s -> version %s", name, alias, version)


def load_registered_config(uri: str) -> RouterConfig:
    """The :class:`RouterConfig` of a registered router (``models:/name/3`` or ``models:/name@alias``),
    with paths resolved inside its downloaded, cached artifact directory."""
    return load_config(registered_router_config(uri))
