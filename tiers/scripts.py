"""Which writing system a text is in, as far as a tier's training data covers it.

The shipped training data is English but for its attacks: of its texts written mostly outside the
Latin script, nearly all are violations (every Devanagari one is a CyberSecEval injection; of the
1,154 such texts in the multi-policy benchmark, 91 are benign, 68 of the 867 in its train split).
A bag-of-tokens model learns the script from that, not the request: the static tier scored
ordinary Hindi questions ("भारत की राजधानी क्या है?") prompt_injection 0.97-1.00 and blocked them.
:func:`mostly_latin` says whether a text's letters are mostly Latin (English and the other
languages written in it, Vietnamese included), so a tier can pass a text in another script on to a
tier better able to read it instead of blocking it.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, MutableMapping, Sequence

# letters of the Latin script: Basic Latin, Latin-1, Extended-A/B, IPA, Extended Additional (Vietnamese)
_LATIN = re.compile(r"[A-Za-z\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u024F\u0250-\u02AF\u1E00-\u1EFF]")
_LETTER = re.compile(r"[^\W\d_]")


def mostly_latin(text: str) -> bool:
    """True when at least half of ``text``'s letters are Latin, or it has no letter at all.

    Combining marks (Devanagari vowel signs, for example) are not letters here, so a script's
    share is counted on its base letters. Linear in the text: two regex scans, and none for pure ASCII.
    """
    if text.isascii():
        return True
    letters = len(_LETTER.findall(text))
    return not letters or 2 * len(_LATIN.findall(text)) >= letters


def readable_block_scores(readings: Sequence[str], reading_scores: Sequence[Mapping[str, float]],
                          scores: Mapping[str, float]) -> dict[str, float]:
    """A model tier's ``TierResult.block_scores``: per policy, the highest score among the text's
    readings (the text itself first, then its decoded / normalised views) that are
    :func:`mostly_latin`, 0 when none is; only the policies where that is below ``scores`` (the
    highest over all readings) are returned, so a Latin text gets ``{}``."""
    block = {p: 0.0 for p in scores}
    for text, per in zip(readings, reading_scores):
        if mostly_latin(text):
            for p, v in per.items():
                if p in block and v > block[p]:
                    block[p] = v
    return {p: v for p, v in block.items() if v < scores[p]}


WITHHELD = "text mostly outside the Latin script"  #: ``TierResult.info["block_withheld"]`` when a tier withholds its block


def tier_block_scores(readings: Sequence[str], reading_scores: Sequence[Mapping[str, float]], scores: Mapping[str, float],
                      info: MutableMapping[str, Any], *, block_other_scripts: bool) -> dict[str, float]:
    """What the static and fast tiers report as ``TierResult.block_scores`` for one text: ``{}`` when
    the tier blocks on any script (``block_other_scripts``) or every reading is ASCII, otherwise
    :func:`readable_block_scores`; notes ``info["block_withheld"]`` when a block is withheld."""
    if block_other_scripts or all(r.isascii() for r in readings):
        return {}
    block = readable_block_scores(readings, reading_scores, scores)
    if block:
        info["block_withheld"] = WITHHELD
    return block
