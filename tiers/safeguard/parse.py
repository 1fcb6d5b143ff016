"""Parsing safeguard completions: harmony channels, the JSON verdict, label probabilities.

Known llama.cpp / server failure modes are recognised and reported as :class:`Malformed` with
a reason (the tier retries once, then returns an error so the router's ``on_error`` applies):

* ``missing_channel_markup``  - a harmony model answered without any ``<|channel|>`` header;
* ``assistantfinal_leak``     - special tokens were stripped by the server, leaving
  ``analysis...assistantfinal{...}`` as plain text;
* ``malformed_channel_header`` - a ``<|channel|>`` header that is not ``analysis``,
  ``commentary`` or ``final`` (optionally `` <|constrain|>json`` / `` json``);
* ``no_final_channel``        - the completion stopped (e.g. at max_tokens) inside analysis;
* ``no_json`` / ``bad_json`` / ``bad_verdict`` - the final answer is not the verdict object.

Probability: the label token's log-probabilities at the ``"violation": `` position of the
final answer give ``p = exp(lp1) / (exp(lp0) + exp(lp1))``. When they are missing, the
confidence word is mapped through :data:`CONFIDENCE_PROB` and the source is recorded.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

# Probability used when no label log-probabilities are available: (violation, confidence) -> p.
# A verdict without a (valid) confidence word counts as "medium".
CONFIDENCE_PROB: dict[tuple[int, str], float] = {
    (1, "high"): 0.95, (1, "medium"): 0.80, (1, "low"): 0.65,
    (0, "low"): 0.35, (0, "medium"): 0.20, (0, "high"): 0.05,
}
CONFIDENCES = ("low", "medium", "high")

_CHANNEL = re.compile(r"<\|channel\|>(?P<header>.*?)<\|message\|>", re.DOTALL)
_FINAL_HEADER = re.compile(r"^\s*final\s*(?:(?:<\|constrain\|>|\s)\s*json\s*)?$", re.IGNORECASE)
_OTHER_HEADER = re.compile(r"^\s*(analysis|commentary)\b[^<]*$", re.IGNORECASE)
_END = re.compile(r"<\|(?:end|return|call)\|>")
_LABEL_CTX = re.compile(r'"violation"\s*:\s*$')


class Malformed(ValueError):
    """A completion the parser cannot use; ``reason`` is one of the documented names."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class Channels:
    """The analysis text, the final text, and where the final text starts in the completion."""

    analysis: str
    final: str
    final_start: int


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """One policy's parsed verdict."""

    violation: int
    policy_category: str = ""
    rule_ids: tuple[str, ...] = ()
    confidence: str | None = None
    rationale: str = ""


@dataclass(frozen=True, kw_only=True)
class TokenLP:
    """One generated token: its text and the log-probabilities of the labels 0 and 1 at its
    position (None when unknown)."""

    text: str
    lp0: float | None = None
    lp1: float | None = None


@dataclass(frozen=True, kw_only=True)
class LabelProb:
    probability: float
    source: str  # logprobs | confidence_word
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- channels
def split_channels(text: str, *, harmony: bool, reasoning: str | None = None) -> Channels:
    """Split a completion into analysis and final text.

    ``harmony=False`` (chat-template models): the whole text is the final answer.
    ``reasoning`` is a server's separate ``reasoning_content``; the text is then the final
    answer unless it still carries harmony markup.
    """
    if not harmony:
        return Channels(analysis=reasoning or "", final=text, final_start=0)
    headers = list(_CHANNEL.finditer(text))
    if not headers:
        if reasoning is not None:
            if "assistantfinal" in text.replace(" ", "").lower()[:64]:
                raise Malformed("assistantfinal_leak", text[:80])
            return Channels(analysis=reasoning, final=text, final_start=0)
        if re.search(r"assistant\s*final", text, re.IGNORECASE) or text.lstrip().lower().startswith("analysis"):
            raise Malformed("assistantfinal_leak", text[:80])
        raise Malformed("missing_channel_markup", text[:80])
    analysis: list[str] = []
    final: Channels | None = None
    for i, m in enumerate(headers):
        header = m.group("header")
        body_start = m.end()
        nxt = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        end = _END.search(text, body_start, nxt)
        body_end = end.start() if end else nxt
        body = text[body_start:body_end]
        if _FINAL_HEADER.match(header):
            if final is None:
                final = Channels(analysis="", final=body, final_start=body_start)
        elif _OTHER_HEADER.match(header):
            if "assistantfinal" in body.replace(" ", "").lower():
                raise Malformed("assistantfinal_leak", body[:80])
            analysis.append(body)
        else:
            raise Malformed("malformed_channel_header", header[:40])
    if final is None:
        if any("assistantfinal" in a.replace(" ", "").lower() for a in analysis):
            raise Malformed("assistantfinal_leak")
        raise Malformed("no_final_channel", text[-80:])
    return Channels(analysis="\n".join(analysis), final=final.final, final_start=final.final_start)


