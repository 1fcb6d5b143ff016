"""The ``fast`` tier: one ONNX graph (encoder -> mean pooling -> L2 norm -> per-policy head ->
calibrated probability) served with ``tokenizers`` + ``onnxruntime`` + numpy; no torch.

Options: :class:`FastOptions` (``model``, ``threads``, ``max_windows``, ``window_tokens``,
``stride``, ``batch_size``, ``quantized``); an unknown key or a wrong type fails at load.

Long texts are cut into overlapping windows, each window is scored, and the maximum is the
text's score; ``TierResult.info`` reports ``n_windows``, ``tokens`` and ``truncated``.

When the card has a ``lexical`` section (the default since card format 2), the text's word-piece
and character n-grams are also scored by a hashed TF-IDF linear model (``tiers/lexical.py``,
numpy) and the two logits are stacked: ``p = calibration(a * max_window_logit + b * lexical_logit
+ c)`` with ``a, b, c`` and the calibration from the card's ``stack`` section. ``info`` then also
holds ``embedding_logit`` and ``lexical_logit`` (and ``lexical_chars_cut`` when the text was
longer than the lexical block's character cap).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from safecascade.mlflow_store import download_model_dir
from safecascade.shipped import PROVENANCE, ShippedModelError, shipped_dir, verify_dir
from safecascade.tiers.base import TierResult, TierSpec
from safecascade.tiers.lexical import LEXICAL_NAME, LexicalConfig, LexicalModel, Stack, features
from safecascade.tiers.onnx_encoder import (
    MODEL_NAME,
    TOKENIZER_NAME,
    EncoderOptions,
    WindowConfig,
    Windower,
    make_session,
    read_card,
    run_windows,
)

log = logging.getLogger(__name__)


def _verified(d: Path, *, kind: str, tier_name: str) -> Path:
    """``d`` after checking it against its provenance sha256s (a shipped model or a copy of one)."""
    try:
        verify_dir(d)
    except ShippedModelError as exc:
        raise ShippedModelError(f"{kind} tier {tier_name!r}: the model is not usable: {exc}") from exc
    return d


def resolve_model_dir(model: Any, *, base_dir: Path, kind: str, tier_name: str) -> Path:
    """Turn the ``model`` option into an artifact directory (default / path / models:/ URI).

    ``default`` is the model shipped in the package; it, and any directory with a
    ``provenance.json`` (a copy of one), is checked file by file against the recorded sha256s."""
    if model is None or model == "default":
        return _verified(shipped_dir(kind), kind=kind, tier_name=tier_name)
    if not isinstance(model, (str, Path)):
        raise ValueError(f"{kind} tier {tier_name!r}: options.model must be 'default', a path or a models:/ URI, got {model!r}")
    s = str(model)
    if s.startswith("models:/"):
        return download_model_dir(s)
    p = Path(s).expanduser()
    p = p if p.is_absolute() else base_dir / p
    return _verified(p, kind=kind, tier_name=tier_name) if (p / PROVENANCE).is_file() else p


@dataclass(frozen=True, kw_only=True)
class FastOptions(EncoderOptions):
    """Options of a ``type: fast`` tier: the encoder options (``model``, ``max_windows``,
    ``window_tokens``, ``stride``) and these."""

    threads: int = 2
    """onnxruntime intra-op threads."""
    batch_size: int = 32
    """Windows per ONNX call for the fp32 graph (the int8 graph always runs one: its dynamic
    quantisation would let batch-mates change a text's score)."""
    quantized: bool | Literal["auto"] = False
    """``true``: serve ``model.int8.onnx`` (an error if the artifact has none); ``auto``: serve it
    when the card offers one (it passed the val F1 gate), else fp32; ``false``: fp32."""


class FastTier:
    """ONNX embedding classifier over windows of the text (see module doc)."""

    kind = "fast"

    def __init__(self, *, model_dir: str | Path, name: str = "fast", policies: Sequence[str] | None = None,
                 threads: int = 2, max_windows: int | None = None, window_tokens: int | None = None,
                 stride: int | None = None, batch_size: int = 32, quantized: bool | str = False):
        d = Path(model_dir)
        self.model_dir = d
        self.card = read_card(d)
        if quantized not in (True, False, "auto"):
            raise ValueError(f"fast tier {name!r}: quantized must be true, false or auto, got {quantized!r}")
        int8_name = self.card.get("int8_model")
        if quantized == "auto":
            quantized = bool(int8_name) and (d / str(int8_name)).is_file()
        onnx_path = d / (str(int8_name or "model.int8.onnx") if quantized else MODEL_NAME)
        tok_path = d / TOKENIZER_NAME
        if not tok_path.is_file():
            raise ValueError(f"fast tier {name!r}: tokenizer missing: {tok_path}")
        if not onnx_path.is_file():
            raise ValueError(f"fast tier {name!r}: ONNX model missing: {onnx_path}")
        win = self.card.get("window", {})
        wt = int(window_tokens or win.get("window_tokens", 256))
        cfg = WindowConfig(window_tokens=wt, stride=int(stride or min(win.get("stride", wt - 32), wt - 2)),
                           max_windows=int(max_windows or win.get("max_windows", 8)))
        self.windower = Windower(tok_path, cfg)
        self.session = make_session(onnx_path, threads=threads)
        outs = [o.name for o in self.session.get_outputs()]
        if "probs" not in outs:
            raise ValueError(f"fast tier {name!r}: {onnx_path} has no 'probs' output (outputs: {outs})")
        card_pols = list(self.card["policies"])
        if policies:
            missing = [p for p in policies if p not in card_pols]
            if missing:
                raise ValueError(f"fast tier {name!r}: model {d} does not score policies {missing}; it scores {card_pols}")
            self.policies = tuple(policies)
        else:
            self.policies = tuple(card_pols)
        self._col = {p: card_pols.index(p) for p in self.policies}
        self.lexical: LexicalModel | None = None
        self.stacks: dict[str, Stack] = {}
        if "lexical" in self.card:
            self._load_lexical(d, name, outs, card_pols)
        self.name = name
        self.quantized = bool(quantized)  # True when the int8 graph is served
        # Windows per ONNX call. The int8 graph quantises activations dynamically, with one scale
        # per call computed over the whole input tensor, so windows sharing a call (and their
        # padding) would change each other's scores: by up to 0.08 in probability on the benchmark's
        # test split, enough to flip decisions with the traffic a text is batched with. One window per
        # call makes a text's int8 score depend on the text alone (and costs nothing on long texts,
        # which no longer pay for padding); fp32 batches are batch-invariant (1e-9) and keep batching.
        self.batch_size = 1 if self.quantized else batch_size
        if self.quantized and batch_size != 1:
            log.debug("fast tier %r: int8 graph served one window per call (batch_size %d ignored)", name, batch_size)

    def _load_lexical(self, d: Path, name: str, outs: list[str], card_pols: list[str]) -> None:
        where = f"fast tier {name!r}: {d / 'card.json'}"
        lc = self.card["lexical"]
        if not isinstance(lc, dict) or "config" not in lc:
            raise ValueError(f"{where}: 'lexical' must be an object with a 'config'")
        if "logits" not in outs:
            raise ValueError(f"{where}: the card has a lexical block but the ONNX graph has no 'logits' output (outputs: {outs})")
        try:
            cfg = LexicalConfig.from_dict(lc["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: bad lexical config {lc['config']!r}: {exc}") from exc
        self.lexical = LexicalModel.load(d / lc.get("file", LEXICAL_NAME), cfg, len(card_pols))
        stacks = self.card.get("stack")
        if not isinstance(stacks, dict):
            raise ValueError(f"{where}: a lexical block needs a 'stack' object")
        for p in self.policies:
            if p not in stacks:
                raise ValueError(f"{where}: no stack entry for policy {p!r}")
            self.stacks[p] = Stack.from_dict(stacks[p], where=where)

    @classmethod
    def from_spec(cls, spec: TierSpec) -> "FastTier":
        """Build from a router config entry (options: :class:`FastOptions`)."""
        o = spec.options_as(FastOptions)
        d = resolve_model_dir(o.model, base_dir=spec.base_dir, kind=cls.kind, tier_name=spec.name)
        return cls(model_dir=d, name=spec.name, policies=list(spec.policies) or None, threads=o.threads,
                   max_windows=o.max_windows, window_tokens=o.window_tokens, stride=o.stride,
                   batch_size=o.batch_size, quantized=o.quantized)

    def window_probs(self, texts: Sequence[str]) -> tuple[list[Any], list[np.ndarray]]:
        """Windows of each text and the per-window matrix [n_windows, n_policies]: calibrated
        probabilities, or the heads' raw logits when the model stacks a lexical block."""
        wins = self.windower.windows(texts)
        flat = [w for ws in wins for w in ws.ids]
        output = "logits" if self.lexical is not None else "probs"
        probs = run_windows(self.session, flat, batch_size=self.batch_size, output=output) if flat else np.zeros((0, 1))
        out, k = [], 0
        for ws in wins:
            out.append(probs[k : k + len(ws.ids)])
            k += len(ws.ids)
        return wins, out

    def classify(self, texts: Sequence[str]) -> list[TierResult]:
        """Score each text (max over its windows); a bad text gets ``error`` set, never an exception."""
        t0 = time.perf_counter()
        good_idx, good = [], []
        results: list[TierResult | None] = [None] * len(texts)
        for i, t in enumerate(texts):
            if isinstance(t, str):
                good_idx.append(i)
                good.append(t.encode("utf-8", errors="replace").decode("utf-8"))
            else:
                results[i] = TierResult(scores={}, error=f"fast tier expects str, got {type(t).__name__}")
        if good:
            try:
                wins, probs = self.window_probs(good)
            except Exception as exc:  # e.g. onnxruntime failure: recorded per text, never raised
                log.exception("fast tier %r failed on a batch", self.name)
                for i in good_idx:
                    results[i] = TierResult(scores={}, error=f"fast tier failed: {type(exc).__name__}: {exc}")
                wins, probs = [], []
            elapsed = (time.perf_counter() - t0) * 1000.0
            per = elapsed / max(len(good), 1)
            for i, t, ws, p in zip(good_idx, good, wins, probs):
                info = ws.info()
                if self.lexical is None:
                    scores = {pol: float(np.clip(p[:, c].max(), 0.0, 1.0)) for pol, c in self._col.items()}
                else:
                    scores = self._stacked(t, ws, p, info)
                if len(ws.ids) > 1:
                    info["max_window"] = int(np.argmax(p.max(axis=1)))
                warnings = ("truncated_windows",) if ws.truncated else ()
                results[i] = TierResult(scores=scores, info=info, warnings=warnings, latency_ms=per,
                                        cost={"windows": float(len(ws.ids)), "tokens": float(ws.tokens)})
        return [r if r is not None else TierResult(scores={}, error="not scored") for r in results]

    def _stacked(self, text: str, ws: Any, z: np.ndarray, info: dict[str, Any]) -> dict[str, float]:
        """Stack the max window logit with the lexical logit, per policy (fills ``info``)."""
        assert self.lexical is not None
        idx, tf, cut = features(ws.content, text, self.lexical.config)
        z_lex = self.lexical.logits(idx, tf)
        scores, z_e, z_l = {}, {}, {}
        for pol, c in self._col.items():
            ze = float(z[:, c].max())
            p = self.stacks[pol].apply(np.array([ze]), np.array([z_lex[c]]))[0]
            scores[pol] = float(np.clip(p, 0.0, 1.0))
            z_e[pol], z_l[pol] = round(ze, 4), round(float(z_lex[c]), 4)
        info["embedding_logit"], info["lexical_logit"] = z_e, z_l
        if cut:
            info["lexical_chars_cut"] = True
        return scores

    def close(self) -> None:
        """Nothing to release beyond the session (kept for the router's close())."""
        self.session = None
