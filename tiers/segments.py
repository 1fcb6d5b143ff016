"""A text's *parts*: the paragraphs and lines that the static and fast tiers also score on their
own, so that a short attack planted in a document (an email, a web page, a tool's JSON result, a
long benign text) is not diluted by what surrounds it."""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Iterator, Sequence

_TAG = re.compile(r"<[^<>]{0,500}>")
_JSON_START = re.compile(r"\s*[\[{]")


def _strings(v: Any) -> Iterator[str]:
    if isinstance(v, str):
        yield v
    elif isinstance(v, dict):
        for x in v.values():
            yield from _strings(x)
    elif isinstance(v, list):
        for x in v:
            yield from _strings(x)


def readable(text: str) -> str:
    """``text`` with its markup taken out, one piece of content per line: a JSON document's string
    values (a tool's result), or an HTML/XML page's text between tags. Other text is returned as is."""
    if _JSON_START.match(text):
        try:
            return "\n".join(s for s in _strings(json.loads(text)) if s.strip())
        except (ValueError, RecursionError):
            pass
    if "<" in text and _TAG.search(text):
        return _TAG.sub("\n", text)
    return text


def may_have_parts(text: str) -> bool:
    """Whether :func:`line_segments` can find parts in ``text`` (a cheap test before tokenizing)."""
    return "\n" in text or "\r" in text or "<" in text or bool(_JSON_START.match(text))


def tokenizer_parts(text: str, tokenizer: Any, max_tokens: int) -> list[str]:
    """:func:`line_segments` with the line lengths counted by a ``tokenizers.Tokenizer`` (no special tokens)."""
    def lengths(lines: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in tokenizer.encode_batch(list(lines), add_special_tokens=False)]
    return line_segments(text, lengths, max_tokens)


def line_segments(text: str, token_lengths: Callable[[Sequence[str]], Sequence[int]], max_tokens: int) -> list[str]:
    """``text`` cut at line breaks into segments of at most ``max_tokens`` tokens (consecutive
    lines joined; a blank line always ends a segment, so a paragraph planted between others is a
    segment of its own; a longer line is its own segment), and then every line on its own,
    duplicates dropped. A text of one line has no parts: ``[]``; a text that packs into one
    segment has its lines as parts.

    Markup is taken out first (:func:`readable`): the string values of a JSON document, the text
    between the tags of a web page. ``token_lengths`` gives the token count of each line (the
    tier's tokenizer)."""
    text = readable(text)
    lines: list[str] = []
    starts: set[int] = set()  # indices (in ``lines``) of lines that follow a blank line
    blank = False
    for ln in text.splitlines():
        if not ln.strip():
            blank = True
            continue
        if blank and lines:
            starts.add(len(lines))
        lines.append(ln)
        blank = False
    if len(lines) < 2:
        return []
    out: list[str] = []
    cur: list[str] = []
    n = 0
    for j, (ln, k) in enumerate(zip(lines, token_lengths(lines))):
        if cur and (n + k > max_tokens or j in starts):
            out.append("\n".join(cur))
            cur, n = [], 0
        cur.append(ln)
        n += k
    if cur:
        out.append("\n".join(cur))
    if len(out) < 2:
        out = []  # the one segment is the text itself
    # every line is a candidate too (a one-line attack among lines with no blank between them
    # is otherwise packed with its neighbours); identical candidates are kept once
    return list(dict.fromkeys(out + lines))
