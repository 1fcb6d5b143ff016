"""The retrain loop: ``safecascade retrain --from-log verdicts.db``.

1. **Distillation set.** The teacher rows of the verdict log (see
   :mod:`safecascade.training.verdict_rows`: rows where the ``safeguard`` tier scored, one per
   text, newest row wins) that stored their text. Ordered by time, the newest
   ``--holdout`` fraction (at least ``--min-holdout`` rows) is **held back**; the rest become
   soft-target rows (the teacher's probability, weight ``--verdict-weight``) next to the
   labelled benchmark train split. Training rows whose text is in the benchmark's test split
   are dropped (the test split stays unseen); overlap with the val split (calibration) is
   reported, not removed.
2. **Candidate.** A fast tier trained with the fast-tier pipeline
   (:func:`safecascade.training.fast_train.train_fast`; calibrated on the benchmark's val split).
3. **Evaluation.** Candidate and champion, through the served ONNX path, on (a) the benchmark's
   fixed test split (``--limit``: a stratified sample) with the gold labels and (b) the
   held-back slice with the teacher's verdicts as labels. Each model is scored at its own
   tuned operating point (the val-best-F1 threshold in its card).
4. **Promotion.** The candidate is logged and registered as a new version of
   ``safecascade-fast``; the ``champion`` alias moves to it only if on *both* evaluations
   ``candidate[metric] >= champion[metric] - tolerance`` (``--tolerance`` 0.01 F1 by default; a
   negative tolerance demands an improvement). With no champion at all the candidate is
   promoted. The decision, its reasons and both evaluations are logged to an MLflow run in the
   ``safecascade-retrain`` experiment (counts and metrics only, never texts).

The champion (``--champion auto``) is ``models:/safecascade-fast@champion`` when that alias
exists, else the built default fast tier (``<cache>/models/fast-default``), else none; a path
or a ``models:/`` URI can be given, or ``none``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from tqdm.auto import tqdm

from safecascade.hashing import text_hash
from safecascade.mlflow_store import (
    MODEL_NAMES,
    ModelNotFoundError,
    configured_mlflow,
    experiment_id,
    registry_client,
    resolve_model_uri,
    set_alias,
)
from safecascade.paths import artifact_dir
from safecascade.tiers.fast import FastTier
from safecascade.training.datasets import benchmark_policy, load_benchmark
from safecascade.training.evaluate import stratified_sample
from safecascade.training.fast_train import train_fast
from safecascade.training.mlflow_runs import flat_metrics, log_training_run
from safecascade.training.train_config import TrainConfig
from safecascade.training.train_metrics import score_metrics
from safecascade.training.verdict_rows import teacher_rows

log = logging.getLogger(__name__)

EXPERIMENT = "safecascade-retrain"
METRICS = ("f1", "recall_at_1pct_fpr", "roc_auc", "precision", "recall")
SLICES = ("benchmark_test", "holdout")
SLICE_TITLES = {"benchmark_test": "benchmark test", "holdout": "held-back log"}


@dataclass(frozen=True, kw_only=True)
class RetrainConfig:
    """What the retrain loop reads, holds back and how it decides (logged as MLflow params)."""

    log_path: str
    benchmark: str = "jailbreak"
    teacher_tier: str = "safeguard"
    decided_only: bool = False  # only rows the teacher decided (default: every row it scored)
    holdout_fraction: float = 0.2  # newest share of usable teacher rows held back for evaluation
    min_holdout: int = 10
    tolerance: float = 0.01
    metric: str = "f1"
    champion: str = "auto"  # auto | none | a path | models:/name/version | models:/name@alias
    test_limit: int | None = None  # stratified sample of the benchmark test split
    val_limit: int | None = None  # stratified sample of the val split (calibration)
    register: bool = True  # False: log the decision only (no model version, no alias change)

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.min_holdout < 1:
            raise ValueError(f"min_holdout must be >= 1, got {self.min_holdout}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if not math.isfinite(self.tolerance) or abs(self.tolerance) >= 1.0:
            raise ValueError(f"tolerance must be a number in (-1, 1), got {self.tolerance}")
        for name in ("test_limit", "val_limit"):
            v = getattr(self, name)
            if v is not None and v < 2:
                raise ValueError(f"{name} must be >= 2, got {v}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class RetrainResult:
    """Outcome of one retrain: the decision, both evaluations, the data used, MLflow ids."""

    promoted: bool  # the champion alias was moved to the candidate
    reasons: tuple[str, ...]
    metric: str
    tolerance: float
    candidate: dict[str, Any]  # {"model_dir", "slices": {slice: metrics}}
    champion: dict[str, Any] | None  # {"source", "version", "slices"} or None
    data: dict[str, Any]  # counts (log rows, teacher rows, no-text rows, holdout, ...)
    mlflow: dict[str, Any] = field(default_factory=dict)  # retrain_run_id, candidate version, ...
    seconds: dict[str, float] = field(default_factory=dict)
    would_promote: bool | None = None  # the rule's outcome (differs from ``promoted`` only in a dry run)

    @property
    def decision(self) -> str:
        if self.promoted:
            return "promoted"
        return "dry-run-would-promote" if self.would_promote else "rejected"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decision"] = self.decision
        return d

    def summary_table(self) -> str:
        """A short plain-text table of both evaluations and the decision."""
        m = self.metric
        lines = [f"{'slice':<16} {'n':>6} {'pos':>5}  {m + ' cand':>10} {m + ' champ':>11} {'delta':>8}  verdict"]
        for s in SLICES:
            c = self.candidate["slices"].get(s) or {}
            h = (self.champion or {}).get("slices", {}).get(s) or {}
            cv, hv = c.get(m), h.get(m)
            delta = (cv - hv) if cv is not None and hv is not None else None
            if not h:
                verdict = "no champion"
            elif delta is None:
                verdict = "n/a"
            elif delta < -self.tolerance:
                verdict = f"REGRESSED (tolerance {self.tolerance:g})"
            else:
                verdict = "ok"
            lines.append(f"{SLICE_TITLES[s]:<16} {c.get('n', 0):>6} {c.get('positives', 0):>5}  {_fmt(cv):>10} "
                         f"{_fmt(hv):>11} {_fmt(delta, signed=True):>8}  {verdict}")
        lines.append(f"decision: {self.decision.upper()} - " + "; ".join(self.reasons))
        return "\n".join(lines)


def _fmt(v: float | None, *, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


# --------------------------------------------------------------------------- pieces


def split_holdout(rows: Sequence[Any], *, fraction: float, min_holdout: int) -> tuple[list[Any], list[Any]]:
    """Time-ordered teacher rows with text -> (training rows, held-back newest rows).

    The newest ``max(min_holdout, round(fraction * n))`` rows are held back; at least one
    row must remain for training. Raises ``ValueError`` when there are too few rows."""
    usable = sorted((r for r in rows if r.text is not None), key=lambda r: (r.ts, r.id))
    n = len(usable)
    n_hold = max(min_holdout, int(round(fraction * n)))
    if n < n_hold + 1:
        raise ValueError(f"the log has {n} usable teacher row(s) with text; need at least {n_hold + 1} "
                         f"({n_hold} held back for evaluation + 1 to train on)")
    return usable[: n - n_hold], usable[n - n_hold:]


def decide(candidate: Mapping[str, Mapping[str, Any]], champion: Mapping[str, Mapping[str, Any]] | None, *,
           metric: str = "f1", tolerance: float = 0.01) -> tuple[bool, list[str]]:
    """The promotion rule: promote unless the candidate's ``metric`` is below the champion's by
    more than ``tolerance`` on any evaluated slice (``benchmark_test``, ``holdout``).

    With no champion the candidate is promoted. A slice whose metric is missing for either
    model (e.g. recall at 1% FPR without negatives) cannot be compared and is reported as such;
    at least one slice must be comparable, else the candidate is rejected."""
    if champion is None:
        return True, ["no champion to compare with: the first candidate becomes the champion"]
    reasons: list[str] = []
    ok, compared = True, 0
    for s in SLICES:
        c = (candidate.get(s) or {}).get(metric)
        h = (champion.get(s) or {}).get(metric)
        if c is None or h is None:
            reasons.append(f"{SLICE_TITLES[s]}: {metric} not comparable (candidate {_fmt(c)}, champion {_fmt(h)})")
            continue
        compared += 1
        delta = float(c) - float(h)
        if delta < -tolerance:
            ok = False
            reasons.append(f"{SLICE_TITLES[s]} {metric} regressed {h:.4f} -> {c:.4f} ({delta:+.4f}, tolerance {tolerance:g})")
        else:
            reasons.append(f"{SLICE_TITLES[s]} {metric} {h:.4f} -> {c:.4f} ({delta:+.4f}) within tolerance {tolerance:g}")
    if compared == 0:
        return False, reasons + ["no slice could be compared"]
    return ok, reasons


def score_model(model_dir: str | Path, texts: Sequence[str], policy: str, *, threads: int = 2,
                progress: bool = False, desc: str = "scoring") -> tuple[list[float], float, int]:
    """Score ``texts`` with a fast-tier artifact through ONNX Runtime (the served path).

    Returns (scores, the card's val-best-F1 threshold or 0.5, texts that got no score)."""
    tier = FastTier(model_dir=model_dir, threads=threads)
    if policy not in tier.policies:
        raise ValueError(f"model {model_dir} does not score policy {policy!r} (it scores {list(tier.policies)})")
    thr = float((tier.card.get("val_best_f1_threshold") or {}).get(policy, 0.5))
    scores: list[float] = []
    errors = 0
    step = 64
    for i in tqdm(range(0, len(texts), step), desc=desc, disable=not progress, unit="batch"):
        for r in tier.classify(list(texts[i : i + step])):
            s = r.scores.get(policy)
            if s is None:
                errors += 1
                s = 0.0
            scores.append(float(s))
    tier.close()
    return scores, thr, errors


def _metrics(scores: list[float], thr: float, errors: int, labels: Sequence[int]) -> tuple[dict[str, Any], list[float]]:
    if not scores:
        return {"n": 0, "positives": 0, "threshold": thr}, scores
    m = score_metrics(list(labels), scores, threshold=thr)
    m["errors"] = errors
    return m, scores


def _download_registered(uri: str, dest: Path) -> tuple[Path, int]:
    """Download a registered model version's artifact dir into ``dest`` (no shared cache: the
    tracking store may differ between calls). Returns (dir, version); raises
    :class:`~safecascade.mlflow_store.ModelNotFoundError` when ``uri`` names nothing registered."""
    _, mv = resolve_model_uri(uri)
    mlflow = configured_mlflow()
    dest.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dest)))
    if not (local / "card.json").is_file():
        raise ValueError(f"{uri} (source {mv.source}) has no card.json: not a safecascade tier artifact")
    return local, int(mv.version)


