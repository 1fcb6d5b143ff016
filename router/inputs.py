"""Input checks at the router boundary: each bad input gets a clear error or a documented rule.

Rules (also in the README):

* not ``str`` / ``bytes``                     -> ``TypeError`` naming the type.
* ``bytes``                                   -> decoded as UTF-8; invalid bytes become U+FFFD
  and the decision carries the warning ``invalid_utf8``.
* lone surrogates in a ``str``                -> replaced with U+FFFD, warning ``invalid_surrogates``.
* NUL characters                              -> removed, warning ``nul_removed``.
* empty or whitespace-only (after the above)  -> ``input.on_empty`` (default allow), tier ``input``.
* longer than ``input.max_chars``             -> ``input.on_oversize``: block / allow (tier
  ``input``), or ``truncate`` (classified on the first ``max_chars`` characters, warning
  ``truncated``).
"""

from __future__ import annotations

from dataclasses import dataclass

from safecascade.hashing import text_hash


@dataclass(frozen=True, kw_only=True)
class CleanInput:
    """A text after the input checks: the cleaned text, its hash
    (:func:`safecascade.hashing.text_hash`), the warnings raised and the input rule that decides it (if any)."""

    text: str
    text_hash: str
    warnings: tuple[str, ...]
    rule: str | None  # "empty_input" / "input_too_large" when an input rule decides


def clean_input(raw: object, *, max_chars: int, on_oversize: str) -> CleanInput:
    """Apply the input rules of the module docstring to ``raw``; ``TypeError`` when it is not text."""
    warnings: list[str] = []
    if isinstance(raw, (bytes, bytearray, memoryview)):
        data = bytes(raw)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("utf-8", errors="replace")
            warnings.append("invalid_utf8")
    elif isinstance(raw, str):
        text = raw
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace")
            warnings.append("invalid_surrogates")
    else:
        raise TypeError(f"text must be str or bytes, got {type(raw).__name__}")
    if "\x00" in text:
        text = text.replace("\x00", "")
        warnings.append("nul_removed")
    rule = None
    if not text.strip():
        rule = "empty_input"
    elif len(text) > max_chars:
        if on_oversize == "truncate":
            text = text[:max_chars]
            warnings.append("truncated")
        else:
            rule = "input_too_large"
    return CleanInput(text=text, text_hash=text_hash(text), warnings=tuple(warnings), rule=rule)
