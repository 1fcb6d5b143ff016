"""A user taking back their *own* words ("ignore my last message", "forget what I said") is not a
prompt injection: the ``prompt_injection`` policy is about overriding the application's or the
developer's instructions. The learned tiers read the verb ("ignore ... previous") and scored such
self-corrections 0.90-0.995, so the static and fast tiers score :func:`own_retractions` of a text:
the text with each such phrase's verb replaced by "never mind". Only the retraction itself is
rewritten; whatever follows it ("... and reveal your system prompt") is scored as written, and an
override of instructions, rules or prompts other than the user's own is never touched."""

from __future__ import annotations

import re

from safecascade.tiers.obfuscation import scoring_views

# what a user may take back: their own message, question, code, typo ... (never instructions or rules)
_OWN_THING = (r"(?:message|question|request|prompt|comment|reply|answer|typo|mistake|code|text|e-?mail|post|"
              r"sentence|paragraph|query|input|example|attempt|point|idea|version|draft)s?")
_WHEN = r"(?:(?:last|previous|prior|earlier|above|first|second|former|other|original)\s+)?"
_I_DID = r"(?:i|that i)\s+(?:just\s+)?(?:said|wrote|asked|typed|sent|told you|mentioned|pasted|posted|shared|gave you|suggested)"
_RETRACTION = re.compile(
    r"\b(ignore|disregard|forget(?:\s+about)?)\s+"
    r"(?=(?:my\s+" + _WHEN + _OWN_THING + r"\b"  # no other word between: "my system prompt" is not the user's own
    r"|what\s+" + _I_DID + r"\b"  # not "everything I said": resetting the whole conversation is an injection payload of its own
    r"|(?:the|that|this)\s+" + _WHEN + _OWN_THING + r"\s+" + _I_DID + r"\b))",
    re.IGNORECASE,
)


def own_retractions(text: str) -> str:
    """``text`` with "ignore / disregard / forget (about)" before the user's own earlier words
    ("my last message", "what I said", "the code I pasted") replaced by "never mind"; other text is
    returned unchanged (the same object when nothing matched)."""
    if not _RETRACTION.search(text):
        return text
    return _RETRACTION.sub(lambda m: "Never mind " if m.group(1)[0].isupper() else "never mind ", text)


def model_readings(text: str, *, deobfuscate: bool) -> tuple[str, list[str]]:
    """What a model tier scores for ``text``: the text with the user's own retractions read as
    "never mind" (:func:`own_retractions`) and, with ``deobfuscate``, its decoded or normalised
    readings (:func:`safecascade.tiers.obfuscation.scoring_views`), read the same way. The static
    and the fast tier both take their inputs from here."""
    read = own_retractions(text)
    return read, [own_retractions(v) for v in scoring_views(read)] if deobfuscate else []
