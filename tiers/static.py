"""The ``static`` tier: a model2vec static-embedding model (distilled from the fast tier's
encoder) with its own per-policy head, served with ``tokenizers`` + numpy only.

A text's tokens (no special tokens, unknown tokens dropped, as model2vec does) are cut into the
same overlapping windows as the fast tier; each window's embedding is the mean of its token
vectors (L2-normalised when the card says so), each window is scored by the head, and the text
score is the max. Serving folds each head's first layer into the token table (the same scores
up to float32 rounding; see ``StaticTier.__init__``). Options: :class:`StaticOptions` (``model``:
default / path / models:/ URI, ``max_windows``, ``window_tokens``, ``stride``, as for the ``fast``
tier); an unknown key or a wrong type fails at load.

Artifact dir: ``static.npy`` (vocab x dim float32), ``tokenizer.json``, ``heads.npz``,
``card.json`` (policies, calibration per policy, window config).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from safecascade.tiers.base import TierResult, TierSpec, classify_strings
from safecascade.tiers.fast import resolve_model_dir
from safecascade.tiers.lexical import apply_calibration
from safecascade.tiers.retractions import model_readings
from safecascade.tiers.languages import unread_language
from safecascade.tiers.scripts import mostly_latin, tier_block_scores
from safecascade.tiers.segments import SEGMENT_TOKENS, may_have_parts, tokenizer_parts
from safecascade.tiers.onnx_encoder import TOKENIZER_NAME, EncoderOptions, WindowConfig, Windower, Windows, read_card

log = logging.getLogger(__name__)

STATIC_EMB = "static.npy"
# The cheap tier scores every window of a long text (a gather and a sum per window): up to 512
# windows, about 115,000 tokens, unless ``max_windows`` says otherwise.
STATIC_MAX_WINDOWS = 512
HEADS = "heads.npz"


@dataclass(frozen=True, kw_only=True)
class StaticOptions(EncoderOptions):
    """Options of a ``type: static`` tier: the encoder options (``model``, ``max_windows``,
    ``window_tokens``, ``stride``; see :class:`EncoderOptions`) and ``deobfuscate``."""

    deobfuscate: bool = True
    """Also score the decoded / normalised readings of a text that hides its content
    (:func:`safecascade.tiers.obfuscation.scoring_views`), each policy taking the maximum; without
    it an obfuscated attack could fall under the allow band here and never reach the fast tier."""

    allow_max_windows: int = 1
    """The tier's allow band applies only to texts of at most this many windows (0: every text).
    A short attack in a long document is diluted in its window's mean embedding, so a longer text
    is passed on (or blocked) rather than allowed here; the fast tier scores its paragraphs and
    lines on their own."""

    parts: bool = True
    """Also score a multi-line text's paragraphs and lines (:func:`safecascade.tiers.segments.line_segments`)
    on their own; the allow band is then tested on the highest of those scores and the text's
    (``TierResult.allow_scores``), so an instruction planted in an email, a web page or a tool's
    result is passed on rather than allowed for the benign text around it. They block only with
    ``block_parts``."""

    languages: tuple[str, ...] = ()
    """The languages this tier decides on (py3langid codes, e.g. ``[en]``); a text identified as
    another language (:func:`safecascade.tiers.languages.unread_language`, on the text and its decoded
    readings) is passed on, neither allowed nor blocked here (``info["not_read"]``), and a tier that
    combines this tier's evidence counts it at its ``fill``. Empty (the default): every language. The
    shipped static model is distilled from an English encoder: the presets set ``[en]``."""

    block_parts: bool = False
    """Also test the block band on the text's parts (those written mostly in the Latin script): a part
    that this tier would block on its own blocks the text it is in, and the policy's score is raised
    to it (``info["part_raised"]``). A short request planted in a benign document is then blocked
    here as it is blocked alone, not passed on diluted in the document's windows. Off in the shipped
    presets: retuned to keep the band's precision on val, the block bands rose and the plain block
    rate fell as much as the padded one rose (docs/policies.md, session 55)."""

    block_other_scripts: bool = False
    """Block a text written mostly outside the Latin script (:func:`safecascade.tiers.scripts.mostly_latin`)
    on this tier's score. Off: such a text is passed on instead (``TierResult.block_scores``; an
    obfuscated text's Latin reading still blocks). The shipped model's training texts in other
    scripts are nearly all violations, so its score there tells the script, not the request: it
    blocked 6 of 8 ordinary Hindi prompts of ours as prompt injection."""


class StaticEncoder:
    """Window embeddings from a static embedding matrix (numpy)."""

    def __init__(self, *, embedding: np.ndarray, tokenizer_path: str | Path, window: WindowConfig, normalize: bool = True):
        emb = np.asarray(embedding, dtype=np.float32)
        self.windower = Windower(tokenizer_path, window)
        vocab = self.windower.tokenizer.get_vocab_size()
        if emb.ndim != 2 or emb.shape[0] < vocab:
            raise ValueError(f"static embedding matrix {emb.shape} does not cover the tokenizer's {vocab} tokens")
        self.normalize = normalize
        # Dropped tokens (unknown, [CLS], [SEP]: model2vec skips them) get a zero row and a zero
        # count, so a window's mean is one gather of the text's tokens and a slice sum per window.
        self._keep = np.ones(emb.shape[0], dtype=np.int64)
        drop = [i for i in (self.windower.unk_id, self.windower.cls_id, self.windower.sep_id) if i is not None]
        self._keep[drop] = 0
        self.embedding = emb * self._keep[:, None].astype(np.float32)  # a copy: the caller's matrix is not touched

    @property
    def dim(self) -> int:
        """Width of a token vector."""
        return int(self.embedding.shape[1])

    def window_sums(self, wins: Sequence[Windows], table: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """For every window of the batch: the sum of ``table``'s rows over its tokens, and how many
        of its tokens are kept (``None`` when ``normalize``: L2 normalisation cancels the count);
        and each text's first window row (``offsets[i]:offsets[i + 1]`` are text i's rows).
        ``table`` has one row per token id, zero for the dropped ones, as :attr:`embedding` has."""
        body = self.windower.config.window_tokens - 2
        offsets = np.zeros(len(wins) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(ws.starts) for ws in wins])
        sums = np.zeros((int(offsets[-1]), table.shape[1]), dtype=np.float32)
        count = None if self.normalize else np.zeros(int(offsets[-1]), dtype=np.float32)
        for ws, r in zip(wins, offsets[:-1]):
            if not ws.tokens:
                continue  # the empty window stays a zero row
            rows = np.take(table, ws.content, axis=0)  # each token gathered once, also where windows overlap
            kept = None if count is None else self._keep[ws.content]
            for k, start in enumerate(ws.starts):
                end = min(start + body, ws.tokens)
                sums[r + k] = rows[start:end].sum(axis=0)
                if kept is not None and count is not None:  # kept is set exactly when count is
                    count[r + k] = kept[start:end].sum()
        return sums, count, offsets

    def window_scale(self, emb_sums: np.ndarray, count: np.ndarray | None) -> np.ndarray:
        """Per window, what its sum is divided by: the sum's norm when ``normalize`` (the mean's
        direction), else the kept-token count (the mean); a window with no kept token stays zero."""
        if count is None:
            return np.maximum(np.linalg.norm(emb_sums, axis=1), 1e-12)
        return np.maximum(count, 1.0)

    def window_matrix(self, texts: Sequence[str]) -> tuple[list[Any], np.ndarray, np.ndarray]:
        """The texts' windows, one embedding row per window of the whole batch (the mean of its
        kept token vectors, L2-normalised when ``normalize``), and each text's first row."""
        wins = self.windower.windows(texts, with_ids=False)
        m, count, offsets = self.window_sums(wins, self.embedding)
        m /= self.window_scale(m, count)[:, None]
        return wins, m, offsets

    def embed_windows(self, texts: Sequence[str]) -> tuple[list[Any], list[np.ndarray]]:
        """The texts' windows and each text's window-embedding matrix."""
        wins, m, offsets = self.window_matrix(texts)
        return wins, [m[a:b] for a, b in zip(offsets[:-1], offsets[1:])]

    def embed(self, texts: Sequence[str], *, progress: bool = False, batch: int = 512) -> list[np.ndarray]:
        """Window-embedding matrix per text (progress bar over batches)."""
        res: list[np.ndarray] = []
        for s in tqdm(range(0, len(texts), batch), desc="static embedding", disable=not progress, unit="batch"):
            res += self.embed_windows(texts[s : s + batch])[1]
        return res


