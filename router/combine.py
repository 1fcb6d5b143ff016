"""Scores that add an earlier tier's evidence: a tier's ``combine`` option.

A tier configured with ``combine: {harmful_request: {static: 1.0}}`` decides ``harmful_request``
on ``sigmoid(logit(own score) + 1.0 * logit(the static tier's score for this text))`` instead of
its own score alone: its bands, threshold and named threshold all apply to the combined score.
Two tiers that err on different texts (the fast tier scores some odd but benign real prompts as
harmful that the static tier does not, and the other way round) separate violations from benign
traffic better together than either does alone at a low false-positive rate (docs/policies.md,
"Two tiers' evidence for harmful requests").

The earlier tier's score is the one on its trace (``TierTrace.scores``), raised to the highest of
its parts' scores where it scored the text's parts (``info["part_scores"]``: the static tier's
paragraphs, lines and sentences), as the fast tier's own score is: a harmful request wrapped in an
e-mail or a web page is judged by its most suspect part in both tiers, not diluted in one of them.

A long text the earlier tier read only in windows (``info["parts_skipped"]``), where a short request
is diluted, is judged on the piece the tier's own score rests on: the router has the earlier tier
score the window or line segment the later tier found most suspect (``TierResult.evidence``) and
passes those scores in (``on_evidence``; the trace's ``info["combined"][policy]["on"]`` names the
tier: ``{"static": "evidence"}``).
A harmful request planted in 20,000 characters of benign text then gets the same two tiers' evidence
as the request alone, and a benign document only the evidence of its most suspect piece.

An earlier tier that did not judge the text or its evidence (it failed, it was not on the text's
path, it read a long text only in windows and no evidence was scored, or it does not read the text's
language, ``info["not_read"]``) counts as its ``fill``
score when one is configured (``{static: {weight: 1.0, fill: 0.89}}``; the tuner sets it so that
such a text is decided as the cascade without that tier decides it, at the threshold tuned for that
cascade), and is left out otherwise (a logit of 0, even odds). Where a policy combines several
tiers and none of them judged the text, each counts as its ``fill_none`` if set (the tuner sets
them so that such a text is decided at the fast tier's own tuned threshold). Probabilities are clipped to ``[1e-6, 1 - 1e-6]``
before the logit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from safecascade.router.decision import TierTrace
from safecascade.tiers.base import TierResult

EPS = 1e-6


@dataclass(frozen=True)
class Term:
    """One earlier tier's term in a combined score: ``weight`` times its logit, and the score it
    counts as where it did not judge the text whole (``fill``; None: left out)."""

    weight: float
    fill: float | None = None
    fill_none: float | None = None
    """The score it counts as where none of the policy's combined tiers judged the text (a long
    document in a language the static tier does not read, which the multilingual tier does not read
    either); None: ``fill``. With one combined tier the two are the same."""


def logit(p: float) -> float:
    """``log(p / (1 - p))`` of ``p`` clipped to ``[EPS, 1 - EPS]``."""
    q = min(max(float(p), EPS), 1.0 - EPS)
    return math.log(q / (1.0 - q))


def sigmoid(z: float) -> float:
    """The inverse of :func:`logit` (numerically safe for large ``|z|``)."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def fill_for(own_threshold: float, combined_threshold: float, weight: float) -> float:
    """The ``fill`` score with which a text the earlier tier did not judge whole is blocked exactly
    when the tier's own score reaches ``own_threshold``, given the combined ``combined_threshold``."""
    return sigmoid((logit(combined_threshold) - logit(own_threshold)) / weight)


def _evidence(trace: TierTrace, policy: str) -> float | None:
    """The earlier tier's score for ``policy``, raised to its parts' highest; None when it did not
    judge the text whole."""
    s = trace.scores.get(policy)
    if s is None or not math.isfinite(float(s)) or trace.info.get("parts_skipped") or trace.info.get("not_read"):
        return None
    part = (trace.info.get("part_scores") or {}).get(policy)
    if part is not None and math.isfinite(float(part)):
        return max(float(s), float(part))  # a text's most suspect part counts, as in the fast tier's own score
    return float(s)


