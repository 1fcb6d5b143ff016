"""The ``fast`` tier: one ONNX graph (encoder -> mean pooling -> L2 norm -> per-policy head ->
calibrated probability) served with ``tokenizers`` + ``onnxruntime`` + numpy; no torch.

Options: :class:`FastOptions` (``model``, ``threads``, ``max_windows``, ``window_tokens``,
``stride``, ``batch_size``, ``quantized``); an unknown key or a wrong type fails at load.

Long texts are cut into overlapping windows, each window is scored, and the maximum is the
text's score; ``TierResult.info`` reports ``n_windows``, ``tokens`` and ``truncated``.

**No attack hides in length.** A text that needs more windows than ``max_windows`` is not cut
down to evenly spread windows: every window's span of the text is scored by the lexical block
(cheap, numpy), and the encoder scores the first and the last window plus the windows the lexical
block ranks highest, up to ``max_windows``; ``info`` reports ``n_windows_needed``, ``n_windows``
(scored), ``windows_skipped`` and ``window_selection: lexical-top-k``. A short attack inside a
long document shares its window with benign text, which dilutes its score, so a text longer than
one window is also cut at line breaks into *segments* of at most ``segment_tokens`` tokens (a
blank line always ends one; every line is also a candidate of its own; a longer line is cut at
sentence ends, so an attack written into a long paragraph is a candidate too); the
lexical block ranks them and the ``segments`` best are scored as texts of their own (``info``:
``segments_scored``, ``segments_total``). A multi-line text that fits in one window (an email, a
web page, a tool's result with an instruction planted in it) has its ``short_segments`` best
paragraphs or lines scored the same way. The lexical block reads the whole text, so benign
padding dilutes its n-grams; each scored window of a multi-window text is therefore also stacked
with the lexical logit of its own span (``window_lexical``, on by default; ``info["window_raised"]``
when a window scored higher than the whole text). Each policy's score is the maximum over the
text, its windows and its scored segments.

**Obfuscation is carried through.** When the text hides its content (zero-width or bidi
characters, look-alike letters, leetspeak, spaced-out letters, one word per line, base64 / hex /
rot13 / Unicode-tag payloads: :func:`safecascade.tiers.obfuscation.scoring_views`), the decoded or
normalised readings are scored too and each policy takes the maximum; ``info["views"]`` counts
them and ``info["view_raised"]`` says whether a reading scored higher than the raw text.

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from safecascade.mlflow_store import download_model_dir
from safecascade.shipped import PROVENANCE, ShippedModelError, shipped_dir, verify_dir
from safecascade.tiers.base import TierResult, TierSpec
from safecascade.tiers.lexical import LEXICAL_NAME, LexicalConfig, LexicalModel, Stack, features
from safecascade.tiers.retractions import model_readings
from safecascade.tiers.scripts import tier_block_scores
from safecascade.tiers.segments import SEGMENT_TOKENS, may_have_parts, tokenizer_parts
from safecascade.tiers.onnx_encoder import (
    MODEL_NAME,
    TOKENIZER_NAME,
    EncoderOptions,
    WindowConfig,
    Windower,
    Windows,
    make_session,
    read_card,
    run_windows,
)

log = logging.getLogger(__name__)


def _top_per_column(z: np.ndarray, keep: int) -> list[int]:
    """At most ``keep`` row indices of ``z`` [n, policies]: first each policy's best row (the
    policies whose best is highest first), then the rows ranked by their highest value; so one
    policy's many high rows (filler that reads like instructions) do not crowd out another's one."""
    best = [int(np.argmax(z[:, c])) for c in np.argsort(-z.max(axis=0), kind="stable")]
    overall = [int(i) for i in np.argsort(-z.max(axis=1), kind="stable")]
    return list(dict.fromkeys(best + overall))[:keep]


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

    threads: int = 1
    """onnxruntime intra-op threads. One (since session 54): the int8 graph runs one window per call,
    too little work to split, so a second thread bought 10% of wall time for 30% more CPU (931 real
    user prompts in one batch: 12.2 against 9.3 CPU ms a text, wall 8.0 against 8.9 ms; Intel Xeon,
    2 cores), and ``safecascade serve``'s worker threads already run calls side by side (the load test
    at concurrency 8: 98 / 87 against 76 / 72 requests a second, two runs each). Raise it for a
    process that classifies one text at a time and has cores to spare."""
    batch_size: int = 32
    """Windows per ONNX call for the fp32 graph (the int8 graph always runs one: its dynamic
    quantisation would let batch-mates change a text's score)."""
    quantized: bool | Literal["auto"] = False
    """``true``: serve ``model.int8.onnx`` (an error if the artifact has none); ``auto``: serve it
    when the card offers one (it passed the val F1 gate), else fp32; ``false``: fp32."""
    deobfuscate: bool = True
    """Also score the decoded / normalised readings of a text that hides its content (see the
    module docstring); costs nothing on ordinary text."""
    segments: int = 4
    """Line-break segments of a long text scored as texts of their own (0: off)."""
    long_segments: int = 8
    """Segments scored for a text of more windows than ``max_windows`` (a long document, whose
    windows the lexical block picks too, and whose thousands of lines it ranks), if more than
    ``segments``: a request among 1,700 benign lines ranked third for its policy, below the four
    kept (session 55)."""
    short_segments: int = 2
    """Parts (paragraphs, lines) of a multi-line text that fits in one window scored as texts of
    their own (0: off): an instruction planted in an email, a web page or a tool's result."""
    segment_tokens: int = SEGMENT_TOKENS
    """Largest segment, in tokens (consecutive lines are joined up to it)."""
    window_lexical: bool = True
    """Stack each window of a text that needs 2 to ``max_windows`` windows with the lexical logit of
    its own span too, as a longer text's kept windows are (a policy's score is the higher of the
    whole text's and its best window's): benign padding around an attack dilutes the whole text's
    n-grams, not the window that holds it."""
    lexical_runs: bool = True
    """In a text of at least four windows, also stack the best window with the lexical logit of the
    run of windows around it whose own lexical logits stand out from the text's (``RUN_MARGIN``
    above their median): a role-play template of several windows inside 20,000 characters of
    benign text is read as the template, not diluted in the padding's n-grams nor cut at a window's
    edge (``info["run_raised"]``). Needs ``window_lexical`` and a lexical block."""
    block_other_scripts: bool = False
    """Let the block band block a text written mostly outside the Latin script
    (:func:`safecascade.tiers.scripts.mostly_latin`). Off: such a text is passed on to the next
    tier instead (``TierResult.block_scores``), as the static tier does; as the last tier (the
    default preset) the fast tier still decides it on its threshold. With a safeguard after it, a
    Hindi or Russian text the English encoder would block goes to the model that can read it."""


# A run of windows (FastOptions.lexical_runs): windows whose lexical logit is this far above the
# median of the text's windows, in a text of at least RUN_MIN_WINDOWS windows.
RUN_MARGIN = 2.0
RUN_MIN_WINDOWS = 4


class FastTier:
    """ONNX embedding classifier over windows of the text (see module doc)."""

    kind = "fast"

    def __init__(self, *, model_dir: str | Path, name: str = "fast", policies: Sequence[str] | None = None,
                 threads: int = 1, max_windows: int | None = None, window_tokens: int | None = None,
                 stride: int | None = None, batch_size: int = 32, quantized: bool | str = False, deobfuscate: bool = True,
                 segments: int = 4, segment_tokens: int = SEGMENT_TOKENS, short_segments: int = 2, block_other_scripts: bool = False,
                 window_lexical: bool = True, lexical_runs: bool = True, long_segments: int = 8):
        self.lexical_runs = bool(lexical_runs)
        self.block_other_scripts = bool(block_other_scripts)
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
        self.max_windows = int(max_windows or win.get("max_windows", 8))
        if self.max_windows < 1:
            raise ValueError(f"fast tier {name!r}: max_windows must be >= 1, got {self.max_windows}")
        # The windower cuts every window; the tier picks which ones the encoder scores (_select).
        cfg = WindowConfig(window_tokens=wt, stride=int(stride or min(win.get("stride", wt - 32), wt - 2)), max_windows=1 << 30)
        self.windower = Windower(tok_path, cfg)
        self.deobfuscate = bool(deobfuscate)
        if segments < 0 or short_segments < 0 or long_segments < 0 or segment_tokens < 8:
            raise ValueError(f"fast tier {name!r}: segments, short_segments and long_segments must be >= 0 and segment_tokens >= 8, "
                             f"got {segments}, {short_segments}, {long_segments}, {segment_tokens}")
        self.segments, self.segment_tokens, self.short_segments = int(segments), int(segment_tokens), int(short_segments)
        self.long_segments = int(long_segments)
        self.window_lexical = bool(window_lexical)
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
                   batch_size=o.batch_size, quantized=o.quantized, deobfuscate=o.deobfuscate,
                   segments=o.segments, segment_tokens=o.segment_tokens, short_segments=o.short_segments, lexical_runs=o.lexical_runs,
                   window_lexical=o.window_lexical, long_segments=o.long_segments,
                   block_other_scripts=o.block_other_scripts)

    def _segments(self, text: str, ws: Windows, lexical: bool = True) -> tuple[list[tuple[int, int]], np.ndarray | None]:
        """Each window's character span of ``text`` and (with a lexical block, and ``lexical``) its
        lexical logits [n_windows, n_policies]."""
        offs = ws.offsets
        if offs is None:  # cut without offsets (a text with fewer characters than tokens): tokenise again
            offs = np.asarray(self.windower.tokenizer.encode(text, add_special_tokens=False).offsets, dtype=np.int64).reshape(-1, 2)
        n, body = len(offs), self.windower.config.window_tokens - 2
        spans = [(int(offs[s][0]), int(offs[min(s + body, n) - 1][1])) for s in ws.starts] if n else [(0, len(text))] * len(ws.starts)
        if self.lexical is None or not lexical:
            return spans, None
        z = np.stack([self.lexical.logits(*features(ws.content[s : s + body], text[a:b], self.lexical.config)[:2])
                      for s, (a, b) in zip(ws.starts, spans)])
        return spans, z

    def _select(self, text: str, ws: Windows) -> tuple[Windows, dict[str, Any]]:
        """At most ``max_windows`` windows of a long text: the first, the last and the segments the
        lexical block ranks highest (evenly spread ones without a lexical block)."""
        total = len(ws.starts)
        if total <= self.max_windows:
            return ws, {}
        spans, z = self._segments(text, ws)
        if z is None or self.max_windows < 3:
            pick = np.unique(np.linspace(0, total - 1, self.max_windows).round().astype(int))
            how = "evenly-spread"
        else:
            rank = np.argsort(-z[:, [c for c in self._col.values()]].max(axis=1), kind="stable")
            keep = [0, total - 1] + [int(i) for i in rank if i not in (0, total - 1)][: self.max_windows - 2]
            pick = np.array(sorted(set(keep)))
            how = "lexical-top-k"
        sel = replace(ws, ids=[ws.ids[i] for i in pick], starts=tuple(ws.starts[i] for i in pick), truncated=True)
        seg = {"spans": [spans[i] for i in pick], "z_lex": None if z is None else z[pick], "selection": how,
               "all": (spans, z, [int(i) for i in pick], ws.starts)}
        return sel, seg

    def window_probs(self, texts: Sequence[str]) -> tuple[list[Any], list[np.ndarray]]:
        """Windows of each text and the per-window matrix [n_windows, n_policies]: calibrated
        probabilities, or the heads' raw logits when the model stacks a lexical block. A text
        needing more than ``max_windows`` windows keeps the ones :meth:`_select` picks."""
        wins, probs, _segments = self._window_scores(texts)
        return wins, probs

    def _window_scores(self, texts: Sequence[str]) -> tuple[list[Any], list[np.ndarray], dict[int, dict[str, Any]]]:
        """:meth:`window_probs` and each multi-window text's segment facts (text index -> dict:
        the kept windows' character spans and lexical logits; how they were picked). Returned,
        never kept on the tier: one tier serves many threads."""
        wins = self.windower.windows(texts, with_offsets=True)
        segments: dict[int, dict[str, Any]] = {}
        for i, (t, ws) in enumerate(zip(texts, wins)):
            if len(ws.starts) > self.max_windows:
                wins[i], segments[i] = self._select(t, ws)
            elif len(ws.starts) > 1:  # every window kept
                spans, z = self._segments(t, ws, lexical=self.window_lexical)
                segments[i] = {"spans": spans, "z_lex": z, "all": (spans, z, list(range(len(spans))), ws.starts)}
        flat = [w for ws in wins for w in ws.ids]
        output = "logits" if self.lexical is not None else "probs"
        probs = run_windows(self.session, flat, batch_size=self.batch_size, output=output) if flat else np.zeros((0, 1))
        out, k = [], 0
        for ws in wins:
            out.append(probs[k : k + len(ws.ids)])
            k += len(ws.ids)
        return wins, out, segments

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
            # the decoded / normalised readings of obfuscated texts are scored in the same batch
            read = [model_readings(t, deobfuscate=self.deobfuscate) for t in good]
            good, views = [r for r, _ in read], [vs for _, vs in read]
            batch = good + [v for vs in views for v in vs]
            try:
                wins, probs, segments = self._window_scores(batch)
            except Exception as exc:  # e.g. onnxruntime failure: recorded per text, never raised
                log.exception("fast tier %r failed on a batch", self.name)
                for i in good_idx:
                    results[i] = TierResult(scores={}, error=f"fast tier failed: {type(exc).__name__}: {exc}")
                wins, probs, segments = [], [], {}
            elapsed = (time.perf_counter() - t0) * 1000.0
            per = elapsed / max(len(good), 1)
            scored = [self._text_scores(t, ws, p, segments.get(k)) for k, (t, ws, p) in enumerate(zip(batch, wins, probs))]
            if wins and (self.segments or self.short_segments) and self.lexical is not None:
                self._score_segments(batch, wins, scored)
            k_view = len(good)
            for j, (i, ws) in enumerate(zip(good_idx, wins)):
                scores, info, ev = scored[j]
                reading_scores = [dict(scores)]
                if views[j]:
                    raised = False
                    for view, (v_scores, _, v_ev) in zip(views[j], scored[k_view : k_view + len(views[j])]):
                        reading_scores.append(dict(v_scores))
                        for pol, s in v_scores.items():
                            if s > scores[pol]:
                                scores[pol], raised = s, True
                                # the reading scored higher: its piece, or the reading itself when the text was long
                                if pol in v_ev:
                                    ev[pol] = v_ev[pol]
                                elif pol in ev:
                                    ev[pol] = view
                    info["views"], info["view_raised"] = len(views[j]), raised
                    k_view += len(views[j])
                # what may block: the readings in a script this tier reads (see block_other_scripts)
                block_scores = tier_block_scores([good[j], *views[j]], reading_scores, scores, info,
                                                 block_other_scripts=self.block_other_scripts)
                warnings = ("truncated_windows",) if ws.truncated else ()
                results[i] = TierResult(scores=scores, info=info, warnings=warnings, latency_ms=per, block_scores=block_scores,
                                        cost={"windows": float(len(ws.ids)), "tokens": float(ws.tokens)}, evidence=ev)
        return [r if r is not None else TierResult(scores={}, error="not scored") for r in results]

    def _line_segments(self, text: str) -> list[str]:
        """The text's parts (:func:`safecascade.tiers.segments.line_segments`) in this tier's tokens."""
        return tokenizer_parts(text, self.windower.tokenizer, self.segment_tokens)

    def _score_segments(self, batch: list[str], wins: list[Windows],
                        scored: list[tuple[dict[str, float], dict[str, Any], dict[str, str]]]) -> None:
        """Score the best line segments of every multi-line text as texts of their own (``segments``
        of a text longer than one window, ``short_segments`` of a shorter one) and raise its
        scores to theirs (fills ``segments_scored`` / ``segments_total``; the text's
        ``evidence`` becomes the segment that raised it). Every line of a long
        text is ranked, not only those of the windows :meth:`_select` kept: a short attack in the
        middle of a long document can be too diluted in its window for the window ranking to keep it."""
        assert self.lexical is not None
        body = self.windower.config.window_tokens - 2
        picked: list[tuple[int, str]] = []
        for k, (t, ws) in enumerate(zip(batch, wins)):
            long = ws.tokens > body  # a long text is cut at sentence ends too, line breaks or not
            keep = self.segments if long else self.short_segments
            if self.segments and ws.n_windows_total > self.max_windows:  # a long document: more of its lines
                keep = max(keep, self.long_segments)
            if not keep or not (long or may_have_parts(t)):
                continue
            segs = self._line_segments(t)
            if not segs:
                continue
            cfg = self.lexical.config
            seg_wins = self.windower.windows(segs, with_ids=False)
            z = np.stack([self.lexical.logits(*features(sw.content, s, cfg)[:2]) for s, sw in zip(segs, seg_wins)])
            rank = _top_per_column(z[:, list(self._col.values())], keep)
            picked += [(k, segs[int(i)]) for i in rank]
            scored[k][1]["segments_total"] = len(segs)
            scored[k][1]["segments_scored"] = len(rank)
        if not picked:
            return
        s_wins, s_probs = self.window_probs([s for _, s in picked])
        for (k, s), ws, p in zip(picked, s_wins, s_probs):
            seg_scores = self._stacked(s, ws, p, {})
            parent = scored[k][0]
            for pol, v in seg_scores.items():
                if v > parent[pol]:
                    parent[pol] = v
                    scored[k][1]["segment_raised"] = True
                    scored[k][2][pol] = s  # the piece the score rests on, in a text of one window too

    def _text_scores(self, text: str, ws: Windows, p: np.ndarray,
                     seg: dict[str, Any] | None) -> tuple[dict[str, float], dict[str, Any], dict[str, str]]:
        """One text's scores per policy, its ``info`` (segments of a long text included) and, for a
        text of several windows, each policy's evidence: the window its score rests on."""
        info = ws.info()
        evidence: dict[str, str] = {}
        if self.lexical is None:
            scores = {pol: float(np.clip(p[:, c].max(), 0.0, 1.0)) for pol, c in self._col.items()}
        else:
            scores = self._stacked(text, ws, p, info)
        spans = seg.get("spans") if seg else None
        if len(ws.ids) > 1:
            info["max_window"] = int(np.argmax(p.max(axis=1)))
            if spans:
                evidence = {pol: text[slice(*spans[int(np.argmax(p[:, c]))])] for pol, c in self._col.items()}
        if seg and "selection" in seg:
            info["n_windows_needed"] = ws.n_windows_total
            info["windows_skipped"] = ws.n_windows_total - len(ws.ids)
            info["window_selection"] = seg["selection"]
        if seg and self.lexical is not None and seg["z_lex"] is not None:
            for pol, c in self._col.items():  # each scored window stacked with its own span's n-grams
                stacked = self.stacks[pol].apply(p[:, c], seg["z_lex"][:, c])
                s = float(np.clip(stacked.max(), 0.0, 1.0))
                if s > scores[pol]:
                    scores[pol] = s
                    info["window_raised"] = True
                    if spans:
                        evidence[pol] = text[slice(*spans[int(np.argmax(stacked))])]
        if seg and self.lexical_runs and self.lexical is not None and seg["all"][1] is not None and len(seg["all"][0]) >= RUN_MIN_WINDOWS:
            self._run_scores(text, ws, p, seg["all"], scores, info, evidence)
        return scores, info, evidence

    def _run_scores(self, text: str, ws: Windows, p: np.ndarray, every: tuple[Any, np.ndarray, list[int], Sequence[int]],
                    scores: dict[str, float], info: dict[str, Any], evidence: dict[str, str]) -> None:
        """Raise each policy's score to its best window stacked with the lexical logit of the run
        of windows around it that stand out lexically (see ``FastOptions.lexical_runs``)."""
        assert self.lexical is not None
        spans, z_all, kept, starts = every
        body = self.windower.config.window_tokens - 2
        run_logits: dict[tuple[int, int], np.ndarray] = {}
        for pol, c in self._col.items():
            zc = z_all[:, c]
            best = int(np.argmax(p[:, c]))  # the best scored window, as the kept windows number it
            k, floor = kept[best], float(np.median(zc)) + RUN_MARGIN
            if zc[k] < floor:
                continue
            lo = hi = k
            while lo > 0 and zc[lo - 1] >= floor:
                lo -= 1
            while hi < len(zc) - 1 and zc[hi + 1] >= floor:
                hi += 1
            if lo == hi:
                continue
            a, b = spans[lo][0], spans[hi][1]
            if (lo, hi) not in run_logits:
                idx, tf, _ = features(ws.content[starts[lo] : starts[hi] + body], text[a:b], self.lexical.config)
                run_logits[(lo, hi)] = self.lexical.logits(idx, tf)
            z_emb = max(float(p[j, c]) for j, w in enumerate(kept) if lo <= w <= hi)
            s = float(np.clip(self.stacks[pol].apply(np.array([z_emb]), np.array([run_logits[(lo, hi)][c]]))[0], 0.0, 1.0))
            if s > scores[pol]:
                scores[pol] = s
                info["run_raised"] = True
                evidence[pol] = text[a:b]

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