def resolve_champion(spec: str, workdir: Path) -> tuple[Path | None, dict[str, Any]]:
    """``auto`` / ``none`` / path / ``models:/`` URI -> (artifact dir or None, description)."""
    spec = (spec or "auto").strip()
    if spec == "none":
        return None, {"source": "none"}
    if spec.startswith("models:/"):
        d, version = _download_registered(spec, workdir / "champion")
        return d, {"source": spec, "version": version}
    if spec != "auto":
        d = Path(spec).expanduser()
        if not (d / "card.json").is_file():
            raise ValueError(f"champion {d} is not a fast-tier artifact dir (no card.json)")
        return d, {"source": str(d)}
    uri = f"models:/{MODEL_NAMES['fast']}@champion"
    try:
        d, version = _download_registered(uri, workdir / "champion")
        return d, {"source": uri, "version": version}
    except ModelNotFoundError as exc:
        log.info("no registered champion (%s); trying the built default fast tier", exc)
    d = artifact_dir("models") / "fast-default"
    if (d / "card.json").is_file():
        return d, {"source": str(d)}
    return None, {"source": "none (no registered champion, no built default)"}


def _write_distill_csv(rows: Sequence[Any], policies: Sequence[str], path: Path) -> int:
    """The training slice as a replay-format CSV (``text`` + a probability column per policy),
    the format :func:`~safecascade.training.train_rows.rows_from_verdicts` reads."""
    n = 0
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text_hash", "text", *policies])
        for r in rows:
            vals = [("" if r.scores.get(p) is None else repr(float(r.scores[p]))) for p in policies]
            if any(vals):
                w.writerow([r.text_hash, r.text, *vals])
                n += 1
    return n


