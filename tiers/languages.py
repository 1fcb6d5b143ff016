"""Which language a text is in, for a tier that reads only some (py3langid's language identifier).

The shipped static tier is a model2vec embedding distilled from an English encoder (all-MiniLM-L6-v2)
with heads on top: on a text in another language its scores tell little about the request. It blocked
ordinary German and Italian questions about jailbreaks as jailbreaks (0.93-0.98) and let translated
persona jailbreaks through its allow band before the fast tier, which flags a quarter of them, could
read them (docs/policies.md, "Translated jailbreaks, and a static tier that decides only on English"). A tier configured with
``languages`` passes a text that :func:`text_language` identifies as another language on to the next
tier (neither allowed nor blocked there). The identifier is loaded on first use, not at import.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

PREFIX_CHARS = 1000
"""Only a text's first characters are identified (a long text's language shows in its start; the
cost stays ~0.1-0.3 ms per text)."""

MIN_CONFIDENCE = 0.5
"""The identifier's probability (normalised over its 97 languages) a language needs before a text is
taken to be in it; below it (short or mixed texts: "Name a type of pasta dish" scores 0.34 for
Nigerian Pidgin) the text counts as unidentified and the tier reads it as before."""


@functools.lru_cache(maxsize=1)
def _identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier  # loaded once, on first use

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def text_language(text: str, *, min_confidence: float = MIN_CONFIDENCE) -> str | None:
    """The ISO 639-1 code (py3langid's) of the language ``text`` is written in, or None when the
    identifier is not at least ``min_confidence`` sure or the text has no letter."""
    lang, prob = _classify_head(text[:PREFIX_CHARS])
    return lang if lang is not None and prob >= min_confidence else None


@functools.lru_cache(maxsize=4096)
def _classify_head(head: str) -> tuple[str | None, float]:
    """The identifier's language and probability for a text's first characters (None: no letter).
    Cached: the static and the multilingual tier both ask about the same text, one after the other."""
    if not any(c.isalpha() for c in head):
        return None, 0.0
    lang, prob = _identifier().classify(head)
    return str(lang), float(prob)


def unread_language(readings: Sequence[str], languages: Sequence[str]) -> str | None:
    """The language of a text a tier reading only ``languages`` should pass on: the first of its
    ``readings`` (the text, then its decoded / normalised views) identified as another language, when
    none is identified as one of ``languages`` or left unidentified; None (read it) otherwise or when
    ``languages`` is empty (the tier reads every language)."""
    if not languages:
        return None
    other = None
    for r in readings:
        lang = text_language(r)
        if lang is None or lang in languages:
            return None
        other = other or lang
    return other
