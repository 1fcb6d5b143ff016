"""A trained tier's model card (``card.json``) and what a training run returns (:class:`TrainResult`).

The card records the window layout, heads, calibration, val/test metrics (test at the val-best-F1
threshold), the training data's hash and the full :class:`~safecascade.training.train_config.TrainConfig`;
the fast and static trainers write it alike.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from safecascade.tiers.onnx_encoder import CARD_NAME, WindowConfig
from safecascade.training.heads import evaluate_heads
from safecascade.training.train_config import TrainConfig
from safecascade.training.train_metrics import best_f1_threshold
from safecascade.training.train_rows import TrainRow, data_hash, labelled


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What :func:`~safecascade.training.fast_train.train_fast` and
    :func:`~safecascade.training.static_train.train_static` return.

    Args:
        out_dir: The artifact directory written.
        card: The model card (also in ``out_dir/card.json``).
        metrics: ``{"val": {policy: metrics}, "test": {policy: metrics}}``.
        config: The training config.
        seconds: Wall-clock time of the run.
        test_scores: Per policy, the test split's calibrated scores.
        test_labels: Per policy, the test split's labels.
        heads: The calibrated HeadSpec per policy.
        estimators: The fitted sklearn heads (training-time reference).
        lexical: The :class:`~safecascade.training.lexical_train.LexicalBlock` when the fast tier stacks one.
    """

    out_dir: Path
    card: dict[str, Any]
    metrics: dict[str, Any]
    config: TrainConfig
    seconds: float
    test_scores: dict[str, list[float]] = field(default_factory=dict)
    test_labels: dict[str, list[int]] = field(default_factory=dict)
    heads: tuple[Any, ...] = ()
    estimators: tuple[Any, ...] = ()
    lexical: Any = None


def evaluate_and_card(cfg: TrainConfig, heads: Sequence[Any], calinfo: dict[str, Any], rows: Sequence[TrainRow],
                      verdicts: str | Path | None, window: WindowConfig, val_embs: list[np.ndarray],
                      val_labels: dict[str, list[int]], test_embs: list[np.ndarray], test_labels: dict[str, list[int]],
                      *, kind: str, encoder: dict[str, Any], extra: dict[str, Any],
                      lexical: Any = None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, list[float]]]:
    """Val/test metrics (test at the val-best-F1 threshold) and the model card shared by fast and static.

    Returns (card, ``{"val": ..., "test": ...}`` metrics, val metrics, test scores)."""
    val_metrics, val_scores = evaluate_heads(heads, val_embs, val_labels, lexical=lexical, split="val",
                                             oof_logits={p: c["val_logits_oof"] for p, c in calinfo.items() if "val_logits_oof" in c})
    thr = {}
    for p in val_metrics:  # policies with labelled val texts; the threshold from those texts only
        idx = labelled(val_labels[p])
        thr[p] = best_f1_threshold([val_labels[p][i] for i in idx], [val_scores[p][i] for i in idx])
    test_metrics, test_scores = evaluate_heads(heads, test_embs, test_labels, thr, lexical=lexical, split="test")
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


def write_card(out: Path, card: dict[str, Any]) -> None:
    """Write ``card`` as ``out/card.json`` (sorted keys, numpy scalars as floats)."""
    (out / CARD_NAME).write_text(json.dumps(card, indent=2, sort_keys=True, default=float), encoding="utf-8")
