"""Outputs of a tuning job: the tuned router YAML, the candidate / Pareto tables, the Pareto plot,
and the MLflow parent run (experiment ``safecascade-tuning``) that holds them."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from safecascade.mlflow_store import configured_mlflow, experiment_id
from safecascade.router.config import parse_config
from safecascade.router.registry import register_router

log = logging.getLogger(__name__)

EXPERIMENT = "safecascade-tuning"
PATH_OPTIONS = ("model", "rules", "path", "model_path")
_KEEP_AS_IS = ("default", "stand-in")
METRIC_COLUMNS = ("f1", "precision", "recall", "fpr", "recall_at_1pct_fpr", "escalation", "cost_per_1k",
                  "latency_p50_ms", "latency_p99_ms", "latency_mean_ms", "assumed_share", "tp", "fp", "fn", "tn")


# ---------------------------------------------------------------------------- YAML
def _absolute(value: Any, base_dir: Path) -> Any:
    """A relative path option that exists under the config's folder, made absolute (so the tuned
    YAML loads from wherever it is written); names, URIs and absolute paths unchanged."""
    if not isinstance(value, str) or value in _KEEP_AS_IS or value.startswith(("models:/", "builtin:")):
        return value
    p = Path(value).expanduser()
    if p.is_absolute() or not (base_dir / p).exists():
        return value
    return str((base_dir / p).resolve())


def tuned_config_dict(config: Any, lo: np.ndarray, hi: np.ndarray, active: np.ndarray, *, name: str,
                      final_threshold: float | None = None) -> dict[str, Any]:
    """The config as a YAML-ready dict with the tuned bands (per policy, for the policies each
    tier scores), paths made absolute, and ``name``."""
    base = Path(config.base_dir)
    d = config.to_dict()
    d["name"] = name
    d["tiers"] = [dict(t) for t in d["tiers"]]  # asdict keeps the tuple; the YAML schema wants a list
    d["policies"] = {k: _absolute(v, base) if not v.startswith("builtin:") else v for k, v in d["policies"].items()}
    policies = list(config.policies)
    for k, t in enumerate(d["tiers"]):
        t["options"] = {key: (_absolute(v, base) if key in PATH_OPTIONS else v) for key, v in t["options"].items()}
        if k == len(d["tiers"]) - 1:
            t["bands"] = {}
            if final_threshold is not None:
                t["threshold"] = float(final_threshold)
            continue
        if active[k].any():
            t["bands"] = {pol: [_band_value(lo[k, p]), _band_value(hi[k, p])] for p, pol in enumerate(policies) if active[k, p]}
    for t in d["tiers"]:
        if not t["bands"]:
            del t["bands"]
    return d


def _band_value(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def write_tuned_yaml(config: Any, data: dict[str, Any], path: str | Path, *, header: Sequence[str] = ()) -> Path:
    """Validate ``data`` as a router config (it must load with ``Router.load``) and write it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    parse_config(data, base_dir=out.parent, source=str(out))  # raises ConfigError naming the key
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(data, sort_keys=False)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


# ---------------------------------------------------------------------------- tables
def band_columns(tier_names: Sequence[str], policies: Sequence[str], active: np.ndarray) -> list[tuple[str, int, int, str]]:
    """(column name, tier index, policy index, "lo"/"hi") for every tuned threshold."""
    cols = []
    for k, tn in enumerate(tier_names):
        for p, pol in enumerate(policies):
            if active[k, p]:
                cols += [(f"{tn}.{pol}.allow_below", k, p, "lo"), (f"{tn}.{pol}.block_above", k, p, "hi")]
    return cols


def candidate_rows(cands: Any, idx: Sequence[int], bands: list[tuple[str, int, int, str]], reach_keys: Sequence[str],
                   *, front: set[int], chosen: int) -> list[dict[str, Any]]:
    """One dict per candidate index: id, origin, bands (empty = null), metrics, Pareto/chosen flags."""
    rows = []
    for i in idx:
        row: dict[str, Any] = {"candidate": int(i), "origin": cands.origin[i], "pareto": int(i in front), "chosen": int(i == chosen)}
        for col, k, p, which in bands:
            v = (cands.lo if which == "lo" else cands.hi)[i, k, p]
            row[col] = "" if not np.isfinite(v) else repr(float(v))
        for key in (*METRIC_COLUMNS, *reach_keys):
            v = float(cands.metrics[key][i])
            row[key] = "" if math.isnan(v) else round(v, 6)
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    out = Path(path)
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["candidate"])
        w.writeheader()
        w.writerows(rows)
    return out


