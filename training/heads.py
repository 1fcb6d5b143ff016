"""The heads on the window embeddings and their calibration.

Heads are trained on **windows**: every window of a text carries the text's target, weights
divided by the number of windows, and soft targets are split into a positive copy (weight ``t``)
and a negative copy (``1 - t``) (:func:`window_design`). The text's logit is the max over its
windows (:func:`text_logits`), exactly as served. Calibration is fitted on the validation split
(text-level max logit): Platt and isotonic are compared by 5-fold cross-validated log-loss and the
better one is fitted on all of val (:func:`fit_calibration`). With ``fit_on="train+val"`` the head
is refitted on train+val and calibrated on out-of-fold val logits (:func:`train_heads`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from safecascade.training.export_onnx import Calibration, HeadSpec
from safecascade.training.train_config import TrainConfig
from safecascade.training.train_metrics import log_loss, score_metrics
from safecascade.training.train_rows import TrainRow, labelled

log = logging.getLogger(__name__)


def window_design(embs: Sequence[np.ndarray], rows: Sequence[TrainRow], policy: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def fit_mlp(X: np.ndarray, y: np.ndarray, w: np.ndarray, *, hidden: int, weight_decay: float, epochs: int,
            seed: int = 0, threads: int = 2, batch: int = 256, lr: float = 1e-3) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """One-hidden-layer relu MLP on weighted binary cross-entropy (torch, AdamW, seeded): seconds on
    35,000 windows where sklearn's MLPClassifier took 7-20 minutes. Returns ``((W1, b1), (W2, b2))``
    with ``W`` as ``[in, out]``."""
    import torch  # heavy, optional (torch; training only)

    torch.manual_seed(seed)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        yt = torch.from_numpy(np.asarray(y, dtype=np.float32))
        wt = torch.from_numpy(np.asarray(w / w.mean(), dtype=np.float32))
        net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            perm = torch.randperm(len(yt), generator=gen)
            for s in range(0, len(yt), batch):
                idx = perm[s:s + batch]
                z = net(Xt[idx]).squeeze(1)
                loss = (torch.nn.functional.binary_cross_entropy_with_logits(z, yt[idx], reduction="none") * wt[idx]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        lin = [m for m in net if isinstance(m, torch.nn.Linear)]
        return tuple((m.weight.detach().numpy().T.astype(np.float64).copy(), m.bias.detach().numpy().astype(np.float64).copy())
                     for m in lin)
    finally:
        torch.set_num_threads(prev)


def fit_head(X: np.ndarray, y: np.ndarray, w: np.ndarray, cfg: TrainConfig, policy: str) -> tuple[Any, HeadSpec]:
    """Fit the sklearn head; returns (estimator, HeadSpec without calibration)."""
    if cfg.head == "lr":
        from sklearn.linear_model import LogisticRegression  # heavy, optional (sklearn)

        est = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter * 4, class_weight=None)
        est.fit(X, y, sample_weight=w / w.mean())
        layers = ((est.coef_.T.copy(), est.intercept_.copy()),)
    else:
        layers = fit_mlp(X, y, w, hidden=cfg.hidden, weight_decay=cfg.alpha, epochs=cfg.epochs, seed=cfg.seed, threads=cfg.threads)
        est = HeadSpec(policy=policy, layers=layers)  # its float64 numpy forward is the reference
    return est, HeadSpec(policy=policy, layers=layers)


def sklearn_logit(est: Any, X: np.ndarray) -> np.ndarray:
    """The head's logit through sklearn itself, or a torch-trained head's float64 numpy forward
    (the reference for parity)."""
    if isinstance(est, HeadSpec):
        return est.logit(X)
    if hasattr(est, "decision_function"):
        return np.asarray(est.decision_function(X), dtype=np.float64)
    p = np.clip(est.predict_proba(X)[:, 1].astype(np.float64), 1e-15, 1 - 1e-15)
    return np.log(p) - np.log1p(-p)


def fit_calibration(z: np.ndarray, y: np.ndarray, method: str = "auto", *, seed: int = 0) -> tuple[Calibration, dict[str, float]]:
    """Platt vs isotonic on text-level logits; ``auto`` picks the lower 5-fold CV log-loss.

    Returns (the calibration fitted on all of ``z``, the CV log-loss of each method tried)."""
    from sklearn.isotonic import IsotonicRegression  # heavy, optional (sklearn)
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

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
            losses[name] = log_loss(y, pred)
    if method == "auto":
        best = min(losses, key=losses.get) if losses else "platt"
    else:
        best = method
    return fitters[best](z, y), losses


def text_logits(embs: Sequence[np.ndarray], head: Any) -> np.ndarray:
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


def val_folds(labels: Sequence[int], folds: int, seed: int, *, policy: str = "") -> list[tuple[np.ndarray, np.ndarray]]:
    """The stratified val folds every out-of-fold fit uses (embedding head and lexical block alike)."""
    from sklearn.model_selection import StratifiedKFold  # heavy, optional (sklearn)

    y = np.asarray(labels, dtype=int)
    n_splits = int(min(folds, np.bincount(y, minlength=2).min()))
    if n_splits < 2:
        raise ValueError(f"fit_on=train+val needs at least 2 val examples of each class for policy {policy!r}")
    return list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def _val_rows(labels: Sequence[int], pol: str) -> list[TrainRow]:
    """Hard-target rows for the val split (the design matrix only needs targets and weights)."""
    return [TrainRow(text="", targets={pol: float(v)}, source="val") for v in labels]


def _oof_val_logits(cfg: TrainConfig, train_embs: list[np.ndarray], train_rows: list[TrainRow],
                    val_embs: list[np.ndarray], labels: Sequence[int], pol: str) -> np.ndarray:
    """Out-of-fold val logits: for each of ``cfg.refit_folds`` stratified val folds, a head trained on
    train + the other folds scores the held-out fold (honest calibration data for a train+val head)."""
    y = np.asarray(labels, dtype=int)
    oof = np.zeros(len(y))
    for tr_idx, te_idx in val_folds(y, cfg.refit_folds, cfg.seed, policy=pol):
        rows = list(train_rows) + _val_rows(y[tr_idx].tolist(), pol)
        X, yy, w = window_design(list(train_embs) + [val_embs[i] for i in tr_idx], rows, pol)
        _, head = fit_head(X, yy, w, cfg, pol)
        oof[te_idx] = text_logits([val_embs[i] for i in te_idx], head)
    return oof


def train_heads(cfg: TrainConfig, train_embs: list[np.ndarray], train_rows: list[TrainRow],
                val_embs: list[np.ndarray], val_labels: dict[str, list[int]],
                progress: bool) -> tuple[list[HeadSpec], list[Any], dict[str, Any]]:
    """One calibrated head per policy of ``cfg`` on window embeddings.

    ``train_embs``/``train_rows``: the training texts' window embeddings and rows (same order);
    ``val_embs``/``val_labels``: the val split's embeddings and hard labels per policy (calibration,
    and the refit when ``cfg.fit_on == "train+val"``). Returns (calibrated HeadSpecs, the fitted
    sklearn estimators, per-policy calibration info: ``chosen``, ``cv_log_loss`` and, for a refit,
    ``val_logits_oof``).
    """
    heads, ests, calinfo = [], [], {}
    for pol in tqdm(cfg.policies, desc="training heads", disable=not progress, unit="policy"):
        # val texts not labelled for this policy (-1, a multi-policy benchmark) take no part
        idx = labelled(val_labels[pol]) if val_embs and pol in val_labels else np.zeros(0, dtype=int)
        v_embs = [val_embs[i] for i in idx]
        v_y = np.asarray(val_labels[pol], dtype=int)[idx] if len(idx) else np.zeros(0, dtype=int)
        refit = cfg.fit_on == "train+val" and len(idx) > 0
        oof = _oof_val_logits(cfg, train_embs, train_rows, v_embs, v_y.tolist(), pol) if refit else None
        fit_embs, fit_rows = train_embs, train_rows
        if refit:
            fit_embs = list(train_embs) + v_embs
            fit_rows = list(train_rows) + _val_rows(v_y.tolist(), pol)
        X, y, w = window_design(fit_embs, fit_rows, pol)
        t0 = time.perf_counter()
        est, head = fit_head(X, y, w, cfg, pol)
        log.info("policy %s: %s head on %d windows (%s) in %.1fs", pol, cfg.head, len(y), cfg.fit_on, time.perf_counter() - t0)
        if len(idx):
            z_val = oof if oof is not None else text_logits(v_embs, head)
            cal, losses = fit_calibration(z_val, v_y, cfg.calibration, seed=cfg.seed)
        else:
            cal, losses = Calibration(method="none"), {}
        head = replace(head, calibration=cal)
        calinfo[pol] = {"chosen": cal.method, "cv_log_loss": losses}
        if oof is not None:  # full length, NaN where the val text has no label for this policy
            full = np.full(len(val_labels[pol]), np.nan)
            full[idx] = oof
            calinfo[pol]["val_logits_oof"] = full
        heads.append(head)
        ests.append(est)
    return heads, ests, calinfo


def evaluate_heads(heads: Sequence[Any], embs: list[np.ndarray], labels: dict[str, list[int]],
                   thresholds: dict[str, float] | None = None, *, oof_logits: Mapping[str, np.ndarray] | None = None,
                   lexical: Any = None, split: str = "val") -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Metrics and scores of calibrated heads on one split: ``({policy: metrics}, {policy: scores})``.

    ``thresholds``: per policy, also report metrics at that threshold (``at_val_best_f1_threshold``);
    ``oof_logits``: out-of-fold logits to use instead of the heads'; ``lexical``: a
    :class:`~safecascade.training.lexical_train.LexicalBlock` whose stacked scores on ``split``
    replace the head's alone."""
    metrics, scores = {}, {}
    for h in heads:
        if h.policy not in labels:
            continue
        z = oof_logits[h.policy] if oof_logits and h.policy in oof_logits else text_logits(embs, h)
        s = lexical.scores(split, h.policy, z) if lexical is not None else h.calibration.apply(z)
        scores[h.policy] = s.tolist()
        idx = labelled(labels[h.policy])
        if not len(idx):
            continue
        y = np.asarray(labels[h.policy], dtype=int)[idx]
        m = score_metrics(y.tolist(), np.asarray(s)[idx])
        if thresholds and h.policy in thresholds:
            m["at_val_best_f1_threshold"] = score_metrics(y.tolist(), np.asarray(s)[idx], threshold=thresholds[h.policy])
        metrics[h.policy] = m
    return metrics, scores
