"""Serving helpers shared by the ``fast`` and ``static`` tiers and the trainer: their common
options, tokenise, window, run ONNX.

No torch here: only ``tokenizers``, ``onnxruntime`` (both imported where used: the optional
``fast`` extra) and numpy.

Windowing: a text is tokenised without special tokens; its content tokens are cut into windows
of ``window_tokens - 2`` tokens (room for ``[CLS]``/``[SEP]``) whose starts are ``stride``
tokens apart, so consecutive windows overlap by ``window_tokens - 2 - stride`` tokens. When a
text needs more than ``max_windows`` windows, ``max_windows`` windows spread evenly over the
text (first and last always included) are scored and the result says ``truncated=True``:
nothing is cut silently.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

CARD_NAME = "card.json"
MODEL_NAME = "model.onnx"
TOKENIZER_NAME = "tokenizer.json"


@dataclass(frozen=True, kw_only=True)
class WindowConfig:
    """How texts are cut into encoder windows."""

    window_tokens: int = 256
    stride: int = 224
    max_windows: int = 8

    def __post_init__(self) -> None:
        if self.window_tokens < 8:
            raise ValueError(f"window_tokens must be >= 8, got {self.window_tokens}")
        if not (1 <= self.stride <= self.window_tokens - 2):
            raise ValueError(f"stride must be in [1, window_tokens-2={self.window_tokens - 2}], got {self.stride}")
        if self.max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {self.max_windows}")

    def to_dict(self) -> dict[str, int]:
        return {"window_tokens": self.window_tokens, "stride": self.stride, "max_windows": self.max_windows}


@dataclass(frozen=True, kw_only=True)
class EncoderOptions:
    """The options every windowed-encoder tier (``fast``, ``static``) takes in its ``options:``.

    The window settings default to the model card's (``window`` section); 0 also means the card's.
    """

    model: str | Path | None = "default"
    """``default`` (the model shipped in the package, checked against its provenance sha256s), a
    path to an artifact dir (relative to the config), or an MLflow model URI
    (``models:/safecascade-fast/1``, ``models:/safecascade-fast@champion``)."""
    max_windows: int | None = None
    """Cap on windows per text; beyond it evenly spread windows are scored and ``truncated`` is set."""
    window_tokens: int | None = None
    """Tokens per window, ``[CLS]``/``[SEP]`` included (the card's, 256 for the shipped models)."""
    stride: int | None = None
    """Tokens between window starts (the card's; at most ``window_tokens - 2``)."""


@dataclass(frozen=True, kw_only=True)
class Windows:
    """The windows of one text: token id arrays (with specials) and what happened."""

    ids: list[np.ndarray]  # empty when cut with ``with_ids=False`` (the static tier needs only ``starts``)
    tokens: int  # content tokens in the text
    n_windows_total: int  # windows the whole text needs
    truncated: bool  # True when the window cap dropped some windows
    empty: bool  # True when the text has no tokens at all
    notes: tuple[str, ...] = field(default_factory=tuple)
    content: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # all content token ids (no specials)
    starts: tuple[int, ...] = ()  # where each window's content starts in ``content`` (window k = content[s : s + body])
    offsets: np.ndarray | None = None  # [tokens, 2] each content token's character span, where cut ``with_offsets``

    def info(self) -> dict[str, Any]:
        d: dict[str, Any] = {"n_windows": len(self.starts), "tokens": self.tokens, "truncated": self.truncated}
        if self.truncated:
            d["n_windows_needed"] = self.n_windows_total
        if self.empty:
            d["empty_after_tokenization"] = True
        if self.notes:
            d["notes"] = list(self.notes)
        return d


class Windower:
    """Tokeniser + window cutter around a ``tokenizer.json`` (BERT-style ``[CLS]``/``[SEP]``)."""

    def __init__(self, tokenizer_path: str | Path, config: WindowConfig):
        from tokenizers import Tokenizer  # optional: the [fast] extra

        p = Path(tokenizer_path)
        try:
            self.tokenizer = Tokenizer.from_file(str(p))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"cannot load tokenizer {p}: {exc}") from exc
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.config = config
        cls_id = self.tokenizer.token_to_id("[CLS]")
        sep_id = self.tokenizer.token_to_id("[SEP]")
        if cls_id is None or sep_id is None:
            # Fall back to what the post-processor adds around an empty sequence.
            enc = self.tokenizer.encode("", add_special_tokens=True).ids
            cls_id = enc[0] if enc else 0
            sep_id = enc[-1] if enc else 0
        self.cls_id, self.sep_id = int(cls_id), int(sep_id)
        self.unk_id = self.tokenizer.token_to_id("[UNK]")

    def windows(self, texts: Sequence[str], *, with_ids: bool = True, with_offsets: bool = False) -> list[Windows]:
        """Cut each text into windows (batch tokenisation, then numpy slicing); ``with_ids=False``
        skips building the encoder's ``[CLS] … [SEP]`` id arrays. ``with_offsets``: record each
        token's character span (:attr:`Windows.offsets`) for the texts long enough to need more
        than one window (more characters than a window has tokens: nearly every multi-window text;
        the rest have ``offsets`` None), so a caller that maps windows back to the text tokenises
        once."""
        texts = list(texts)
        cfg = self.config
        body = cfg.window_tokens - 2
        # encode_batch_fast: the same ids without computing character offsets
        fast = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        with_spans = {i for i, t in enumerate(texts) if len(t) > body} if with_offsets else set()
        if with_spans:
            long = sorted(with_spans)
            short = [i for i in range(len(texts)) if i not in with_spans]
            encs: list[Any] = [None] * len(texts)
            for i, e in zip(long, self.tokenizer.encode_batch([texts[i] for i in long], add_special_tokens=False)):
                encs[i] = e
            for i, e in zip(short, fast([texts[i] for i in short], add_special_tokens=False) if short else []):
                encs[i] = e
        else:
            encs = fast(texts, add_special_tokens=False)
        out: list[Windows] = []
        for j, enc in enumerate(encs):
            ids = np.asarray(enc.ids, dtype=np.int64)
            n = int(ids.shape[0])
            notes: list[str] = []
            if n == 0:
                starts = [0]
                notes.append("no tokens after tokenisation: scored the empty window")
            else:
                starts = list(range(0, max(n - body, 0) + 1, cfg.stride))
                if starts[-1] + body < n:
                    starts.append(n - body)
            total = len(starts)
            truncated = False
            if total > cfg.max_windows:
                pick = np.unique(np.linspace(0, total - 1, cfg.max_windows).round().astype(int))
                starts = [starts[i] for i in pick]
                truncated = True
            if n and self.unk_id is not None:
                unk = enc.ids.count(self.unk_id) / n
                if unk >= 0.5:
                    notes.append(f"{unk:.0%} of tokens are unknown to the encoder's vocabulary (emoji / unsupported script)")
            wins = [np.concatenate(([self.cls_id], ids[s : s + body], [self.sep_id])).astype(np.int64) for s in starts] if with_ids else []
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2) if j in with_spans else None
            out.append(Windows(ids=wins, tokens=n, n_windows_total=total, truncated=truncated, empty=n == 0, notes=tuple(notes),
                               content=ids, starts=tuple(starts), offsets=offsets))
        return out


