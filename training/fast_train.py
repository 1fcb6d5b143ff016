"""Train the ``fast`` tier (ONNX MiniLM + head, optionally stacked with the lexical block), and
:func:`train_from_benchmark`, the entry point for both tiers on a labelled benchmark.

Data: labelled examples (hard 0/1 targets) and logged safeguard verdicts (soft targets, see
:mod:`safecascade.training.train_rows`). Heads and calibration: :mod:`safecascade.training.heads`;
the card: :mod:`safecascade.training.model_card`; the int8 gate:
:mod:`safecascade.training.int8_gate`; the static tier: :mod:`safecascade.training.static_train`;
the embedded defaults: :mod:`safecascade.training.default_models`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from safecascade.hashing import file_sha
from safecascade.tiers.onnx_encoder import MODEL_NAME, TOKENIZER_NAME, WindowConfig
from safecascade.training.datasets import benchmark_policy, load_benchmark
from safecascade.training.embed import WindowEmbedder
from safecascade.training.encoder import default_encoder_dir, encoder_fingerprint, finetuned_encoder, load_st
from safecascade.training.export_onnx import attach_heads, export_encoder
from safecascade.training.heads import text_logits, train_heads
from safecascade.training.int8_gate import int8_gate, int8_measure, record_int8
from safecascade.training.lexical_train import train_lexical_block
from safecascade.training.model_card import TrainResult, evaluate_and_card, write_card
from safecascade.training.multilingual_train import train_multilingual
from safecascade.training.policy_data import HEADS_ONLY, POLICIES, training_split
from safecascade.training.static_train import train_static
from safecascade.training.train_config import TrainConfig
from safecascade.training.train_rows import data_hash, prepare_rows, split_labels, stratified_limit

log = logging.getLogger(__name__)

POLICY_BENCHMARK = "policies"  # the multi-policy benchmark's name for train_from_benchmark / --benchmark


def train_fast(cfg: TrainConfig, *, train: Sequence[Any], val: Sequence[Any] = (), test: Sequence[Any] = (),
               verdicts: str | Path | None = None, out_dir: str | Path, progress: bool = True,
               cache_root: str | Path | None = None) -> TrainResult:
    """Train the fast tier and write its artifact dir (model.onnx, tokenizer.json, card.json).

    ``train``/``val``/``test`` are labelled examples: single-policy ones (``label``) for
    ``cfg.policies[0]``, or multi-policy ones (``labels`` per policy, e.g. the multi-policy
    benchmark of :mod:`safecascade.training.policy_data`), each used for the policies it is
    labelled for; ``verdicts`` a replay-format CSV of safeguard probabilities (soft targets, all
    policies it has columns for).
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = prepare_rows(cfg, train, verdicts)
    ft_info: dict[str, Any] = {}
    encoder = cfg.encoder
    if cfg.finetune and cfg.finetune_benchmark:
        fb_pol = benchmark_policy(cfg.finetune_benchmark)
        fb_cfg = cfg.for_policies((fb_pol,), benchmark=cfg.finetune_benchmark, limit=None, source_weights=())
        fb_rows = prepare_rows(fb_cfg, load_benchmark(cfg.finetune_benchmark, "train"), None)
        encoder, ft_info = finetuned_encoder(fb_cfg, fb_rows, progress=progress)
        ft_info = {**ft_info, "benchmark": cfg.finetune_benchmark}
    elif cfg.finetune:
        # the encoder is tuned on original texts at their usual weights; template paraphrases and
        # translations train the heads only, and weak labels weigh less only there (cfg.weak_label_weight)
        ft_rows = rows if cfg.weak_label_weight == 1.0 else prepare_rows(replace(cfg, weak_label_weight=1.0), train, verdicts)
        encoder, ft_info = finetuned_encoder(cfg, [r for r in ft_rows if not r.source.startswith(HEADS_ONLY)], progress=progress)
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
        val_labels = split_labels(cfg, val)
        test_labels = split_labels(cfg, test)
        heads, ests, calinfo = train_heads(cfg, train_embs, rows, val_embs, val_labels, progress)
        lexical = None
        if cfg.lexical and not val_labels:
            log.warning("lexical block skipped: stacking it needs a labelled val split")
        if cfg.lexical and val_labels:
            emb_val = {h.policy: calinfo[h.policy]["val_logits_oof"] if "val_logits_oof" in calinfo[h.policy] else text_logits(val_embs, h)
                       for h in heads if h.policy in val_labels}
            emb_test = {h.policy: text_logits(test_embs, h) for h in heads}
            lexical = train_lexical_block(cfg, embedder.windower, rows, val, val_labels, test, heads, emb_val, emb_test, out,
                                          progress=progress)
        attach_heads(enc_onnx, heads, out / MODEL_NAME)
        shutil.copyfile(tok, out / TOKENIZER_NAME)
    card, metrics, _, test_scores = evaluate_and_card(
        cfg, heads, calinfo, rows, verdicts, window, val_embs, val_labels, test_embs, test_labels,
        kind="fast", encoder={"id": enc_name, "sha": enc_sha, "dim": int(train_embs[0].shape[1]),
                              **({"path": str(enc_dir), "finetune": ft_info} if cfg.finetune else {})},
        extra={"model_sha": file_sha(out / MODEL_NAME, 16)}, lexical=lexical)
    write_card(out, card)
    if cfg.int8 and val:
        twin = (_int8_twin(cfg, train=train, val=val, verdicts=verdicts, cache_root=cache_root, progress=progress)
                if cfg.fit_on == "train+val" else None)
        record_int8(card, int8_gate(out, val, threads=cfg.threads, twin=twin))
    write_card(out, card)
    secs = time.perf_counter() - t_start
    log.info("fast tier written to %s in %.0fs", out, secs)
    return TrainResult(out_dir=out, card=card, metrics=metrics, config=cfg, seconds=secs,
                       test_scores=test_scores, test_labels=test_labels, heads=tuple(heads), estimators=tuple(ests),
                       lexical=lexical)


