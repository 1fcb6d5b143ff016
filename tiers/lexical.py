"""Hashed lexical features for the fast tier: word-piece and character n-grams -> TF-IDF -> linear logit.

The embedding head sees meaning; this block sees surface form (the exact phrases, markup and
character tricks jailbreak templates reuse). Both run on every text the fast tier scores and are
stacked into one logit (see ``tiers/fast.py``). Serving needs numpy only:

* **word-piece n-grams** (``word_ngrams``, default 1-3) over the token ids the fast tier's
  tokenizer already produced for its windows (so no second tokenisation);
* **character n-grams** (``char_ngrams``, default 3-5) over the lower-cased text with whitespace
  runs collapsed to one space (first ``max_chars`` characters; beyond that the result says so);
* every n-gram is hashed (a 64-bit multiply-xor mix of its ids / code points, a different seed
  per kind and length, then a splitmix64 finaliser) into ``buckets`` slots; counts become
  ``1 + ln(count)``, are multiplied by the slot's IDF from training and L2-normalised;
* the logit is ``weights . x + bias`` per policy.

The same :func:`features` function builds the training matrix, so training and serving cannot
drift apart. Hash collisions are the price of a fixed-size model with no vocabulary to ship.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

LEXICAL_NAME = "lexical.npz"

_PRIME = np.uint64(0x100000001B3)
_SEEDS = {("w", n): np.uint64(0x9E3779B97F4A7C15 ^ (n * 0x1000193)) for n in range(1, 9)}
_SEEDS.update({("c", n): np.uint64(0xC2B2AE3D27D4EB4F ^ (n * 0x1000193)) for n in range(1, 9)})


@dataclass(frozen=True, kw_only=True)
class LexicalConfig:
    """How texts become hashed n-gram features (stored in the model card)."""

    buckets: int = 1 << 20
    word_ngrams: tuple[int, int] = (1, 3)
    char_ngrams: tuple[int, int] = (3, 5)
    max_chars: int = 100_000

    def __post_init__(self) -> None:
        if not 2 <= self.buckets <= 1 << 26:
            raise ValueError(f"buckets must be in [2, 2**26], got {self.buckets}")
        for name, (lo, hi) in (("word_ngrams", self.word_ngrams), ("char_ngrams", self.char_ngrams)):
            if not (0 <= lo <= hi <= 8) or (lo == 0) != (hi == 0):
                raise ValueError(f"{name} must be (lo, hi) with 1 <= lo <= hi <= 8, or (0, 0) to disable; got {(lo, hi)}")
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {self.max_chars}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["word_ngrams"], d["char_ngrams"] = list(self.word_ngrams), list(self.char_ngrams)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LexicalConfig":
        return cls(buckets=int(d["buckets"]), word_ngrams=tuple(d["word_ngrams"]), char_ngrams=tuple(d["char_ngrams"]),
                   max_chars=int(d.get("max_chars", 100_000)))


def _finalise(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the multiply-xor hash over all 64 bits."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _ngram_hashes(seq: np.ndarray, lo: int, hi: int, kind: str) -> list[np.ndarray]:
    out = []
    n_seq = int(seq.shape[0])
    for n in range(lo, hi + 1):
        m = n_seq - n + 1
        if m <= 0:
            break
        h = np.full(m, _SEEDS[(kind, n)], dtype=np.uint64)
        for k in range(n):
            h = (h ^ seq[k : k + m]) * _PRIME
        out.append(h)
    return out


def char_codes(text: str, max_chars: int) -> tuple[np.ndarray, bool]:
    """Code points of the normalised text (lower case, whitespace runs -> one space), capped."""
    norm = " ".join(text.lower().split())
    cut = len(norm) > max_chars
    if cut:
        norm = norm[:max_chars]
    codes = np.frombuffer(norm.encode("utf-32-le", errors="replace"), dtype=np.uint32).astype(np.uint64)
    return codes, cut


def features(token_ids: np.ndarray, text: str, cfg: LexicalConfig) -> tuple[np.ndarray, np.ndarray, bool]:
    """Sparse features of one text: (bucket indices, sublinear tf values, chars_cut)."""
    with np.errstate(over="ignore"):
        parts: list[np.ndarray] = []
        if cfg.word_ngrams[0]:
            parts += _ngram_hashes(np.asarray(token_ids, dtype=np.int64).astype(np.uint64), *cfg.word_ngrams, "w")
        cut = False
        if cfg.char_ngrams[0]:
            codes, cut = char_codes(text, cfg.max_chars)
            parts += _ngram_hashes(codes, *cfg.char_ngrams, "c")
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), cut
        b = (_finalise(np.concatenate(parts)) % np.uint64(cfg.buckets)).astype(np.int64)
    idx, counts = np.unique(b, return_counts=True)
    return idx, (1.0 + np.log(counts)).astype(np.float32), cut


@dataclass(frozen=True)
class LexicalModel:
    """IDF weights and per-policy linear weights over the hashed buckets (numpy only)."""

    config: LexicalConfig
    idf: np.ndarray  # [buckets] float32
    weights: np.ndarray  # [n_policies, buckets] float32
    bias: np.ndarray  # [n_policies] float64

    def vector(self, idx: np.ndarray, tf: np.ndarray) -> np.ndarray:
        """TF-IDF values of the present buckets, L2-normalised (float64)."""
        v = tf.astype(np.float64) * self.idf[idx]
        n = float(np.sqrt(np.dot(v, v)))
        return v / n if n > 0 else v

    def logits(self, idx: np.ndarray, tf: np.ndarray) -> np.ndarray:
        """Per-policy logits of one text's features, shape [n_policies]."""
        v = self.vector(idx, tf)
        return self.weights[:, idx].astype(np.float64) @ v + self.bias

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, idf=self.idf.astype(np.float32), weights=self.weights.astype(np.float32),
                            bias=np.asarray(self.bias, np.float64))

    @classmethod
    def load(cls, path: str | Path, config: LexicalConfig, n_policies: int) -> "LexicalModel":
        """Load ``lexical.npz``; a missing or malformed file fails with the path and the reason."""
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"lexical model missing: {p}")
        try:
            with np.load(p) as z:
                idf, w, b = z["idf"], z["weights"], z["bias"]
        except Exception as exc:
            raise ValueError(f"cannot read lexical model {p}: {type(exc).__name__}: {exc}") from exc
        if idf.shape != (config.buckets,) or w.shape != (n_policies, config.buckets) or b.shape != (n_policies,):
            raise ValueError(f"lexical model {p}: shapes idf {idf.shape}, weights {w.shape}, bias {b.shape} do not match "
                             f"{config.buckets} buckets x {n_policies} policies from the card")
        return cls(config=config, idf=idf, weights=w, bias=b.astype(np.float64))