class _NumpyHead:
    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]], calibration: dict[str, Any]):
        self.layers = layers
        self.cal = calibration
        apply_calibration(calibration, np.zeros(1))  # an unknown method fails at load

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for window embeddings ``x``."""
        w, b = self.layers[0]
        return self.after_first_layer(x.astype(np.float32) @ w + b)

    def after_first_layer(self, h: np.ndarray) -> np.ndarray:
        """Probabilities from the first layer's output (before its activation)."""
        for w, b in self.layers[1:]:
            h = np.maximum(h, 0.0) @ w + b
        return apply_calibration(self.cal, h[:, 0])


def numpy_heads(arrays: Any, card: dict[str, Any], *, where: str) -> dict[str, _NumpyHead]:
    """The heads of ``heads.npz`` (``arrays``: ``h<k>_W<i>``, ``h<k>_b<i>`` for the card's k-th
    policy) with their calibration from the card; a policy with no head fails, naming ``where``."""
    out: dict[str, _NumpyHead] = {}
    for k, pol in enumerate(card["policies"]):
        layers, i = [], 0
        while f"h{k}_W{i}" in arrays:
            layers.append((arrays[f"h{k}_W{i}"].astype(np.float32), arrays[f"h{k}_b{i}"].astype(np.float32)))
            i += 1
        if not layers:
            raise ValueError(f"{where} has no head for policy {pol!r}")
        out[pol] = _NumpyHead(layers, card.get("calibration", {}).get(pol, {"method": "none"}))
    return out


