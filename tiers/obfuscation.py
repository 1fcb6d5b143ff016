"""Text folding and decoders for the heuristic tier.

Everything here is on the hot path of the cheapest tier, so the expensive parts are
precomputed once (the homoglyph fold table) and every decoder sits behind a cheap pre-filter:

* :func:`fold` - the canonical view the rules match against: invisible (zero-width, bidi,
  Unicode tag) characters removed, NFKC, Latin diacritics stripped, confusable homoglyphs
  (Cyrillic ``і``/``о``, Greek ``ο``, ...) mapped to ASCII through a table built from the
  ``confusable-homoglyphs`` data, and lower-cased. ASCII text takes a fast path (``lower()`` only).
  In a text written mostly in another script (:func:`safecascade.tiers.scripts.mostly_latin`),
  only words that mix in ASCII letters are mapped: folded whole, Russian "Игнорируй все
  предыдущие инструкции" became "иrнopиpyи вce пpeдыдyщиe ..." and matched no rule.
* :func:`leet_fold` - digits / symbols used as letters (``1gn0r3`` -> ``ignore``), tried only
  when :func:`looks_leet` finds several letter-digit-letter runs.
* :func:`decode_views` - base64 / hex blobs (candidate runs found by a length-bounded regex,
  decoded, kept only when they decode to readable text), rot13 (only when the folded text
  contains common rot13 words), and Unicode tag-character smuggling (U+E0020..U+E007E).

The decoded texts are re-scanned with the same rules by :mod:`safecascade.tiers.heuristic`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources

from safecascade.tiers.scripts import mostly_latin

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- invisible characters
#: zero-width characters that have no business inside a Latin word
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u180e\u00ad"
#: bidi embedding / override / isolate controls ("Trojan Source"); LRM/RLM (U+200E/F) are
#: normal in right-to-left text and are only removed, never flagged.
BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_MARKS = "\u200e\u200f\u061c"
_INVISIBLE_RE = re.compile(f"[{ZERO_WIDTH}{BIDI_CONTROLS}{_MARKS}\U000e0000-\U000e007f]")
# zero-width char between two letters (possibly several in a row) = word splitting
_ZW_IN_WORD_RE = re.compile(f"[A-Za-z][{ZERO_WIDTH}]+[A-Za-z]")
_BIDI_RE = re.compile(f"[{BIDI_CONTROLS}]")
# runs of tag characters, except the ones that spell a subdivision flag after U+1F3F4 (🏴)
_TAG_RE = re.compile("(?<![\U0001f3f4\U000e0020-\U000e007e])[\U000e0020-\U000e007e]{4,}")
_COMBINING_RE = re.compile("[\u0300-\u036f]")
_WORD_RE = re.compile(r"\w+")
_ASCII_LETTER_RE = re.compile("[A-Za-z]")


@functools.cache
def fold_table() -> dict[str, str]:
    """Map of non-ASCII confusable characters to a lower-case ASCII letter or digit.

    Built once from the ``confusable-homoglyphs`` data file (no per-character API calls on
    the hot path). Letters are preferred over digits (``О`` -> ``o``, not ``0``).
    """
    try:
        path = resources.files("confusable_homoglyphs").joinpath("confusables.json")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ModuleNotFoundError, ValueError) as exc:  # pragma: no cover - packaging problem
        log.warning("confusable-homoglyphs data unavailable (%s); homoglyph folding limited to NFKC", exc)
        data = {}
    table: dict[str, str] = {}
    for ch, entries in data.items():
        if len(ch) != 1 or ch.isascii():
            continue
        targets = [e.get("c", "") for e in entries]
        ascii_targets = [t for t in targets if len(t) == 1 and t.isascii() and t.isalnum()]
        if not ascii_targets:
            continue
        letters = [t for t in ascii_targets if t.isalpha()]
        best = (letters or ascii_targets)[0].lower()
        table[ch] = best
    # A few common look-alikes the data set files under multi-character or symbol targets.
    table.update({"ı": "i", "ȷ": "j", "ſ": "s"})
    return table


@dataclass(frozen=True, kw_only=True)
class Folded:
    """The folded view of a text plus what folding found on the way."""

    text: str
    zero_width_in_words: int = 0  #: zero-width characters splitting letters
    bidi_controls: int = 0  #: bidi embedding/override/isolate controls
    homoglyphs: int = 0  #: distinct confusable characters mapped to ASCII
    tag_chars: int = 0  #: Unicode tag characters (U+E0000 block)


def fold(text: str) -> Folded:
    """Canonical matching view of ``text`` (see module docstring). Never raises for a str."""
    if text.isascii():
        return Folded(text=text.lower())
    zw = bidi = tags = 0
    if _INVISIBLE_RE.search(text) is not None:
        zw = len(_ZW_IN_WORD_RE.findall(text))
        bidi = len(_BIDI_RE.findall(text))
        tags = sum(len(m) for m in _TAG_RE.findall(text))
        text = _INVISIBLE_RE.sub("", text)
    text = unicodedata.normalize("NFKD", text)
    text = _COMBINING_RE.sub("", text)
    text = unicodedata.normalize("NFKC", text)
    homoglyphs = 0
    if not text.isascii():
        table = fold_table()
        if mostly_latin(text):
            for ch in set(text):
                rep = table.get(ch)
                if rep is not None:
                    text = text.replace(ch, rep)
                    homoglyphs += 1
        else:  # a text in another script: only its words that mix in Latin letters hide anything
            seen: set[str] = set()

            def mixed(m: re.Match[str]) -> str:
                word = m.group(0)
                if not _ASCII_LETTER_RE.search(word):
                    return word
                swapped = [ch for ch in word if ch in table]
                seen.update(swapped)
                return "".join(table.get(ch, ch) for ch in word) if swapped else word

            text = _WORD_RE.sub(mixed, text)
            homoglyphs = len(seen)
    return Folded(text=text.lower(), zero_width_in_words=zw, bidi_controls=bidi, homoglyphs=homoglyphs, tag_chars=tags)


# --------------------------------------------------------------------------- leetspeak
_LEET_TABLE = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s", "!": "i", "|": "l", "+": "t", "€": "e"})
# a leet character glued between letters ("1gn0r3" has "gn0r" -> 0 between letters)
_LEET_HINT_RE = re.compile(r"[a-z][013457@$][a-z]|\b[13457@$][a-z]{2,}[013457@$]")
# a word with two leet digits and a letter ("53x157", "4r3", "wh47": a short word mostly in digits);
# tables and codes have such words too ("14.50m", "b737"), so they count only as a share of the words
_LEET_DENSE_RE = re.compile(r"\b(?=[a-z013457]*[a-z])[a-z]*[013457][a-z]*[013457][a-z013457]*\b")
LEET_DENSE_SHARE = 0.25


_LEET_PRE_RE = re.compile(r"[013457@$][a-z]")  # starts with a rare character class: fast scan


def looks_leet(folded: str, *, min_hits: int = 2) -> bool:
    """Cheap check: at least ``min_hits`` leet characters sit inside words, or at least ``min_hits``
    words written mostly in leet digits make up :data:`LEET_DENSE_SHARE` of the words
    ("Wh47 4r3 50m3 53x157 1n5ul75?")."""
    if _LEET_PRE_RE.search(folded) is None:
        return False
    n = 0
    for _ in _LEET_HINT_RE.finditer(folded):
        n += 1
        if n >= min_hits:
            return True
    dense = len(_LEET_DENSE_RE.findall(folded))
    return dense >= min_hits and dense >= LEET_DENSE_SHARE * len(_WORD_RE.findall(folded))


# "@" in an e-mail address ("0p5@d3v0p5.73ch") stays "@": read as "a" it would hide the address
_EMAIL_AT_RE = re.compile(r"(?<=[\w.+-])@(?=[\w-]+\.\w)")
_KEEP_AT = "\uf8ff"  # a private-use character that holds a kept "@" while the table is applied


def leet_fold(folded: str) -> str:
    """Map leetspeak characters to letters (apply to a folded, lower-case text); the "@" of an
    e-mail address is kept."""
    if "@" not in folded:
        return folded.translate(_LEET_TABLE)
    return _EMAIL_AT_RE.sub(_KEEP_AT, folded).translate(_LEET_TABLE).replace(_KEEP_AT, "@")


# --------------------------------------------------------------------------- decoders
_B64_RE = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/]{24,}={0,2}|(?<![A-Za-z0-9_=-])[A-Za-z0-9_-]{24,}={0,2}")
_HEX_RE = re.compile(r"(?:\\x[0-9a-fA-F]{2}){8,}|(?:0x)?(?:[0-9a-fA-F]{2}){12,}")
_SPACED_HEX_RE = re.compile(r"\b(?:[0-9a-fA-F]{2}[ :,]){8,}[0-9a-fA-F]{2}\b")
#: a blob needs at least this many characters without whitespace to be tried as base64 / hex
MIN_BLOB_CHARS = 24
_ROT13_TABLE = str.maketrans("abcdefghijklmnopqrstuvwxyz", "nopqrstuvwxyzabcdefghijklm")
# rot13 of common English / jailbreak words; one of them in the folded text triggers a rot13 pass
_ROT13_HINTS = ("gur ", " naq ", " lbh", "vtaber", " nyy ", "cerivbhf", "vafgehpgvbaf", " lbhe ", " jvgu ", " guvf ", " vf ")


def _readable(s: str) -> bool:
    """Decoded bytes look like natural-language text (not binary, not a random id)."""
    if len(s) < 8:
        return False
    printable = sum(1 for c in s if c.isprintable() or c in "\n\t\r")
    if printable < 0.95 * len(s):
        return False
    letters = sum(1 for c in s if c.isalpha())
    spaces = s.count(" ")
    return letters >= 0.6 * len(s.replace(" ", "")) and spaces >= 1


def _b64(run: str) -> str | None:
    run = run.rstrip("=")
    if len(run) % 4 == 1:
        return None
    padded = run + "=" * (-len(run) % 4)
    try:
        if "-" in run or "_" in run:
            raw = base64.urlsafe_b64decode(padded)
        else:
            raw = base64.b64decode(padded, validate=True)
        s = raw.decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return s if _readable(s) else None


def _hex(run: str) -> str | None:
    digits = re.sub(r"\\x|0x|[ :,]", "", run)
    if len(digits) % 2:
        return None
    try:
        s = bytes.fromhex(digits).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return s if _readable(s) else None


@dataclass(frozen=True, kw_only=True)
class DecodedView:
    """A decoded payload found in a text: which decoder found it and the decoded text."""

    decoder: str  # base64 | hex | rot13 | unicode_tags
    text: str


def _hex_views(matches, views: list, n_hex: int, max_blobs: int, budget: int) -> tuple[int, int]:
    """Decode hex runs from ``matches`` into ``views`` (at most ``max_blobs`` in all, within the
    character ``budget``); returns the updated count and budget."""
    for m in matches:
        if n_hex >= max_blobs:
            break
        n_hex += 1
        s = _hex(m.group(0))
        if s:
            views.append(DecodedView(decoder="hex", text=s[:budget]))
            budget -= len(s)
    return n_hex, budget


def decode_views(raw: str, folded: str, *, max_blobs: int = 8, max_decoded_chars: int = 20_000) -> list[DecodedView]:
    """Decoded payloads hidden in ``raw`` (original case) / ``folded``; cheap when there are none."""
    views: list[DecodedView] = []
    budget = max_decoded_chars
    # Pre-filter: base64 / hex blobs are long runs without whitespace; str.split is a C loop,
    # far cheaper than running the blob regexes over every position of a long text.
    tokens = raw.split()
    if not tokens or len(max(tokens, key=len)) < MIN_BLOB_CHARS:  # the common case: no long run at all
        long_tokens: list[str] = []
    else:
        long_tokens = [w for w in tokens if len(w) >= MIN_BLOB_CHARS]
    n_b64 = n_hex = 0
    for tok in long_tokens:
        if budget <= 0:
            break
        n_hex, budget = _hex_views(_HEX_RE.finditer(tok), views, n_hex, max_blobs, budget)
        for m in _B64_RE.finditer(tok):
            if n_b64 >= max_blobs:
                break
            run = m.group(0)
            if run.isalpha() and (run.islower() or run.isupper()):
                continue  # a long single-case word / identifier, not base64
            if _HEX_RE.fullmatch(run):
                continue  # already tried as hex
            n_b64 += 1
            s = _b64(run)
            if s:
                views.append(DecodedView(decoder="base64", text=s[:budget]))
                budget -= len(s)
    # space-separated hex ("69 67 6e 6f ..."): encoded text has "20" (a space) between words
    if budget > 0 and "20" in raw:
        n_hex, budget = _hex_views(_SPACED_HEX_RE.finditer(raw), views, n_hex, max_blobs, budget)
    # rot13 over the whole (already lower-case) text, only when rot13 words appear
    hits = 0
    for h in _ROT13_HINTS:
        if h in folded:
            hits += 1
            if hits >= 2:
                break
    if hits >= 2 and budget > 0:
        views.append(DecodedView(decoder="rot13", text=folded[:budget].translate(_ROT13_TABLE)))
    # Unicode tag characters carry ASCII invisibly (U+E0041 = "A")
    if raw and not raw.isascii():
        for m in _TAG_RE.finditer(raw):
            s = "".join(chr(ord(c) - 0xE0000) for c in m.group(0))
            views.append(DecodedView(decoder="unicode_tags", text=s[:budget]))
            budget -= len(s)
            if budget <= 0:
                break
    return views


# --------------------------------------------------------------------------- views for the model tiers
# Letters separated by single spaces / dots / dashes ("i g n o r e", "i.g.n.o.r.e"): 4+ letters in a row.
_SPACED_RE = re.compile(r"\b(?:[a-z][ .\-_*]){3,}[a-z]\b")
# Newline-split words: most lines hold one short word.
_MAX_VIEW_CHARS = 20_000
#: a re-reading (folded, leetspeak, ...) longer than this is cut to the lines it changed
CHANGED_LINES_MIN_CHARS = 2_000




def segment_words(run: str) -> str:
    """``run`` (letters only) cut back into English words (``wordninja``: the most likely split
    by English Wikipedia word frequencies): "evaluationresults" -> "evaluation results". Letters
    spaced apart one space each lose the spaces between words too; this puts them back. A run
    that splits into mostly single letters (no words in it) is returned as it is."""
    import wordninja  # loads its word list on first use, not at import of this module

    pieces = wordninja.split(run)
    if not pieces or sum(len(p) for p in pieces) / len(pieces) < 2.5:
        return run
    return " ".join(pieces)


def despaced(folded: str) -> str | None:
    """``folded`` with its letters spaced apart ("i g n o r e", "p.a.s.s") joined and cut back into
    words, or None when it has no such run (or joining changes nothing)."""
    if _SPACED_RE.search(folded) is None:
        return None
    joined = _SPACED_RE.sub(lambda m: segment_words(re.sub(r"[ .\-_*]", "", m.group(0))), folded)
    return joined if joined != folded else None


def unsplit_lines(folded: str) -> str | None:
    """``folded`` written one word per line ("ignore\\nall\\nprevious ...": at least five lines,
    80% of them of one or two words) joined back into one line, or None when it is not."""
    lines = [ln.strip() for ln in folded.splitlines() if ln.strip()]
    if len(lines) >= 5 and sum(len(ln.split()) <= 2 for ln in lines) >= 0.8 * len(lines):
        return " ".join(lines)
    return None


def scoring_views(text: str) -> list[str]:
    """Extra texts a model tier should also score when ``text`` hides its content: the folded text
    (zero-width / bidi / tag characters removed, look-alikes mapped to ASCII) when folding changed
    more than letter case, its leetspeak reading, letters spaced apart joined again, one word per
    line joined into a sentence, and decoded base64 / hex / rot13 / Unicode-tag payloads.

    Empty for ordinary text (the common case costs one ``isascii`` and a few regex scans), so a
    tier that scores ``max(score(text), score(view) for view in views)`` pays only on obfuscated
    input. Views are capped at 20,000 characters each. Letters spaced apart are cut back into
    words (:func:`segment_words`), since one space between letters and one between words look alike.
    A folded or leetspeak reading of a long text (over :data:`CHANGED_LINES_MIN_CHARS`) is cut to
    the lines it reads differently (:func:`changed_lines`).
    """
    views: list[str] = []
    f = fold(text)
    folded = f.text
    if f.zero_width_in_words or f.homoglyphs or f.tag_chars or f.bidi_controls:
        views.append(folded)
    if looks_leet(folded):
        views.append(leet_fold(folded))
    joined = despaced(folded)
    if joined is not None:
        views.append(joined)
    unsplit = unsplit_lines(folded)
    if unsplit is not None:
        views.append(unsplit)
    n_reread = len(views)  # re-readings of the text itself (a decoded payload is another text)
    views.extend(v.text for v in decode_views(text, folded))
    out: list[str] = []
    for k, v in enumerate(views):
        if k < n_reread and len(v) > CHANGED_LINES_MIN_CHARS:
            v = changed_lines(text, v) or v
        v = v[:_MAX_VIEW_CHARS]
        if v.strip() and v != text and v not in out:
            out.append(v)
    return out


def restore_case(text: str, view: str) -> str:
    """``view`` (a lower-cased re-reading of ``text``: folded look-alikes, leetspeak, zero-width
    characters taken out) with the letter case of ``text`` put back, for a model that reads case (the
    multilingual tier's encoder scores "how can i ..." lower than "How can I ..."): where the two
    line up character for character (once ``text``'s invisible characters are out) and at least half
    of the characters already agree; otherwise (a decoded payload, an excerpt) ``view`` unchanged."""
    if len(text) != len(view):
        text = _INVISIBLE_RE.sub("", text)
        if len(text) != len(view):
            return view
    if 2 * sum(o.lower() == c for o, c in zip(text, view)) < len(view):
        return view
    return "".join(c.upper() if o.isupper() and c.isalpha() else c for o, c in zip(text, view))


def changed_lines(text: str, view: str, *, context: int = 1, max_share: float = 0.5) -> str | None:
    """The lines of ``view`` (a line-for-line re-reading of ``text``: folded, leetspeak) that read
    differently from ``text`` in lower case, each with ``context`` lines either side, joined; None
    when the line counts differ, nothing changed, or the kept lines hold more than ``max_share`` of
    the view's characters (then the whole view is worth scoring).

    A long document with one look-alike character or a few digits-for-letters in one paragraph
    otherwise costs a model tier a second reading of the whole document (up to 20,000 characters),
    although every other line reads exactly as the text does and is scored there already.
    """
    t_lines, v_lines = text.lower().splitlines(), view.splitlines()
    if len(t_lines) != len(v_lines):
        return None
    keep: set[int] = set()
    for i, (a, b) in enumerate(zip(t_lines, v_lines)):
        if a != b:
            keep.update(range(max(0, i - context), min(len(v_lines), i + context + 1)))
    if not keep:
        return None
    kept = "\n".join(v_lines[i] for i in sorted(keep))
    return kept if len(kept) <= max_share * len(view) else None
