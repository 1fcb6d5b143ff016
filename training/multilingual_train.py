"""Train the ``multilingual`` tier: a head per policy on USE-multilingual v3 embeddings (served with
numpy alone by :mod:`safecascade.tiers.multilingual`).

The encoder is not fine-tuned: each training text is embedded once (its first ``max_chars``
characters, as the tier reads it; with ``lowercase_copies`` its lower-cased reading too, a second
window of the row) and the heads, their calibration on val and the card are the
static tier's (:func:`safecascade.training.heads.train_heads`, ``heads.npz``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from safecascade.tiers.multilingual import DIM, ENCODER_ID, ENCODER_PACKAGE, MAX_CHARS, TOKENIZER_PACKAGE, UseEncoder
from safecascade.training.export_onnx import heads_to_npz
from safecascade.training.heads import train_heads
from safecascade.training.model_card import TrainResult, evaluate_and_card, write_card
from safecascade.training.train_config import TrainConfig
from safecascade.training.train_rows import prepare_rows, split_labels

log = logging.getLogger(__name__)


def window_embeddings(enc: UseEncoder, texts: Sequence[str], progress: bool, *, lowercase_copies: bool = False) -> list[np.ndarray]:
    """One ``(1, DIM)`` window per text (its first ``MAX_CHARS`` characters); with
    ``lowercase_copies`` a text whose lower-cased reading differs gets that reading as a second window."""
    cut = [t[:MAX_CHARS] for t in texts]
    extra = [i for i, t in enumerate(cut) if lowercase_copies and t.lower() != t]
    m = enc.embed(cut + [cut[i].lower() for i in extra], progress=progress)
    second = {i: len(cut) + k for k, i in enumerate(extra)}
    return [m[[i, second[i]]] if i in second else m[i:i + 1] for i in range(len(cut))]


def train_multilingual(cfg: TrainConfig, *, train: Sequence[Any], val: Sequence[Any] = (), test: Sequence[Any] = (),
                       verdicts: str | Path | None = None, out_dir: str | Path, progress: bool = True) -> TrainResult:
    """Train the multilingual tier's heads and write its artifact dir (``heads.npz``, ``card.json``);
    the same data as the other tiers (``train``/``val``/``test`` labelled examples, ``verdicts`` a
    replay-format CSV of safeguard probabilities)."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = prepare_rows(cfg, train, verdicts)
    enc = UseEncoder(threads=cfg.threads)
    version = enc.version()
    train_embs = window_embeddings(enc, [r.text for r in rows], progress, lowercase_copies=cfg.lowercase_copies)
    val_embs = window_embeddings(enc, [e.text for e in val], progress) if val else []
    test_embs = window_embeddings(enc, [e.text for e in test], progress) if test else []
    val_labels = split_labels(cfg, val)
    test_labels = split_labels(cfg, test)
    heads, ests, calinfo = train_heads(cfg, train_embs, rows, val_embs, val_labels, progress)
    heads_to_npz(heads, out / "heads.npz")
    card, metrics, _, test_scores = evaluate_and_card(
        cfg, heads, calinfo, rows, verdicts, cfg.window, val_embs, val_labels, test_embs, test_labels,
        kind="multilingual", encoder={"id": ENCODER_ID, "package": f"{ENCODER_PACKAGE}=={version}", "dim": DIM,
                                     "tokenizer": f"{TOKENIZER_PACKAGE}=={enc.tokenizer_version()}"},
        extra={"max_chars": MAX_CHARS, "n_layers": {h.policy: len(h.layers) for h in heads}})
    write_card(out, card)
    secs = time.perf_counter() - t_start
    log.info("multilingual tier written to %s in %.0fs", out, secs)
    return TrainResult(out_dir=out, card=card, metrics=metrics, config=cfg, seconds=secs,
                       test_scores=test_scores, test_labels=test_labels, heads=tuple(heads), estimators=tuple(ests))
