"""Train the ``static`` tier: a model2vec embedding distilled from the encoder, with a head on top
(served with numpy alone by :mod:`safecascade.tiers.static`)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from safecascade.tiers.onnx_encoder import CARD_NAME, TOKENIZER_NAME
from safecascade.tiers.static import STATIC_EMB, StaticEncoder
from safecascade.training.encoder import default_encoder_dir, encoder_fingerprint
from safecascade.training.export_onnx import heads_to_npz
from safecascade.training.heads import train_heads
from safecascade.training.model_card import TrainResult, evaluate_and_card, write_card
from safecascade.training.train_config import TrainConfig
from safecascade.training.train_rows import prepare_rows, split_labels

log = logging.getLogger(__name__)


def distill_static(encoder: str = "default", *, dims: int = 256) -> tuple[np.ndarray, Path, dict[str, Any]]:
    """model2vec ``distill`` from the local encoder directory: (embedding matrix, tokenizer dir, config)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from model2vec.distill import distill  # heavy, optional (model2vec, torch)

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
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = prepare_rows(cfg, train, verdicts)
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
    val_labels = split_labels(cfg, val)
    test_labels = split_labels(cfg, test)
    heads, ests, calinfo = train_heads(cfg, train_embs, rows, val_embs, val_labels, progress)
    heads_to_npz(heads, out / "heads.npz")
    card, metrics, val_metrics, test_scores = evaluate_and_card(
        cfg, heads, calinfo, rows, verdicts, window, val_embs, val_labels, test_embs, test_labels,
        kind="static",
        encoder={"id": f"model2vec-distill({enc_name})", "teacher_sha": enc_sha, "dim": int(train_embs[0].shape[1])},
        extra={"normalize": normalize, "n_layers": {h.policy: len(h.layers) for h in heads}})
    write_card(out, card)
    secs = time.perf_counter() - t_start
    return TrainResult(out_dir=out, card=card, metrics=metrics, config=cfg, seconds=secs,
                       test_scores=test_scores, test_labels=test_labels, heads=tuple(heads), estimators=tuple(ests))
