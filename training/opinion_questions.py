"""Weakly labelled opinion questions that the ``harmful_request`` policy does not cover.

BeaverTails labels a prompt by the harm of a model's answer, so plain opinion questions ("What do
you think of george washington?", "Why do Jeeps suck?", "why is coca cola a bad company?") are
positives there. Under ``models/policies/harmful_request.md`` they are not violations: they ask for
no uplift (HR1-HR3, HR7), demean no protected group (HR4.a), target no private person (HR4.b) and
ask for no sexual content (HR5). Trained as positives, they taught all three learned tiers that an
opinion question on a sensitive topic is harmful: benign real user prompts such as "What do you
think about fat people?" or "why is sexual content not allowed" scored 0.8-0.99 (session 56).

:func:`is_policy_neutral_opinion` picks out such questions by their opening and by naming no group,
sexual term or harmful act; :mod:`safecascade.training.policy_data` leaves their weak
``harmful_request`` label out (unlabelled, not negative: the rule is a heuristic, so a row it
misses or wrongly takes is neither taught as harmful nor as benign). Questions that name a group
("Why are muslims so unintelligent?") keep their label: HR4.a covers them.
"""

from __future__ import annotations

import re

__all__ = ["is_policy_neutral_opinion"]

_OPENING = re.compile(
    r"^\s*(what do you think|what are your (thoughts|views)|what(')?s your (opinion|view|take)"
    r"|what is your (opinion|view|take)|how do you feel|do you (like|think|believe|agree|prefer|support)"
    r"|why (do|does|are|is|did|was|were) )", re.I)
# Anything that may make the question a violation of its own: a protected or commonly demeaned group
# (plurals and slurs included), sexual terms, a harmful act, or a first-person plan ("could I ...").
_DISQUALIFIERS = re.compile(
    r"\b(black\w*|whites?|asians?|africans?|arabs?|jews?|jewish|muslims?|islam\w*|christians?|catholics?|"
    r"mormons?|buddhists?|hindus?|sikhs?|mexicans?|latin[oa]s?|hispanics?|chinese|china|japanese|koreans?|"
    r"indians?|india|natives?|indigenous|aborigin\w*|irish|italians?|polish|russians?|french|germans?|"
    r"english|british|immigrants?|refugees?|minorit\w*|races?|racial|racis\w*|ethnic\w*|religio\w*|gays?|"
    r"lesbians?|trans\w*|queers?|lgbt\w*|homosexual\w*|bisexual\w*|wom[ae]n|m[ae]n|girls?|boys?|females?|"
    r"males?|gender\w*|sex\w*|disab\w*|retard\w*|autis\w*|deaf|blind|old people|elderly|fat|obese|ugly|"
    r"poor|homeless|hillbill\w*|rednecks?|hicks?|n[i1]gg\w*|negro\w*|chinks?|spics?|kikes?|colou?red|"
    r"slut\w*|whores?|bitch\w*|pussy|horny|wet|porn\w*|nude|naked|pedophil\w*|rap(e|ed|es|ing|ist)\w*|"
    r"kill\w*|murder\w*|steal\w*|drugs?|crack|cocaine|heroin|meth|bomb\w*|guns?|weapons?|hack\w*|"
    r"poison\w*|suicid\w*|terror\w*|nazi\w*|hitler|cheat\w*|lying|lie|abus\w*|hurt\w*|violen\w*|"
    r"child\w*|kids?|minors?|prostitut\w*|illegal\w*|counterfeit\w*|prank\w*|get away|i could|"
    r"stupid|dumb|idiot\w*|unintelligent|brainwash\w*|smell\w*|dirty|savage\w*|people from|"
    r"same type of people|breeding|iq|loser|criminals?|crime|shit\w*|assholes?|fuck\w*|hat(e|es|ed|ing|red)|"
    r"fag\w*|cis|cuck\w*|homophob\w*)\b", re.I)


def is_policy_neutral_opinion(text: str) -> bool:
    """True for a short opinion question ("What do you think of ...", "Why is X a bad company?")
    that names no group, sexual term or harmful act (see the module docstring)."""
    return len(text) <= 300 and bool(_OPENING.search(text)) and not _DISQUALIFIERS.search(text)
