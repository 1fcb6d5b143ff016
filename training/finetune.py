"""SetFit-style contrastive fine-tuning of the fast tier's encoder (optional, before export).

The encoder (a sentence-transformers model directory, all-MiniLM-L6-v2 by default) is tuned so
that texts with the same label embed close together and texts with different labels far apart:
pairs are sampled from the labelled training texts (half same-label, half cross-label, classes
balanced), and sentence-transformers' ``CosineSimilarityLoss`` pulls the cosine of each pair
towards 1 (same label) or 0 (different). Each pair member is **one token window of the text**,
cut exactly as the served tier cuts it (``Windower``), truncated to ``seq_len`` tokens, so the
encoder is tuned on the inputs it will see. The tuned model is saved as a normal
sentence-transformers directory (weights + ``tokenizer.json``) and goes through the usual ONNX
export; the head is then trained on the tuned encoder's embeddings.

This is slow on CPU (roughly 1-3 s per step of 16 pairs at 128 tokens on 2 cores), so it is an
option of ``safecascade train fast --finetune`` with a step count and a wall-clock cap, not part
of the default build. Only torch and sentence-transformers (the ``train`` extra) are used.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from safecascade.tiers.onnx_encoder import WindowConfig, Windower

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """How the encoder is tuned (logged with the training config)."""

    pairs: int = 4000  # pairs sampled (steps = pairs / batch_pairs)
    batch_pairs: int = 16
    seq_len: int = 128  # tokens per window during tuning (incl. [CLS]/[SEP])
    lr: float = 2e-5
    warmup: float = 0.1  # share of steps with a linear learning-rate warm-up
    max_seconds: float = 1200.0  # wall-clock cap; the card records the steps actually done
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        if self.pairs < 2 or self.batch_pairs < 1:
            raise ValueError(f"pairs must be >= 2 and batch_pairs >= 1, got {self.pairs}, {self.batch_pairs}")
        if not 8 <= self.seq_len <= 512:
            raise ValueError(f"seq_len must be in [8, 512], got {self.seq_len}")
        if not (0 < self.lr < 1):
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup}")
        if self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_pairs(labels: Sequence[int], n_pairs: int, *, seed: int = 0,
                 weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SetFit pair sampling: indices ``(a, b)`` and target similarity (1 same label, 0 different).

    Half the pairs are same-label (each class equally often), half cross-label; seeded. Labels
    beyond 0/1 (several policies: 0 benign, k = violates policy k) use :func:`sample_class_pairs`.
    """
    y = np.asarray(labels, dtype=int)
    if len(np.unique(y)) > 2 or y.max(initial=0) > 1:
        return sample_class_pairs(y, n_pairs, seed=seed, weights=weights)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError(f"contrastive fine-tuning needs at least 2 texts of each class (got {len(pos)} positive, {len(neg)} negative)")
    rng = np.random.default_rng(seed)
    a = np.empty(n_pairs, dtype=np.int64)
    b = np.empty(n_pairs, dtype=np.int64)
    sim = np.empty(n_pairs, dtype=np.float32)
    for i in range(n_pairs):
        kind = i % 4  # 0: pos-pos, 1: neg-neg, 2 and 3: pos-neg
        if kind == 0:
            a[i], b[i] = rng.choice(pos, 2, replace=False)
        elif kind == 1:
            a[i], b[i] = rng.choice(neg, 2, replace=False)
        else:
            a[i], b[i] = rng.choice(pos), rng.choice(neg)
        sim[i] = 1.0 if kind < 2 else 0.0
    order = rng.permutation(n_pairs)
    return a[order], b[order], sim[order]