def load_numpy_heads(d: Path, card: dict[str, Any], *, tier: str, dim: int) -> dict[str, _NumpyHead]:
    """:func:`numpy_heads` of ``d/heads.npz``, each head checked to take ``dim`` inputs."""
    try:
        arrays = np.load(d / HEADS)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{tier}: cannot read {d / HEADS}: {exc}") from exc
    heads = numpy_heads(arrays, card, where=f"{tier}: {d / HEADS}")
    for pol, h in heads.items():
        if h.layers[0][0].shape[0] != dim:
            raise ValueError(f"{tier}: {d / HEADS} head {pol!r} takes {h.layers[0][0].shape[0]} inputs, the encoder gives {dim}")
    return heads


class StaticTier:
    """model2vec static embeddings + numpy head (see module doc)."""

    kind = "static"

    def __init__(self, *, model_dir: str | Path, name: str = "static", policies: Sequence[str] | None = None,
                 max_windows: int | None = None, window_tokens: int | None = None, stride: int | None = None, deobfuscate: bool = True,
                 allow_max_windows: int = 1, parts: bool = True, block_other_scripts: bool = False, languages: Sequence[str] = (),
                 block_parts: bool = False):
        if allow_max_windows < 0:
            raise ValueError(f"static tier {name!r}: allow_max_windows must be >= 0, got {allow_max_windows}")
        self.allow_max_windows = int(allow_max_windows)
        self.parts = bool(parts)
        self.block_other_scripts = bool(block_other_scripts)
        self.block_parts = bool(block_parts)
        self.languages = tuple(str(x) for x in languages)
        d = Path(model_dir)
        self.model_dir = d
        self.card = card = read_card(d)
        for fname in (STATIC_EMB, TOKENIZER_NAME, HEADS):
            if not (d / fname).is_file():
                raise ValueError(f"static tier {name!r}: {d / fname} missing")
        try:
            emb = np.load(d / STATIC_EMB)
            heads = np.load(d / HEADS)
        except (OSError, ValueError) as exc:
            raise ValueError(f"static tier {name!r}: cannot read arrays in {d}: {exc}") from exc
        win = card.get("window", {})
        wt = int(window_tokens or win.get("window_tokens", 256))
        cfg = WindowConfig(window_tokens=wt, stride=int(stride or min(win.get("stride", wt - 32), wt - 2)),
                           max_windows=int(max_windows or max(int(win.get("max_windows", 8)), STATIC_MAX_WINDOWS)))
        self.encoder = StaticEncoder(embedding=emb, tokenizer_path=d / TOKENIZER_NAME, window=cfg, normalize=bool(card.get("normalize", True)))
        card_pols = list(card["policies"])
        self.heads = numpy_heads(heads, card, where=f"static tier {name!r}: {d / HEADS}")
        if policies:
            missing = [p for p in policies if p not in card_pols]
            if missing:
                raise ValueError(f"static tier {name!r}: model {d} does not score policies {missing}; it scores {card_pols}")
            self.policies = tuple(policies)
        else:
            self.policies = tuple(card_pols)
        self.name = name
        self.deobfuscate = bool(deobfuscate)
        # Serving folds each head's first layer into the token table: a window's mean is linear in
        # its token rows, so mean @ W0 is the mean of the rows of E @ W0, and L2 normalisation only
        # rescales it. One gather of [E | E @ W0 per policy] then replaces a (windows x dim) @
        # (dim x hidden) product per batch, whose BLAS threads contend with the tokenizer's on few
        # cores (the static tier ran about 1.4x faster this way on 2 cores; docs/fast-tier.md).
        # The embedding's own columns are kept only where the scale needs them (the sum's norm
        # when normalising; otherwise the kept-token count scales and they would be summed for nothing).
        dim = self.encoder.dim
        self._emb_cols = dim if self.encoder.normalize else 0
        blocks = [self.encoder.embedding[:, : self._emb_cols]]
        self._first: dict[str, tuple[int, int]] = {}  # policy -> its columns of the table
        col = self._emb_cols
        for pol in self.policies:
            w0, _ = self.heads[pol].layers[0]
            if w0.shape[0] != dim:
                raise ValueError(f"static tier {name!r}: {d / HEADS} head {pol!r} takes {w0.shape[0]} inputs, "
                                 f"the embedding in {d / STATIC_EMB} has {dim} dims")
            blocks.append((self.encoder.embedding.astype(np.float64) @ w0.astype(np.float64)).astype(np.float32))
            self._first[pol] = (col, col + w0.shape[1])
            col += w0.shape[1]
        self._table = np.ascontiguousarray(np.concatenate(blocks, axis=1))

    @classmethod
    def from_spec(cls, spec: TierSpec) -> "StaticTier":
        """Build from a router config entry (options: :class:`StaticOptions`)."""
        o = spec.options_as(StaticOptions)
        d = resolve_model_dir(o.model, base_dir=spec.base_dir, kind=cls.kind, tier_name=spec.name)
        return cls(model_dir=d, name=spec.name, policies=list(spec.policies) or None, max_windows=o.max_windows,
                   window_tokens=o.window_tokens, stride=o.stride, deobfuscate=o.deobfuscate, allow_max_windows=o.allow_max_windows,
                   parts=o.parts, block_other_scripts=o.block_other_scripts, languages=o.languages,
                   block_parts=o.block_parts)

    def classify(self, texts: Sequence[str]) -> list[TierResult]:
        """Score each text (max over windows); bad items get ``error`` set."""
        t0 = time.perf_counter()
        return classify_strings(texts, kind="static", name=self.name, log=log, score=lambda idx: self._score(texts, idx, t0))

    def _score(self, texts: Sequence[str], idx: list[int], t0: float) -> dict[int, TierResult]:
        """The results of the ``str`` items ``idx`` of ``texts`` (see :meth:`classify`)."""
        results: dict[int, TierResult] = {}
        read = [model_readings(texts[i].encode("utf-8", errors="replace").decode("utf-8"), deobfuscate=self.deobfuscate)
                for i in idx]
        good, views = [r for r, _ in read], [vs for _, vs in read]
        good = good + [v for vs in views for v in vs]
        wins = self.encoder.windower.windows(good, with_ids=False)
        # the parts of the texts that may be allowed here (a longer one never is), and with block_parts
        # of every text (its block band is tested on them too)
        parts = [self._parts(t) if self.block_parts or not self.allow_max_windows or len(ws.starts) <= self.allow_max_windows else []
                 for t, ws in zip(good[: len(idx)], wins)]
        flat_parts = [q for ps in parts for q in ps]
        if flat_parts:
            wins = wins + self.encoder.windower.windows(flat_parts, with_ids=False)
        sums, count, offsets = self.encoder.window_sums(wins, self._table)
        scale = self.encoder.window_scale(sums[:, : self._emb_cols], count)
        top = {}
        for p in self.policies:
            lo, hi = self._first[p]
            first = sums[:, lo:hi] / scale[:, None] + self.heads[p].layers[0][1]
            # every text has at least one window (an empty text scores its empty window)
            top[p] = np.clip(np.maximum.reduceat(self.heads[p].after_first_layer(first), offsets[:-1]), 0.0, 1.0)
        per = (time.perf_counter() - t0) * 1000.0 / len(idx)
        k_view = len(idx)
        k_part = len(good)  # the parts' rows follow the texts' and the views'
        for j, (i, ws) in enumerate(zip(idx, wins)):
            n = int(offsets[j + 1] - offsets[j])
            scores = {p: float(top[p][j]) for p in self.policies}
            reading_scores = [dict(scores)]
            info = ws.info()
            if views[j]:
                raised = False
                for k in range(k_view, k_view + len(views[j])):
                    reading_scores.append({p: float(top[p][k]) for p in self.policies})
                    for p in self.policies:
                        if float(top[p][k]) > scores[p]:
                            scores[p], raised = float(top[p][k]), True
                info["views"], info["view_raised"] = len(views[j]), raised
                k_view += len(views[j])
            # what may block: the readings in a script this tier reads (see block_other_scripts)
            block_scores = tier_block_scores([good[j], *views[j]], reading_scores, scores, info,
                                             block_other_scripts=self.block_other_scripts)
            allow_scores: dict[str, float] = {}
            if parts[j]:  # the allow band is tested on the highest of the text's and its parts' scores
                rows = slice(k_part, k_part + len(parts[j]))  # the parts' rows of ``top``
                part_scores = {p: float(top[p][rows].max()) for p in self.policies}
                info["parts"] = len(parts[j])
                info["part_scores"] = {p: round(v, 4) for p, v in part_scores.items()}
                allow_scores = {p: max(scores[p], v) for p, v in part_scores.items()}
                if self.block_parts:  # a part blocks as it would alone (one in the Latin script: see block_other_scripts)
                    latin = np.array([mostly_latin(q) for q in parts[j]])
                    if latin.any():
                        for p in self.policies:
                            v = float(top[p][rows][latin].max())
                            if v > block_scores.get(p, scores[p]):
                                scores[p] = max(scores[p], v)
                                block_scores[p] = v
                                info["part_raised"] = True
                k_part += len(parts[j])
            if self.allow_max_windows and n > self.allow_max_windows:
                info["allow_band_skipped"] = f"{n} windows > allow_max_windows {self.allow_max_windows}"
                # read only in windows, where a short request is diluted (router/combine.py)
                info["parts_skipped"] = True
                allow_scores = {p: math.inf for p in self.policies}
            unread = unread_language([good[j], *views[j]], self.languages)
            if unread is not None:  # a language this tier does not read: passed on
                info["not_read"] = f"language {unread}"
                allow_scores = {p: math.inf for p in self.policies}
                block_scores = {p: 0.0 for p in self.policies}
            results[i] = TierResult(scores=scores, info=info, latency_ms=per, allow_scores=allow_scores, block_scores=block_scores,
                                    warnings=("truncated_windows",) if ws.truncated else (),
                                    cost={"windows": float(n), "tokens": float(ws.tokens)})
        return results

    def _parts(self, text: str) -> list[str]:
        """The paragraphs and lines of a multi-line text (none when ``parts`` is off)."""
        if not self.parts or not may_have_parts(text):
            return []
        return tokenizer_parts(text, self.encoder.windower.tokenizer, SEGMENT_TOKENS)

    def close(self) -> None:
        """Nothing to release."""