def feature_matrix(token_ids: Sequence[np.ndarray], texts: Sequence[str], cfg: LexicalConfig) -> Any:
    """Raw (tf, not yet IDF-weighted) CSR matrix [n_texts, buckets] for training (scipy)."""
    from scipy import sparse  # heavy, optional: training only (the [train] extra)

    indptr, indices, data = [0], [], []
    for ids, t in zip(token_ids, texts):
        idx, tf, _ = features(ids, t, cfg)
        indices.append(idx)
        data.append(tf)
        indptr.append(indptr[-1] + len(idx))
    ind = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    dat = np.concatenate(data) if data else np.zeros(0, np.float32)
    return sparse.csr_matrix((dat, ind, np.asarray(indptr)), shape=(len(texts), cfg.buckets))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large |x|."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def apply_calibration(cal: Mapping[str, Any], z: np.ndarray) -> np.ndarray:
    """A card's calibration map (platt | isotonic | none) applied to logits, numpy only."""
    z = np.asarray(z, dtype=np.float64)
    m = cal.get("method")
    if m == "platt":
        return sigmoid(float(cal["a"]) * z + float(cal["b"]))
    if m == "isotonic":
        return np.interp(z, np.asarray(cal["x"], np.float64), np.asarray(cal["y"], np.float64))
    if m == "none":
        return sigmoid(z)
    raise ValueError(f"unknown calibration method {m!r}")


@dataclass(frozen=True)
class Stack:
    """``p = calibration(a * z_embedding + b * z_lexical + c)`` for one policy (from the card)."""

    a: float
    b: float
    c: float
    calibration: Mapping[str, Any]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "card") -> "Stack":
        try:
            st = cls(a=float(d["a"]), b=float(d["b"]), c=float(d["c"]), calibration=dict(d["calibration"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: malformed stack entry {d!r}: {exc}") from exc
        apply_calibration(st.calibration, np.zeros(1))  # unknown methods fail at load, not per request
        return st

    def apply(self, z_emb: np.ndarray, z_lex: np.ndarray) -> np.ndarray:
        return apply_calibration(self.calibration, self.a * np.asarray(z_emb, np.float64) + self.b * np.asarray(z_lex, np.float64) + self.c)