# --------------------------------------------------------------------------- JSON verdicts
def _first_json_object(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        raise Malformed("no_json", text[:80])
    dec = json.JSONDecoder()
    while start >= 0:
        try:
            obj, _ = dec.raw_decode(text, start)
            if isinstance(obj, dict):
                return obj
        except json.JSONDecodeError:
            pass
        start = text.find("{", start + 1)
    raise Malformed("bad_json", text[:80])


def _verdict(obj: Any, where: str) -> Verdict:
    if not isinstance(obj, dict):
        raise Malformed("bad_verdict", f"{where}: not an object")
    v = obj.get("violation")
    if isinstance(v, bool):
        v = int(v)
    elif isinstance(v, str) and v.strip() in ("0", "1"):
        v = int(v.strip())
    elif isinstance(v, float) and v in (0.0, 1.0):
        v = int(v)
    if v not in (0, 1):
        raise Malformed("bad_verdict", f"{where}: violation is {obj.get('violation')!r}")
    rules = obj.get("rule_ids", [])
    if isinstance(rules, str):
        rules = [r for r in re.split(r"[,;\s]+", rules) if r]
    if not isinstance(rules, list):
        rules = []
    conf = obj.get("confidence")
    conf = conf.strip().lower() if isinstance(conf, str) and conf.strip().lower() in CONFIDENCES else None
    return Verdict(violation=v, policy_category=str(obj.get("policy_category") or "")[:80],
                   rule_ids=tuple(str(r).strip() for r in rules if str(r).strip())[:16],
                   confidence=conf, rationale=str(obj.get("rationale") or "")[:1000])


def parse_verdicts(final: str, policy_names: Sequence[str], *, joint: bool) -> dict[str, Verdict]:
    """Parse the final answer into one :class:`Verdict` per policy name."""
    obj = _first_json_object(final)
    if not joint:
        return {policy_names[0]: _verdict(obj, policy_names[0])}
    if "violation" in obj and len(policy_names) == 1:
        return {policy_names[0]: _verdict(obj, policy_names[0])}
    out = {}
    for name in policy_names:
        if name not in obj:
            raise Malformed("bad_verdict", f"no verdict for policy {name!r}")
        out[name] = _verdict(obj[name], name)
    return out


# --------------------------------------------------------------------------- probabilities
def label_logprobs(tokens: Sequence[TokenLP], *, prefill: str = "", final_start: int = 0
                   ) -> list[tuple[float | None, float | None]]:
    """(lp0, lp1) at each label position of the final answer, in order.

    ``tokens`` are the generated tokens; ``prefill`` is assistant text that precedes them (for
    chat models the start of the final answer). Offsets, like ``final_start``, count in
    ``prefill + generated text``. A label position is a token whose text starts with 0/1
    right after ``"violation":`` at or after ``final_start``.
    """
    out = []
    text = prefill
    for tok in tokens:
        stripped = tok.text.lstrip()
        lead = tok.text[: len(tok.text) - len(stripped)]
        if stripped[:1] in ("0", "1") and len(text) >= final_start and _LABEL_CTX.search((text + lead)[-40:]):
            out.append((tok.lp0, tok.lp1))
        text += tok.text
    return out


def probability(verdict: Verdict, lps: tuple[float | None, float | None] | None) -> LabelProb:
    """Violation probability from label log-probs, else from the confidence word."""
    if lps is not None:
        lp0, lp1 = lps
        if lp0 is not None and lp1 is not None:
            m = max(lp0, lp1)
            p = math.exp(lp1 - m) / (math.exp(lp0 - m) + math.exp(lp1 - m))
            return LabelProb(probability=_clip(p), source="logprobs", extra={"lp0": round(lp0, 4), "lp1": round(lp1, 4)})
        if lp1 is not None:  # only "1" among the returned top log-probs
            return LabelProb(probability=_clip(math.exp(lp1)), source="logprobs_partial", extra={"lp1": round(lp1, 4)})
        if lp0 is not None:
            return LabelProb(probability=_clip(1.0 - math.exp(lp0)), source="logprobs_partial", extra={"lp0": round(lp0, 4)})
    p = CONFIDENCE_PROB[(verdict.violation, verdict.confidence or "medium")]
    return LabelProb(probability=p, source="confidence_word")


def _clip(p: float) -> float:
    return min(1.0, max(0.0, float(p)))


def penalise(p: float, *, mode: str, factor: float) -> float:
    """Lower confidence after a hallucinated citation.

    ``toward_half`` (default): ``0.5 + (p - 0.5) * factor`` - the verdict keeps its side but
    loses confidence (a block at 0.9 becomes 0.7 with factor 0.5).
    ``scale``: ``p * factor`` - the violation probability itself is lowered.
    """
    if mode == "toward_half":
        return _clip(0.5 + (p - 0.5) * factor)
    if mode == "scale":
        return _clip(p * factor)
    raise ValueError(f"unknown hallucination penalty mode {mode!r} (toward_half | scale)")
