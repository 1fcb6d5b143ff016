"""Scores that add an earlier tier's evidence: a tier's ``combine`` option.

A tier configured with ``combine: {harmful_request: {static: 1.0}}`` decides ``harmful_request``
on ``sigmoid(logit(own score) + 1.0 * logit(the static tier's score for this text))`` instead of
its own score alone: its bands, threshold and named threshold all apply to the combined score.
Two tiers that err on different texts (the fast tier scores some odd but benign real prompts as
harmful that the static tier does not, and the other way round) separate violations from benign
traffic better together than either does alone at a low false-positive rate (docs/policies.md,
"Two tiers' evidence for harmful requests").

The earlier tier's score is the one on its trace (``TierTrace.scores``). Where that tier did not
score the policy (it failed, or was not on this text's path) its term is left out (a logit of 0,
even odds), so the combined score then rests on the tier's own evidence only. Probabilities are
clipped to ``[1e-6, 1 - 1e-6]`` before the logit.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Mapping, Sequence

from safecascade.router.decision import TierTrace
from safecascade.tiers.base import TierResult

EPS = 1e-6


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


def earlier_logits(path: Sequence[TierTrace], weights: Mapping[str, float], policy: str) -> tuple[float, dict[str, float]]:
    """``sum(w * logit(score))`` over the earlier tiers named in ``weights`` that scored ``policy``
    on ``path``, and the scores used (tier -> score)."""
    total, used = 0.0, {}
    for trace in path:
        w = weights.get(trace.tier)
        s = trace.scores.get(policy) if w else None
        if s is None or not math.isfinite(float(s)):
            continue
        total += float(w) * logit(float(s))  # type: ignore[arg-type]
        used[trace.tier] = float(s)
    return total, used


def combined(res: TierResult, path: Sequence[TierTrace], combine: Mapping[str, Mapping[str, float]]) -> TierResult:
    """``res`` with each policy in ``combine`` rescored with the earlier tiers' evidence on ``path``
    (see the module doc). The block and allow scores, where the tier set its own, move by the same
    amount on the logit scale (an infinite allow score stays infinite). ``info["combined"]`` holds,
    per policy, the tier's own score, the earlier scores used and the combined score."""
    if not combine or res.error is not None or not res.scores:
        return res
    scores = dict(res.scores)
    block = dict(res.block_scores or {})
    allow = dict(res.allow_scores or {})
    facts: dict[str, dict[str, object]] = {}
    for pol, weights in combine.items():
        own = scores.get(pol)
        if own is None:
            continue
        extra, used = earlier_logits(path, weights, pol)
        if not used:
            continue
        scores[pol] = sigmoid(logit(own) + extra)
        if pol in block:
            block[pol] = min(scores[pol], sigmoid(logit(block[pol]) + extra))
        if pol in allow and math.isfinite(allow[pol]):
            allow[pol] = max(scores[pol], sigmoid(logit(allow[pol]) + extra))
        facts[pol] = {"own": round(float(own), 6), "earlier": {k: round(v, 6) for k, v in used.items()}, "score": round(scores[pol], 6)}
    if not facts:
        return res
    return replace(res, scores=scores, block_scores=block, allow_scores=allow,
                   info={**res.info, "combined": facts})
