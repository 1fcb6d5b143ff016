"""Training the fast tier's lexical block and the stack that joins it to the embedding head.

* :func:`fit_lexical` fits IDF + a class-balanced logistic regression (liblinear) per policy on
  the hashed n-gram features of :mod:`safecascade.tiers.lexical`; soft targets (safeguard
  verdict probabilities) are split into a positive and a negative copy weighted ``t`` and
  ``1 - t``, as for the embedding head.
* :func:`oof_logits` gives honest val logits for a head refitted on train+val: each val fold is
  scored by a model trained on train + the other folds (same folds as the embedding head's).
* :func:`fit_stack` learns ``s = a * z_embedding + b * z_lexical + c`` on those val logits
  (logistic regression, two inputs) and a calibration map on ``s``.

Served by ``tiers/fast.py`` with numpy alone; the sklearn estimators are kept only as the
training-time reference for the parity test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from safecascade.tiers.lexical import LEXICAL_NAME, LexicalConfig, LexicalModel, Stack, feature_matrix
from safecascade.training.heads import fit_calibration, val_folds
from safecascade.training.train_rows import example_weights, labelled

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LexicalFit:
    """A fitted lexical block: the served model plus the sklearn estimators it came from."""

    model: LexicalModel
    estimators: tuple[Any, ...]

    def logits(self, X: Any) -> np.ndarray:
        """[n_texts, n_policies] logits of a raw tf matrix through sklearn (reference path)."""
        Xn = _tfidf(X, self.model.idf)
        return np.stack([est.decision_function(Xn) for est in self.estimators], axis=1)


def _tfidf(X: Any, idf: np.ndarray) -> Any:
    from sklearn.preprocessing import normalize  # heavy, optional (sklearn)

    return normalize(X.multiply(idf.astype(np.float64)).tocsr())


def idf_of(X: Any) -> np.ndarray:
    """Smoothed IDF per bucket from a raw tf matrix (sklearn's formula: ln((1+n)/(1+df)) + 1)."""
    df = np.bincount(X.indices, minlength=X.shape[1])
    return (np.log((1.0 + X.shape[0]) / (1.0 + df)) + 1.0).astype(np.float32)


def _design(X: Any, targets: np.ndarray, weights: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
    """Rows with soft target t become a positive copy (weight t) and a negative copy (1 - t);
    weights are then balanced so each class carries half the total."""
    from scipy import sparse  # heavy, optional (scipy, with sklearn)

    keep_pos, keep_neg = targets > 0, targets < 1
    Xd = sparse.vstack([X[keep_pos], X[keep_neg]]).tocsr()
    y = np.r_[np.ones(keep_pos.sum(), int), np.zeros(keep_neg.sum(), int)]
    w = np.r_[weights[keep_pos] * targets[keep_pos], weights[keep_neg] * (1 - targets[keep_neg])].astype(np.float64)
    if len(set(y.tolist())) < 2:
        raise ValueError("lexical block: training data has a single class")
    total = w.sum()
    for c in (0, 1):
        m = y == c
        w[m] *= 0.5 * total / w[m].sum()
    return Xd, y, w / w.mean()


def fit_lexical(X: Any, targets: np.ndarray, weights: np.ndarray, cfg: LexicalConfig, *, C: float = 30.0) -> LexicalFit:
    """Fit IDF and one logistic regression per policy column of ``targets`` ([n, n_policies], NaN =
    no target for that policy) on the raw tf matrix ``X`` from :func:`feature_matrix`."""
    from sklearn.linear_model import LogisticRegression  # heavy, optional (sklearn)

    targets = np.asarray(targets, dtype=np.float64).reshape(X.shape[0], -1)
    idf = idf_of(X)
    Xn = _tfidf(X, idf)
    ests, W, b = [], [], []
    for k in range(targets.shape[1]):
        has = ~np.isnan(targets[:, k])
        Xd, y, w = _design(Xn[has], targets[has, k], np.asarray(weights, np.float64)[has])
        est = LogisticRegression(C=C, solver="liblinear", max_iter=2000)
        est.fit(Xd, y, sample_weight=w)
        ests.append(est)
        W.append(est.coef_[0].astype(np.float32))
        b.append(float(est.intercept_[0]))
    model = LexicalModel(config=cfg, idf=idf, weights=np.stack(W), bias=np.asarray(b))
    return LexicalFit(model=model, estimators=tuple(ests))


def oof_logits(X_train: Any, t_train: np.ndarray, w_train: np.ndarray, X_val: Any, y_val: np.ndarray,
               cfg: LexicalConfig, *, C: float, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold val logits (one policy), on the same folds as the embedding head's."""
    from scipy import sparse  # heavy, optional (scipy, with sklearn)

    y = np.asarray(y_val, dtype=int)
    out = np.zeros(len(y))
    for tr, te in val_folds(y, folds, seed):
        X = sparse.vstack([X_train, X_val[tr]]).tocsr()
        fit = fit_lexical(X, np.r_[t_train, y[tr]], np.r_[w_train, np.ones(len(tr))], cfg, C=C)
        out[te] = fit.logits(X_val[te])[:, 0]
    return out


def fit_stack(z_emb: np.ndarray, z_lex: np.ndarray, y: np.ndarray, calibration: str, *, seed: int = 0,
              sample_weight: np.ndarray | None = None) -> dict[str, Any]:
    """Stack weights and calibration for one policy, from val logits (``calibration`` as in the
    embedding head: auto | platt | isotonic | none). ``sample_weight`` weighs the texts in the
    stack's fit (not in the calibration's)."""
    from sklearn.linear_model import LogisticRegression  # heavy, optional (sklearn)

    Z = np.c_[z_emb, z_lex]
    st = LogisticRegression(C=100.0).fit(Z, np.asarray(y, int), sample_weight=sample_weight)
    a, b = (float(v) for v in st.coef_[0])
    c = float(st.intercept_[0])
    s = a * z_emb + b * z_lex + c
    cal, losses = fit_calibration(s, np.asarray(y, int), calibration, seed=seed)
    log.info("stack: s = %.3f*z_emb + %.3f*z_lex + %.3f; calibration %s", a, b, c, cal.method)
    return {"a": a, "b": b, "c": c, "calibration": cal, "cv_log_loss": losses}


def stacked_scores(z_emb: np.ndarray, z_lex: np.ndarray, stack: dict[str, Any]) -> np.ndarray:
    """Calibrated probability of the stacked logit (the served tier's :class:`Stack` formula)."""
    return Stack(a=stack["a"], b=stack["b"], c=stack["c"], calibration=stack["calibration"].to_dict()).apply(z_emb, z_lex)


def token_ids(windower: Any, texts: Sequence[str]) -> list[np.ndarray]:
    """Content token ids of each text, exactly as the served tier sees them."""
    return [w.content for w in windower.windows(texts)]


def lexical_matrix(windower: Any, texts: Sequence[str], cfg: LexicalConfig) -> Any:
    return feature_matrix(token_ids(windower, texts), texts, cfg)


@dataclass(frozen=True)
class LexicalBlock:
    """What ``train_fast`` gets back: the fit, the per-policy stacks and lexical logits per split."""

    fit: LexicalFit
    stacks: dict[str, dict[str, Any]]
    z: dict[str, dict[str, np.ndarray]]  # split ("val" | "test") -> policy -> lexical logits
    C: float

    def scores(self, split: str, policy: str, z_emb: np.ndarray) -> np.ndarray:
        return stacked_scores(z_emb, self.z[split][policy], self.stacks[policy])

    def card(self) -> dict[str, Any]:
        """The card's ``lexical`` and ``stack`` sections."""
        return {"lexical": {"config": self.fit.model.config.to_dict(), "file": LEXICAL_NAME, "C": self.C,
                            "nonzero_weights": int(np.count_nonzero(self.fit.model.weights))},
                "stack": {p: {"a": s["a"], "b": s["b"], "c": s["c"], "calibration": s["calibration"].to_dict(),
                              "cv_log_loss": s.get("cv_log_loss", {})} for p, s in self.stacks.items()}}


def train_lexical_block(cfg: Any, windower: Any, rows: Sequence[Any], val: Sequence[Any], val_labels: dict[str, list[int]],
                        test: Sequence[Any], heads: Sequence[Any], emb_val_logits: dict[str, np.ndarray],
                        emb_test_logits: dict[str, np.ndarray], out_dir: Any, *, progress: bool = True) -> LexicalBlock:
    """Fit the lexical block on the same rows as the embedding heads (plus val when ``cfg.fit_on``
    is train+val), stack it on val logits (out-of-fold for a train+val refit) and save
    ``lexical.npz`` into ``out_dir``.

    ``emb_val_logits`` / ``emb_test_logits``: the embedding heads' text logits (max over windows)
    per policy, out-of-fold on val where the heads were refitted.
    """
    from scipy import sparse  # heavy, optional (scipy, with sklearn)

    lcfg = LexicalConfig(buckets=cfg.lexical_buckets)
    pols = list(cfg.policies)
    steps = tqdm(total=3, desc="lexical block", disable=not progress, unit="step")
    X_rows = lexical_matrix(windower, [r.text for r in rows], lcfg)
    X_val = lexical_matrix(windower, [e.text for e in val], lcfg) if val else None
    X_test = lexical_matrix(windower, [e.text for e in test], lcfg) if test else None
    T = np.array([[r.targets.get(p, np.nan) for p in pols] for r in rows], dtype=np.float64)
    W = np.array([r.weight for r in rows], dtype=np.float64)
    steps.update()
    refit = cfg.fit_on == "train+val" and X_val is not None
    z_val: dict[str, np.ndarray] = {}
    # val texts not labelled for a policy (-1, a multi-policy benchmark) take no part in its fits
    vidx = {p: labelled(val_labels[p]) for p in pols if p in val_labels}
    for k, p in enumerate(pols):
        if X_val is not None and p in vidx and len(vidx[p]) and refit:
            full = np.full(X_val.shape[0], np.nan)
            full[vidx[p]] = oof_logits(X_rows, T[:, k], W, X_val[vidx[p]], np.asarray(val_labels[p])[vidx[p]], lcfg,
                                       C=cfg.lexical_C, folds=cfg.refit_folds, seed=cfg.seed)
            z_val[p] = full
    if refit:
        yv = np.full((X_val.shape[0], len(pols)), np.nan)
        for k, p in enumerate(pols):
            if p in vidx:
                yv[vidx[p], k] = np.asarray(val_labels[p], dtype=float)[vidx[p]]
        X_fit, T_fit, W_fit = sparse.vstack([X_rows, X_val]).tocsr(), np.vstack([T, yv]), np.r_[W, np.ones(X_val.shape[0])]
    else:
        X_fit, T_fit, W_fit = X_rows, T, W
    fit = fit_lexical(X_fit, T_fit, W_fit, lcfg, C=cfg.lexical_C)
    steps.update()
    if X_val is not None:
        zv_all = fit.logits(X_val)
        for k, p in enumerate(pols):
            if p in val_labels and p not in z_val:
                z_val[p] = zv_all[:, k]
    z_test = {}
    if X_test is not None:
        zt = fit.logits(X_test)
        z_test = {p: zt[:, k] for k, p in enumerate(pols)}
    stacks: dict[str, dict[str, Any]] = {}
    for h in heads:
        if h.policy in z_val and h.policy in emb_val_logits and len(vidx.get(h.policy, ())):
            i = vidx[h.policy]
            stacks[h.policy] = fit_stack(np.asarray(emb_val_logits[h.policy])[i], z_val[h.policy][i],
                                         np.asarray(val_labels[h.policy])[i], cfg.calibration, seed=cfg.seed,
                                         sample_weight=example_weights(val, h.policy, cfg)[i] if h.policy in cfg.stack_weighted else None)
        else:  # no labelled val data for this policy: the embedding head alone, as before
            stacks[h.policy] = {"a": 1.0, "b": 0.0, "c": 0.0, "calibration": h.calibration}
    fit.model.save(Path(out_dir) / LEXICAL_NAME)
    steps.update()
    steps.close()
    return LexicalBlock(fit=fit, stacks=stacks, z={"val": z_val, "test": z_test}, C=cfg.lexical_C)