def needs_evidence(path: Sequence[TierTrace], combine: Mapping[str, Mapping[str, Term]]) -> dict[str, list[str]]:
    """Per earlier tier, the policies of ``combine`` it read only in windows on this text's
    ``path`` (``info["parts_skipped"]``): where the router has it score the later tier's evidence."""
    seen = {t.tier: t for t in path}
    out: dict[str, list[str]] = {}
    for pol, terms in combine.items():
        for tier, term in terms.items():
            trace = seen.get(tier)
            if term.weight and trace is not None and trace.info.get("parts_skipped") and pol in trace.scores:
                out.setdefault(tier, []).append(pol)
    return out


def evidence_score(res: TierResult, policy: str) -> float | None:
    """An earlier tier's score for the later tier's evidence (raised to its parts' highest, as
    :func:`_evidence`); None when it failed or read that piece, too, only in windows."""
    if res.error is not None:
        return None
    return _evidence(TierTrace(tier="", outcome="escalate", scores=res.scores, info=res.info), policy)


def earlier_logits(path: Sequence[TierTrace], terms: Mapping[str, Term], policy: str,
                   on_evidence: Mapping[str, Mapping[str, float]] | None = None) -> tuple[float, dict[str, float], list[str]]:
    """``sum(weight * logit(score))`` over the earlier tiers in ``terms`` for ``policy`` (the score
    raised to its parts' highest; for a text the tier read only in windows its score of the later
    tier's evidence, ``on_evidence[tier][policy]``, or else the term's ``fill``; see the module doc),
    the scores used (tier -> score) and the tiers whose evidence score was used."""
    seen = {t.tier: t for t in path}
    judged: dict[str, float | None] = {}
    on: list[str] = []
    for tier, term in terms.items():
        if not term.weight:
            continue
        trace = seen.get(tier)
        s = _evidence(trace, policy) if trace is not None else None
        if s is None and trace is not None:
            s = ((on_evidence or {}).get(tier) or {}).get(policy)
            if s is not None:
                on.append(tier)
        judged[tier] = s
    none = all(s is None for s in judged.values())  # no combined tier judged the text: fill_none
    total, used = 0.0, {}
    for tier, s in judged.items():
        term = terms[tier]
        if s is None:
            s = term.fill_none if none and term.fill_none is not None else term.fill
        if s is None:
            continue
        total += term.weight * logit(s)
        used[tier] = s
    return total, used, on


def combined(res: TierResult, path: Sequence[TierTrace], combine: Mapping[str, Mapping[str, Term]],
             on_evidence: Mapping[str, Mapping[str, float]] | None = None) -> TierResult:
    """``res`` with each policy in ``combine`` rescored with the earlier tiers' evidence on ``path``
    (see the module doc; ``on_evidence``: tier -> policy -> that tier's score of ``res.evidence``,
    for the texts it read only in windows). The block and allow scores, where the tier set its own,
    move by the same amount on the logit scale (an infinite allow score stays infinite).
    ``info["combined"]`` holds, per policy, the tier's own score, the earlier scores used, the
    combined score and (``on``) the tiers whose evidence score was used."""
    if not combine or res.error is not None or not res.scores:
        return res
    scores = dict(res.scores)
    block = dict(res.block_scores or {})
    allow = dict(res.allow_scores or {})
    facts: dict[str, dict[str, object]] = {}
    for pol, terms in combine.items():
        own = scores.get(pol)
        if own is None:
            continue
        extra, used, on = earlier_logits(path, terms, pol, on_evidence)
        if not used:
            continue
        scores[pol] = sigmoid(logit(own) + extra)
        if pol in block:
            block[pol] = min(scores[pol], sigmoid(logit(block[pol]) + extra))
        if pol in allow and math.isfinite(allow[pol]):
            allow[pol] = max(scores[pol], sigmoid(logit(allow[pol]) + extra))
        facts[pol] = {"own": round(float(own), 6), "earlier": {k: round(v, 6) for k, v in used.items()}, "score": round(scores[pol], 6)}
        if on:
            facts[pol]["on"] = {t: "evidence" for t in on}
    if not facts:
        return res
    return replace(res, scores=scores, block_scores=block, allow_scores=allow, info={**res.info, "combined": facts})
