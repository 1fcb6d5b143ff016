"""Test and smoke-check helpers: tiny real fast/static artifacts (:func:`build_tiny_models`) and
the training-time reference pipeline without ONNX (:func:`reference_scores`, for parity checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from safecascade.tiers.lexical import feature_matrix
from safecascade.tiers.onnx_encoder import TOKENIZER_NAME, WindowConfig, Windower
from safecascade.training.datasets import load_benchmark
from safecascade.training.encoder import load_st
from safecascade.training.export_onnx import torch_embed_windows
from safecascade.training.fast_train import train_fast
from safecascade.training.heads import sklearn_logit
from safecascade.training.lexical_train import stacked_scores
from safecascade.training.model_card import TrainResult
from safecascade.training.multilingual_train import train_multilingual
from safecascade.training.static_train import train_static
from safecascade.training.train_config import TrainConfig


def reference_scores(result: TrainResult, texts: Sequence[str], *, st_model: Any = None) -> dict[str, np.ndarray]:
    """The training-time pipeline, without ONNX: sentence-transformers (torch) on the same token
    windows -> the fitted sklearn head -> max over windows -> (stacked with the sklearn lexical
    model's logit) -> calibration. Used for parity checks."""
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
        z_lex = lex.fit.logits(feature_matrix([ws.content for ws in wins], texts, lex.fit.model.config))
    for k_pol, (head, est) in enumerate(zip(result.heads, result.estimators)):
        z = sklearn_logit(est, emb)
        res, k = np.zeros(len(texts)), 0
        for i, ws in enumerate(wins):
            res[i] = z[k : k + len(ws.ids)].max()  # calibration maps are monotone: max commutes
            k += len(ws.ids)
        if z_lex is not None:
            out[head.policy] = stacked_scores(res, z_lex[:, k_pol], lex.stacks[head.policy])
        else:
            out[head.policy] = head.calibration.apply(res)
    return out


def build_tiny_models(out_root: str | Path, *, n_train: int = 160, n_eval: int = 80, kinds: Sequence[str] = ("fast", "static"),
                      head: str = "lr", cache_root: str | Path | None = None, progress: bool = False) -> dict[str, TrainResult]:
    """Small real artifacts from the jailbreak benchmark (for tests and smoke checks; ~30 s on 2 cores;
    ``kinds`` may also name ``multilingual``).

    Uses the shortest texts of each split (cheap to embed) plus a few long jailbreaks.
    """

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
        if kind == "multilingual":
            out[kind] = train_multilingual(cfg, train=train, val=val, test=test, out_dir=root / kind, progress=progress)
            continue
        fn = train_fast if kind == "fast" else train_static
        kw = {"cache_root": cache_root} if kind == "fast" else {}
        out[kind] = fn(cfg, train=train, val=val, test=test, out_dir=root / kind, progress=progress, **kw)
    return out