def pareto_png(metrics: Mapping[str, np.ndarray], front: Sequence[int], chosen: int, path: str | Path, *,
               title: str = "", cost_unit: str = "compute-seconds") -> Path:
    """F1 vs expected cost per 1,000 texts (log scale): all candidates in grey, the Pareto front
    coloured by escalation rate, the chosen point starred; the F1 axis starts just below the
    front, so much worse candidates fall off the bottom (matplotlib, Agg backend)."""
    import matplotlib  # heavy, optional (matplotlib)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cost, f1, esc = metrics["cost_per_1k"], metrics["f1"], metrics["escalation"]
    fr = np.asarray(front, dtype=int)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.scatter(cost, f1, s=4, c="0.82", label=f"candidates ({len(cost)})", zorder=1)
    sc = ax.scatter(cost[fr], f1[fr], s=22, c=esc[fr], cmap="viridis", edgecolors="k", linewidths=0.3,
                    label=f"Pareto front ({len(fr)})", zorder=3)
    ax.plot(cost[fr], f1[fr], color="0.4", lw=0.7, zorder=2)
    ax.scatter([cost[chosen]], [f1[chosen]], marker="*", s=260, c="red", edgecolors="k", zorder=4,
               label=f"chosen: F1 {f1[chosen]:.3f}, esc {esc[chosen]:.3f}, cost {cost[chosen]:.1f}")
    fig.colorbar(sc, ax=ax, label="escalation rate (share reaching the final tier)")
    lo_f1 = max(0.0, float(np.min(f1[fr])) - 0.05) if len(fr) else 0.0
    ax.set_ylim(lo_f1, min(1.0, float(np.max(f1)) + 0.02) if len(f1) else 1.0)
    if (cost > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel(f"expected cost per 1,000 texts ({cost_unit}{', log scale' if (cost > 0).all() else ''})")
    ax.set_ylabel("F1 (expected)")
    ax.set_title(title or "safecascade tune: F1 vs cost")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------- MLflow
def _finite_metrics(d: Mapping[str, Any], prefix: str) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[f"{prefix}{k}".replace("@", "_")] = float(v)
    return out


def tuning_experiment_id(mlflow: Any) -> str:
    """The ``safecascade-tuning`` experiment (see :func:`safecascade.mlflow_store.experiment_id`)."""
    return experiment_id(mlflow, EXPERIMENT)


def log_tuning_run(*, params: Mapping[str, Any], metrics: Mapping[str, Any], artifacts: Sequence[Path],
                   yaml_path: Path, run_name: str, tags: Mapping[str, str], register: bool, promote: bool,
                   model_name: str) -> dict[str, Any]:
    """One parent run in ``safecascade-tuning`` with the params, the chosen point's metrics and
    the artifacts; then (``register``) the tuned router is registered into that run through
    :func:`safecascade.router.registry.register_router` (alias ``champion`` with ``promote``)."""
    mlflow = configured_mlflow()
    exp_id = tuning_experiment_id(mlflow)
    info: dict[str, Any] = {}
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics(_finite_metrics(metrics, ""))
        mlflow.set_tags(dict(tags))
        for p in artifacts:
            mlflow.log_artifact(str(p))
        info["run_id"] = run.info.run_id
        info["artifact_uri"] = run.info.artifact_uri
        info["experiment_id"] = exp_id
        if register:
            reg = register_router(yaml_path, name=model_name, run_id=run.info.run_id, promote=promote,
                                  tags={"safecascade.tuning_run": run.info.run_id})
            info["registered"] = reg
            mlflow.set_tag("safecascade.registered_model", f"{reg.get('model_uri')}")
    log.info("tuning run %s logged to %s", info["run_id"], EXPERIMENT)
    return info


def summary_json(data: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``data`` as sorted, indented JSON to ``path``."""
    out = Path(path)
    out.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return out