# --------------------------------------------------------------------------- the loop


def retrain(cfg: RetrainConfig, train_cfg: Any = None, *, out_dir: str | Path | None = None,
            cache_root: str | Path | None = None, progress: bool = True) -> RetrainResult:
    """Run the whole loop (see the module docstring) and return the decision.

    ``train_cfg``: the :class:`~safecascade.training.train_config.TrainConfig` of the candidate
    (its ``policies`` are set to the benchmark's policy). ``out_dir``: where the candidate's
    artifact dir goes (default ``<cache>/models/retrain/<UTC time>``). ``cache_root``: the
    embedding cache (default: the shared one, so re-training re-embeds nothing).
    """
    t_start = time.perf_counter()
    secs: dict[str, float] = {}
    log_path = Path(cfg.log_path)
    if not log_path.is_file():
        raise FileNotFoundError(f"verdict log not found: {log_path}")
    policy = benchmark_policy(cfg.benchmark)
    train_cfg = train_cfg or TrainConfig()
    if train_cfg.kind != "fast":
        raise ValueError("retrain builds a fast tier candidate (TrainConfig.kind must be 'fast')")
    train_cfg = train_cfg.for_policies((policy,), benchmark=cfg.benchmark)
    if out_dir is None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out_dir = artifact_dir("models", "retrain") / stamp
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # 1. distillation set and held-back slice
    t0 = time.perf_counter()
    rows, stats = teacher_rows(log_path, tier=cfg.teacher_tier, policies=[policy], decided_only=cfg.decided_only)
    if stats.teacher_rows == 0:
        raise ValueError(f"{log_path}: no rows where the {cfg.teacher_tier!r} tier scored policy {policy!r} "
                         f"({stats.rows_read} rows read)")
    if stats.usable == 0:
        raise ValueError(f"{log_path}: {stats.teacher_rows} {cfg.teacher_tier} verdict row(s) but none stored its text; "
                         "retraining needs the verdict log opened with store_text=True (privacy setting)")
    train_rows, holdout = split_holdout(rows, fraction=cfg.holdout_fraction, min_holdout=cfg.min_holdout)
    test = load_benchmark(cfg.benchmark, "test")
    test_hashes = {text_hash(e.text) for e in test}
    n_before = len(train_rows)
    train_rows = [r for r in train_rows if r.text_hash not in test_hashes]
    eval_test = stratified_sample(test, cfg.test_limit) if cfg.test_limit else test
    # The val split stays whole: it is the calibration / threshold split of champion and candidate alike
    # (removing logged texts from it would remove exactly the hard, escalated cases and move the
    # candidate's operating point). Overlap is reported.
    distill_hashes = {r.text_hash for r in train_rows}
    val = load_benchmark(cfg.benchmark, "val")
    val_overlap = sum(1 for e in val if text_hash(e.text) in distill_hashes)
    if val_overlap:
        log.warning("%d distillation text(s) are also in the %s val split (calibration)", val_overlap, cfg.benchmark)
    if cfg.val_limit:
        val = stratified_sample(val, cfg.val_limit)
    data = {"log": str(log_path), "teacher_tier": cfg.teacher_tier, "policy": policy, **{f"log_{k}": v for k, v in stats.to_dict().items()},
            "distill_rows": len(train_rows), "dropped_test_overlap": n_before - len(train_rows),
            "val_overlap": val_overlap,
            "holdout_rows": len(holdout), "holdout_positives": sum(r.labels[policy] for r in holdout),
            "holdout_from_ts": holdout[0].ts, "holdout_to_ts": holdout[-1].ts,
            "benchmark_test_rows": len(eval_test), "benchmark_val_rows": len(val)}
    secs["data"] = time.perf_counter() - t0
    log.info("retrain data: %s", data)

    # 2. the candidate
    t0 = time.perf_counter()
    train = load_benchmark(cfg.benchmark, "train")
    cand_dir = out / "candidate"
    with tempfile.TemporaryDirectory(prefix="safecascade-distill-") as tmp:  # texts: not kept on disk after training
        distill_csv = Path(tmp) / "distill.csv"
        n_written = _write_distill_csv(train_rows, [policy], distill_csv)
        result = train_fast(train_cfg, train=train, val=val, test=(), verdicts=distill_csv if n_written else None,
                            out_dir=cand_dir, progress=progress, cache_root=cache_root)
    card = dict(result.card)
    card["training_data"] = {**card.get("training_data", {}), "verdicts": str(log_path)}
    card["distillation"] = {k: data[k] for k in ("log", "teacher_tier", "distill_rows", "holdout_rows", "holdout_from_ts",
                                                 "dropped_test_overlap")} | {"verdict_weight": train_cfg.verdict_weight}
    (cand_dir / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True, default=float), encoding="utf-8")
    secs["train"] = time.perf_counter() - t0

    # 3. evaluations
    t0 = time.perf_counter()
    champ_dir, champ_info = resolve_champion(cfg.champion, out)
    test_texts, test_labels = [e.text for e in eval_test], [int(e.label) for e in eval_test]
    hold_texts, hold_labels = [r.text for r in holdout], [r.labels[policy] for r in holdout]
    threads = train_cfg.threads

    def evaluate(model_dir: Path, who: str) -> tuple[dict[str, dict[str, Any]], list[float]]:
        test_m, test_s = _metrics(*score_model(model_dir, test_texts, policy, threads=threads, progress=progress,
                                               desc=f"{who}: benchmark test"), test_labels)
        hold_m, _ = _metrics(*score_model(model_dir, hold_texts, policy, threads=threads, progress=progress,
                                          desc=f"{who}: held-back log"), hold_labels)
        return {"benchmark_test": test_m, "holdout": hold_m}, test_s

    cand_eval, cand_test_scores = evaluate(cand_dir, "candidate")
    champ_eval = evaluate(champ_dir, "champion")[0] if champ_dir is not None else None
    secs["evaluate"] = time.perf_counter() - t0

    # 4. decision, registration, alias, MLflow run
    promoted, reasons = decide(cand_eval, champ_eval, metric=cfg.metric, tolerance=cfg.tolerance)
    if not cfg.register and promoted:
        reasons.append("dry run: nothing registered, the champion alias was not moved")
    res = RetrainResult(promoted=promoted and cfg.register, reasons=tuple(reasons), metric=cfg.metric,
                        tolerance=cfg.tolerance,
                        candidate={"model_dir": str(cand_dir), "slices": cand_eval},
                        champion=None if champ_eval is None else {**champ_info, "model_dir": str(champ_dir), "slices": champ_eval},
                        data=data, seconds=secs, would_promote=promoted)
    t0 = time.perf_counter()
    result = replace(result, metrics={**result.metrics, "test": {policy: cand_eval["benchmark_test"]}},
                     test_scores={policy: cand_test_scores}, test_labels={policy: test_labels})
    info = _log_to_mlflow(res, cfg, train_cfg, result, would_promote=promoted)
    secs["mlflow"] = time.perf_counter() - t0
    secs["total"] = time.perf_counter() - t_start
    if champ_dir is not None and champ_dir.is_relative_to(out):
        shutil.rmtree(out / "champion", ignore_errors=True)
    res = replace(res, mlflow=info, seconds=secs)
    (out / "retrain_decision.json").write_text(json.dumps(res.to_dict(), indent=2, default=str), encoding="utf-8")
    log.info("retrain %s: %s", res.decision, "; ".join(res.reasons))
    return res