def sample_class_pairs(labels: Sequence[int], n_pairs: int, *, seed: int = 0,
                       weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair sampling over several classes (0 = benign, 1..k = a violation of policy k): half the pairs
    same-class (the classes in turn), half cross-class, of which half pair a violation with a
    benign text and half two different violations; seeded. With ``weights`` (the rows' training
    weights) a class's texts are drawn in proportion to their weight (benign real user prompts more
    often, weakly labelled rows less)."""
    y = np.asarray(labels, dtype=int)
    classes = [c for c in np.unique(y) if (y == c).sum() >= 2]
    if 0 not in classes or len(classes) < 2:
        raise ValueError("contrastive fine-tuning needs at least 2 benign texts and 2 texts of one violation class")
    members = {c: np.flatnonzero(y == c) for c in classes}
    if weights is not None:
        wv = np.asarray(weights, dtype=np.float64)
        if wv.shape != y.shape or (wv < 0).any():
            raise ValueError(f"weights must be {len(y)} non-negative numbers")
        members = {c: m[wv[m] > 0] for c, m in members.items()}
        probs = {c: wv[m] / wv[m].sum() for c, m in members.items()}
    else:
        probs = {c: None for c in members}
    bad = [c for c in classes if c != 0]
    rng = np.random.default_rng(seed)
    a = np.empty(n_pairs, dtype=np.int64)
    b = np.empty(n_pairs, dtype=np.int64)
    sim = np.empty(n_pairs, dtype=np.float32)
    for i in range(n_pairs):
        kind = i % 4  # 0, 1: same class; 2: violation vs benign; 3: two different violations (or vs benign)
        if kind < 2:
            c = classes[(i // 4 * 2 + kind) % len(classes)]
            a[i], b[i] = rng.choice(members[c], 2, replace=False, p=probs[c])
            sim[i] = 1.0
            continue
        c1 = bad[(i // 4) % len(bad)]
        c2 = 0 if kind == 2 or len(bad) < 2 else bad[(bad.index(c1) + 1 + (i // 4) % (len(bad) - 1)) % len(bad)]
        a[i], b[i] = rng.choice(members[c1], p=probs[c1]), rng.choice(members[c2], p=probs[c2])
        sim[i] = 0.0
    order = rng.permutation(n_pairs)
    return a[order], b[order], sim[order]


def _features(windows: Sequence[np.ndarray]) -> dict[str, Any]:
    import torch  # heavy, optional (torch)

    length = max(len(w) for w in windows)
    ids = torch.zeros((len(windows), length), dtype=torch.long)
    mask = torch.zeros((len(windows), length), dtype=torch.long)
    for r, w in enumerate(windows):
        ids[r, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.int64))
        mask[r, : len(w)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def finetune_encoder(st_model: Any, texts: Sequence[str], labels: Sequence[int], *, tokenizer_path: str | Path,
                     cfg: FinetuneConfig, out_dir: str | Path, progress: bool = True,
                     weights: Sequence[float] | None = None) -> dict[str, Any]:
    """Tune ``st_model`` in place on pairs of windows and save it to ``out_dir``; returns a summary.

    ``weights``: per-text sampling weights for the pairs (several classes only: :func:`sample_class_pairs`).

    Each text contributes one window per pair draw, picked at random among its windows (seeded), so
    long jailbreaks are seen beyond their first ``seq_len`` tokens.
    """
    import torch  # heavy, optional (torch)
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss  # heavy, optional

    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    windower = Windower(tokenizer_path, WindowConfig(window_tokens=cfg.seq_len, stride=cfg.seq_len - 2, max_windows=64))
    wins = [w.ids for w in windower.windows(list(texts))]
    a, b, sim = sample_pairs(labels, cfg.pairs, seed=cfg.seed, weights=weights)
    rng = np.random.default_rng(cfg.seed + 1)
    steps = (cfg.pairs + cfg.batch_pairs - 1) // cfg.batch_pairs
    loss_fn = CosineSimilarityLoss(st_model)
    opt = torch.optim.AdamW(st_model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warm = max(1, int(cfg.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(steps - warm, 1)))
    st_model.train()
    t0 = time.perf_counter()
    losses: list[float] = []
    done = 0
    bar = tqdm(range(steps), desc="fine-tuning encoder", unit="step", disable=not progress)
    for step in bar:
        if time.perf_counter() - t0 > cfg.max_seconds:
            log.warning("fine-tuning stopped by the %.0f s cap after %d of %d steps", cfg.max_seconds, step, steps)
            break
        sl = slice(step * cfg.batch_pairs, (step + 1) * cfg.batch_pairs)
        wa = [wins[i][rng.integers(len(wins[i]))] for i in a[sl]]
        wb = [wins[i][rng.integers(len(wins[i]))] for i in b[sl]]
        loss = loss_fn([_features(wa), _features(wb)], torch.from_numpy(sim[sl]))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(st_model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        done = step + 1
        if progress and done % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
    bar.close()
    st_model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    st_model.save(str(out))
    secs = time.perf_counter() - t0
    summary = {"steps": done, "steps_planned": steps, "pairs_seen": done * cfg.batch_pairs, "seconds": round(secs, 1),
               "loss_first": round(float(np.mean(losses[:10])), 5) if losses else None,
               "loss_last": round(float(np.mean(losses[-10:])), 5) if losses else None, "config": cfg.to_dict()}
    log.info("fine-tuned encoder saved to %s: %s", out, summary)
    return summary