def _int8_twin(cfg: TrainConfig, *, train: Sequence[Any], val: Sequence[Any], verdicts: str | Path | None,
               cache_root: str | Path | None, progress: bool) -> dict[str, Any]:
    """The int8 measurement on a ``fit_on=train`` twin (same encoder and recipe; embeddings are
    cached, so this costs the heads and two val passes)."""
    with tempfile.TemporaryDirectory(prefix="int8-twin-") as td:
        train_fast(replace(cfg, fit_on="train", int8=False), train=train, val=val, verdicts=verdicts, out_dir=td,
                   progress=progress, cache_root=cache_root)
        return int8_measure(td, val, threads=cfg.threads)


def _benchmark_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` checked against its benchmark (a single-policy benchmark sets the one policy)."""
    if cfg.benchmark == POLICY_BENCHMARK:
        unknown = [p for p in cfg.policies if p not in POLICIES]
        if unknown:
            raise ValueError(f"the {POLICY_BENCHMARK!r} benchmark has the policies {list(POLICIES)}; not {unknown}")
        return cfg
    pol = benchmark_policy(cfg.benchmark)
    return cfg if cfg.policies == (pol,) else cfg.for_policies((pol,))


def _load_split(cfg: TrainConfig, split: str) -> list[Any]:
    return list(training_split(split, cfg.kind) if cfg.benchmark == POLICY_BENCHMARK else load_benchmark(cfg.benchmark, split))


def training_data_hash(cfg: TrainConfig) -> str:
    """The hash a model card records for the training rows ``cfg`` would train on today
    (``card["training_data"]["hash"]``, no verdicts): a changed benchmark changes it."""
    cfg = _benchmark_config(cfg)
    return data_hash(prepare_rows(cfg, _load_split(cfg, "train"), None))


def train_from_benchmark(cfg: TrainConfig, *, out_dir: str | Path, verdicts: str | Path | None = None,
                         progress: bool = True, with_test: bool = True, **kw: Any) -> TrainResult:
    """Train on ``cfg.benchmark``'s train split, calibrate on val, report on test (``with_test``).

    ``cfg.benchmark == "policies"`` is the multi-policy benchmark
    (:mod:`safecascade.training.policy_data`): one head per policy of ``cfg.policies`` (a subset of
    jailbreak, prompt_injection, harmful_request), each trained, calibrated and scored on the texts
    labelled for it."""
    cfg = _benchmark_config(cfg)
    train, val, test = (_load_split(cfg, s) for s in ("train", "val", "test"))
    if cfg.limit is not None:  # quick runs: cap every split, keeping the positive share
        val, test = stratified_limit(list(val), cfg.limit), stratified_limit(list(test), cfg.limit)
    if not with_test:
        test = []
    if cfg.kind == "multilingual":
        return train_multilingual(cfg, train=train, val=val, test=test, verdicts=verdicts, out_dir=out_dir, progress=progress, **kw)
    fn = train_fast if cfg.kind == "fast" else train_static
    return fn(cfg, train=train, val=val, test=test, verdicts=verdicts, out_dir=out_dir, progress=progress, **kw)