def make_session(model_path: str | Path, *, threads: int = 2) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads and full graph optimisation."""
    import onnxruntime as ort  # heavy, optional: the [fast] extra

    p = Path(model_path)
    if not p.is_file():
        raise ValueError(f"ONNX model not found: {p}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
        raise ValueError(f"cannot load ONNX model {p}: {exc}") from exc


def length_batches(sorted_lengths: Sequence[int], batch_size: int, *, growth: float = 1.5) -> list[tuple[int, int]]:
    """Cut length-sorted windows into batches of at most ``batch_size`` that pad little: a batch
    closes when the next window is more than ``growth`` times as long as its first one (so a
    batch's padding is under a third of its tokens; short texts no longer pad to 256 tokens
    because one long window shares their batch)."""
    out, start = [], 0
    for k, length in enumerate(sorted_lengths):
        if k > start and (k - start >= batch_size or length > growth * max(sorted_lengths[start], 8)):
            out.append((start, k))
            start = k
    if start < len(sorted_lengths):
        out.append((start, len(sorted_lengths)))
    return out


def run_windows(session: Any, windows: Sequence[np.ndarray], *, batch_size: int = 32, output: str | None = None,
                progress: bool = False, desc: str = "encoding") -> np.ndarray:
    """Run ``session`` over token windows (length-sorted, padded per batch, batches cut by
    :func:`length_batches`); returns rows in input order.

    ``output`` names the graph output to return (default: the first). A window that occurs more
    than once (a re-reading of a text that changed only its spacing or case, a repeated paragraph,
    the same text twice in a batch) is run once and its row copied.
    """
    first: dict[bytes, int] = {}
    unique: list[np.ndarray] = []
    where: list[int] = []
    for w in windows:
        j = first.setdefault(np.asarray(w, dtype=np.int64).tobytes(), len(unique))
        if j == len(unique):
            unique.append(w)
        where.append(j)
    if len(unique) < len(windows):
        rows = run_windows(session, unique, batch_size=batch_size, output=output, progress=progress, desc=desc)
        return rows[np.asarray(where, dtype=np.int64)]
    n = len(windows)
    names = [o.name for o in session.get_outputs()]
    out_name = output or names[0]
    if n == 0:
        shape = session.get_outputs()[names.index(out_name)].shape
        return np.zeros((0, shape[1] if isinstance(shape[1], int) else 0), dtype=np.float32)
    input_names = {i.name for i in session.get_inputs()}
    order = np.argsort([len(w) for w in windows], kind="stable")
    result: np.ndarray | None = None
    batches = length_batches([len(windows[i]) for i in order], batch_size)
    if progress:
        batches = tqdm(batches, desc=desc, unit="batch")
    for lo, hi in batches:
        idx = order[lo:hi]
        length = max(len(windows[i]) for i in idx)
        ids = np.zeros((len(idx), length), dtype=np.int64)
        mask = np.zeros((len(idx), length), dtype=np.int64)
        for r, i in enumerate(idx):
            w = windows[i]
            ids[r, : len(w)] = w
            mask[r, : len(w)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        vals = session.run([out_name], feeds)[0]
        if result is None:
            result = np.zeros((n,) + vals.shape[1:], dtype=vals.dtype)
        result[idx] = vals
    assert result is not None
    return result


def read_card(artifact_dir: str | Path) -> dict[str, Any]:
    """Read and check ``card.json`` of an artifact dir; ValueError naming the path and the reason."""
    d = Path(artifact_dir)
    p = d / CARD_NAME
    if not d.is_dir():
        raise ValueError(f"model artifact directory not found: {d}")
    if not p.is_file():
        raise ValueError(f"model card missing: {p}")
    try:
        card = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"model card {p} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict):
        raise ValueError(f"model card {p} must be a JSON object")
    for key in ("policies", "kind"):
        if key not in card:
            raise ValueError(f"model card {p} lacks the required key {key!r}")
    if not isinstance(card["policies"], list) or not card["policies"] or not all(isinstance(x, str) for x in card["policies"]):
        raise ValueError(f"model card {p}: 'policies' must be a non-empty list of names")
    return card
