"""The int8 gate of the fast tier: quantise ``model.onnx`` to ``model.int8.onnx`` and keep it only
when the val F1 drop is under :data:`INT8_MAX_F1_DROP` (both graphs scored by the served tier).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from safecascade.tiers.fast import FastTier
from safecascade.tiers.onnx_encoder import MODEL_NAME
from safecascade.training.export_onnx import quantize_int8
from safecascade.training.train_metrics import score_metrics
from safecascade.training.train_rows import example_labels, labelled

log = logging.getLogger(__name__)

INT8_MAX_F1_DROP = 0.005


def int8_measure(model_dir: str | Path, val: Sequence[Any], *, threads: int = 2) -> dict[str, Any]:
    """Quantise ``model_dir``'s graph to ``model.int8.onnx`` and score val through both graphs.

    Both are scored by the served :class:`~safecascade.tiers.fast.FastTier` on the same val texts
    (probability >= 0.5), so the F1 difference is quantisation alone. With several policies (val
    examples carrying ``labels`` per policy), every policy is measured on the texts labelled for it
    and the top-level figures are the worst policy's (largest F1 drop); ``per_policy`` has them all.
    """
    d = Path(model_dir)
    if not val:
        raise ValueError("the int8 gate needs a labelled val split")
    q = d / "model.int8.onnx"
    quantize_int8(d / MODEL_NAME, q)
    texts = [e.text for e in val]
    results = {}
    for quantized in (False, True):
        results[quantized] = FastTier(model_dir=d, threads=threads, quantized=quantized).classify(texts)
    pols = list(FastTier(model_dir=d, threads=threads).policies)
    per_policy: dict[str, dict[str, Any]] = {}
    for pol in pols:
        labels = example_labels(val, pol, first_policy=pols[0])
        idx = labelled(labels)
        if not len(idx):
            continue
        y = [labels[i] for i in idx]
        s32 = np.array([results[False][i].scores.get(pol, 0.0) for i in idx])
        s8 = np.array([results[True][i].scores.get(pol, 0.0) for i in idx])
        m32, m8 = score_metrics(y, s32), score_metrics(y, s8)
        per_policy[pol] = {"val_f1_fp32": float(m32["f1"]), "val_f1_int8": float(m8["f1"]), "f1_drop": float(m32["f1"] - m8["f1"]),
                           "val_recall_at_1pct_fpr_fp32": float(m32["recall_at_1pct_fpr"]),
                           "val_recall_at_1pct_fpr_int8": float(m8["recall_at_1pct_fpr"]),
                           "max_abs_prob_diff": float(np.abs(s32 - s8).max()), "n_val": len(idx)}
    if not per_policy:
        raise ValueError("the int8 gate needs val texts labelled for at least one of the model's policies")
    worst = max(per_policy, key=lambda p: per_policy[p]["f1_drop"])
    out = dict(per_policy[worst])
    out["n_val"] = len(texts)
    if len(per_policy) > 1:
        out["worst_policy"] = worst
        out["per_policy"] = per_policy
    out["size_mb"] = {"fp32": round((d / MODEL_NAME).stat().st_size / 1e6, 1), "int8": round(q.stat().st_size / 1e6, 1)}
    return out


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


def record_int8(card: dict[str, Any], gate: dict[str, Any]) -> None:
    """Write a gate result into a card: ``int8`` always, ``int8_model`` only when offered."""
    card["int8"] = gate
    if gate["offered"]:
        card["int8_model"] = "model.int8.onnx"
    else:
        card.pop("int8_model", None)