def _log_to_mlflow(res: RetrainResult, cfg: RetrainConfig, train_cfg: Any, result: Any, *,
                   would_promote: bool) -> dict[str, Any]:
    """Register the candidate (unless a dry run), move the alias when promoted, and log the
    decision with both evaluations to a run of the ``safecascade-retrain`` experiment."""
    mlflow = configured_mlflow()
    info: dict[str, Any] = {}
    # the candidate's own training run (val metrics, the benchmark-test evaluation, PR curve, model)
    run = log_training_run(result, register=cfg.register, run_name="retrain-candidate")
    info["training_run_id"] = run["run_id"]
    name = MODEL_NAMES["fast"]
    if cfg.register:
        info.update(model_name=name, candidate_version=run["version"], candidate_uri=run["model_uri"])
        client = registry_client()
        client.set_model_version_tag(name, str(run["version"]), "safecascade.retrain_decision", res.decision)
        if res.promoted:
            set_alias(name, "champion", run["version"])
            info["champion_alias"] = f"models:/{name}@champion -> version {run['version']}"
    exp_id = experiment_id(mlflow, EXPERIMENT)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"retrain-{res.decision}") as r:
        params = {f"retrain.{k}": v for k, v in cfg.to_dict().items()}
        params.update({f"train.{k}": v for k, v in train_cfg.to_dict().items()})
        params["champion.source"] = (res.champion or {}).get("source", "none")
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        slices = {"candidate": res.candidate["slices"]}
        if res.champion:
            slices["champion"] = res.champion["slices"]
            slices["delta"] = {s: {m: res.candidate["slices"][s][m] - res.champion["slices"][s][m]
                                   for m in METRICS
                                   if res.candidate["slices"][s].get(m) is not None and res.champion["slices"][s].get(m) is not None}
                               for s in SLICES}
        mlflow.log_metrics(flat_metrics(slices))
        mlflow.log_metrics(flat_metrics({"data": {k: v for k, v in res.data.items() if isinstance(v, (int, float))}}))
        mlflow.log_metric("promoted", 1.0 if res.promoted else 0.0)
        tags = {"safecascade.decision": res.decision, "safecascade.reasons": " | ".join(res.reasons)[:5000],
                "safecascade.training_run_id": run["run_id"], "safecascade.would_promote": str(would_promote).lower()}
        if cfg.register:
            tags["safecascade.candidate_version"] = str(run["version"])
        if res.champion and res.champion.get("version") is not None:
            tags["safecascade.champion_version"] = str(res.champion["version"])
        mlflow.set_tags(tags)
        mlflow.log_dict({**res.to_dict(), "mlflow": {**info, "training_run_id": run["run_id"]}}, "retrain_decision.json")
        info["retrain_run_id"] = r.info.run_id
    info["experiment"] = EXPERIMENT
    return info


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``safecascade retrain``."""
    parser.add_argument("--from-log", dest="from_log", required=True, metavar="DB",
                        help="the SQLite verdict log (written with store_text on)")
    parser.add_argument("--benchmark", default="jailbreak", help="labelled benchmark: train split + test split for evaluation")
    parser.add_argument("--teacher-tier", default="safeguard", help="tier whose logged verdicts are the soft labels")
    parser.add_argument("--decided-only", action="store_true", help="only rows the teacher decided (default: every row it scored)")
    parser.add_argument("--holdout", type=float, default=0.2, help="newest share of logged verdicts held back for evaluation")
    parser.add_argument("--min-holdout", type=int, default=10, help="at least this many held-back rows")
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="allowed regression of the metric on either evaluation (negative: demand an improvement)")
    parser.add_argument("--metric", choices=METRICS, default="f1", help="promotion metric")
    parser.add_argument("--champion", default="auto",
                        help="auto (models:/safecascade-fast@champion, else the built default), none, a path or a models:/ URI")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on a stratified sample of N benchmark test texts")
    parser.add_argument("--val-limit", type=int, default=None, help="calibrate on a stratified sample of N val texts")
    parser.add_argument("--train-limit", type=int, default=None, help="use at most N labelled train texts (quick runs)")
    parser.add_argument("--verdict-weight", type=float, default=1.0, help="weight of a logged verdict relative to a labelled row")
    parser.add_argument("--head", choices=["lr", "mlp"], default="mlp")
    parser.add_argument("--max-iter", type=int, default=300)
    parser.add_argument("--calibration", choices=["auto", "platt", "isotonic", "none"], default="auto")
    parser.add_argument("--max-windows", type=int, default=8, help="cap on encoder windows per text")
    parser.add_argument("--encoder", default="default", help="sentence-transformers model dir (default: bundled MiniLM)")
    parser.add_argument("--finetune", action="store_true",
                        help="fine-tune the encoder contrastively before training the candidate's head (as the embedded "
                             "default is built; adds 10-17 minutes on 2 cores)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="candidate artifact dir (default: <cache>/models/retrain/<time>)")
    parser.add_argument("--dry-run", action="store_true", help="evaluate and log the decision; register nothing, move no alias")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Run ``safecascade retrain``; exit 0 whether or not the candidate was promoted."""
    cfg = RetrainConfig(log_path=args.from_log, benchmark=args.benchmark, teacher_tier=args.teacher_tier,
                        decided_only=args.decided_only, holdout_fraction=args.holdout, min_holdout=args.min_holdout,
                        tolerance=args.tolerance, metric=args.metric, champion=args.champion, test_limit=args.limit,
                        val_limit=args.val_limit, register=not args.dry_run)
    tcfg = TrainConfig(kind="fast", head=args.head, max_iter=args.max_iter, calibration=args.calibration,
                       max_windows=args.max_windows, encoder=args.encoder, limit=args.train_limit,
                       verdict_weight=args.verdict_weight, threads=args.threads, finetune=args.finetune)
    res = retrain(cfg, tcfg, out_dir=args.out, progress=not args.no_progress)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, default=str))
        return 0
    d = res.data
    print(f"log {d['log']}: {d['log_rows_read']} rows, {d['log_teacher_rows']} {d['teacher_tier']} verdicts "
          f"({d['log_no_text']} without text, unusable), {d['distill_rows']} distilled, {d['holdout_rows']} held back")
    champ = res.champion
    print(f"candidate {res.mlflow.get('candidate_uri', res.candidate['model_dir'])} vs champion "
          f"{(champ or {}).get('source', 'none')}" + (f" (version {champ['version']})" if champ and champ.get('version') else ""))
    print(res.summary_table())
    print(f"mlflow: experiment {res.mlflow.get('experiment')}, run {res.mlflow.get('retrain_run_id')}"
          + (f"; {res.mlflow['champion_alias']}" if res.mlflow.get("champion_alias") else ""))
    print(f"time: {res.seconds.get('total', 0):.0f}s (train {res.seconds.get('train', 0):.0f}s, "
          f"evaluate {res.seconds.get('evaluate', 0):.0f}s)")
    return 0
