"""The ``safeguard`` tier: gpt-oss-safeguard (or a stand-in GGUF) as a policy-following judge.

Options (``type: safeguard``, all optional): :class:`~safecascade.tiers.safeguard.options.SafeguardOptions`
- the backend (``llama_cpp`` in a worker process or in process, or ``openai``: any
OpenAI-compatible server) and the prompt, decoding, windowing and citation settings; an unknown
key or a wrong type fails at load.

Result: ``scores`` = violation probability per policy (from label-token log-probs; from the
confidence word via :data:`~safecascade.tiers.safeguard.parse.CONFIDENCE_PROB` when log-probs
are unavailable - ``info.verdicts[policy].probability_source`` says which); ``rule_ids`` =
known cited rules; ``warnings`` may hold ``hallucinated_rule_ids``, ``content_neutralised``,
``windowed``; ``info`` holds the backend, latency, the per-policy verdict (violation,
confidence, category, rationale) - model text stays in the log and the Decision, never in
anything returned to the end user; ``cost`` holds prompt/completion/reasoning tokens and calls.
A failed call (timeout, server down, malformed output after one retry, content that does not
fit) gives ``TierResult(error=...)`` so that the router's ``on_error`` applies.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from safecascade.tiers.base import TierResult, TierSpec, parse_options
from safecascade.tiers.safeguard.backends import create_backend
from safecascade.tiers.safeguard.completion import BackendError
from safecascade.tiers.safeguard.options import SafeguardOptions, switch
from safecascade.tiers.safeguard.parse import (
    Malformed,
    Verdict,
    label_logprobs,
    parse_verdicts,
    penalise,
    probability,
    split_channels,
)
from safecascade.tiers.safeguard.prompt import (
    RenderedPrompt,
    developer_text,
    is_harmony_model,
    json_grammar,
    render_chat,
    render_harmony,
)

log = logging.getLogger(__name__)

# The tier-level options that ``SafeguardTier.opts`` always holds (the values given override them).
_DEFAULTS: dict[str, Any] = {
    "backend": "llama_cpp", "prompt_format": "auto", "reasoning_effort": "low", "multi_policy": "joint",
    "max_tokens": 512, "temperature": 0.0, "grammar": "auto", "prefill": "auto", "malformed_retries": 1,
    "on_overflow": "window", "max_windows": 8, "window_overlap": 32, "call_timeout_s": None,
    "hallucination_penalty": "toward_half", "hallucination_factor": 0.5,
}


@dataclass(frozen=True, kw_only=True)
class _Call:
    verdicts: dict[str, Verdict]
    probs: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    retries: int
    malformed: tuple[str, ...]
    latency_ms: float
    neutralised: int


class SafeguardTier:
    """The last tier: a policy-following LLM judge (see the module docstring for options)."""

    def __init__(self, *, name: str, policies: Mapping[str, Any], backend: Any, options: Mapping[str, Any]):
        #: the options, checked (:class:`SafeguardOptions`: unknown key or wrong type -> ValueError)
        self.options = o = parse_options(SafeguardOptions, options, tier_name=name, tier_type="safeguard")
        #: the options as given over the tier-level defaults, a plain dict (what the judge's cache key reads)
        self.opts = {**_DEFAULTS, **dict(options)}
        self.name = name
        self.policy_objs = dict(policies)
        self.policies = tuple(self.policy_objs)
        self.backend = backend
        fmt = o.prompt_format
        if fmt == "auto":
            fmt = "harmony" if is_harmony_model(getattr(backend, "metadata", {}) or {}) else "chat"
            if getattr(backend, "name", "") == "openai" and not getattr(backend, "metadata", {}).get("general.architecture"):
                model = str(getattr(backend, "model", "")).lower()
                fmt = "harmony" if ("gpt-oss" in model or "safeguard" in model or not model) else "chat"
        self.harmony = fmt == "harmony"
        self.joint = o.multi_policy == "joint" and len(self.policies) > 1
        groups = [self.policies] if self.joint else [(p,) for p in self.policies]
        self.groups: list[tuple[str, ...]] = [tuple(g) for g in groups]
        self._dev = {g: developer_text({p: self.policy_objs[p] for p in g}, joint=len(g) > 1) for g in self.groups}
        gram = switch(o.grammar)
        self.use_grammar = (gram == "on") or (gram == "auto" and not self.harmony)
        pre = switch(o.prefill)
        self.use_prefill = not self.harmony and ((pre == "on") or pre == "auto")
        self._stats_lock = threading.Lock()
        self.stats: dict[str, int] = {"calls": 0, "texts": 0, "retries": 0, "malformed": 0, "errors": 0,
                                      "fallbacks": 0, "hallucinated": 0, "windowed": 0, "neutralised": 0,
                                      "prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0,
                                      "cached_tokens": 0, "tokens": 0}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_spec(cls, spec: TierSpec) -> "SafeguardTier":
        """Build from a router config entry (options: :class:`SafeguardOptions`); a model that cannot
        be loaded -> ValueError naming it."""
        o = spec.options_as(SafeguardOptions)
        wanted = list(o.policies or spec.policies)
        missing = [p for p in wanted if p not in spec.policies]
        if missing:
            raise ValueError(f"safeguard tier {spec.name!r}: options.policies names unknown policies {missing}")
        backend = create_backend(o, spec.base_dir, tier_name=spec.name)
        return cls(name=spec.name, policies={p: spec.policies[p] for p in wanted}, backend=backend, options=spec.options)

    def health(self) -> dict[str, Any]:
        """The backend's health (state up | restarting | down, worker pid, restarts, last error)."""
        probe = getattr(self.backend, "health", None)
        if callable(probe):
            return dict(probe())
        return {**self._backend_info(), "state": "unknown"}

    def close(self) -> None:
        closer = getattr(self.backend, "close", None)
        if callable(closer):
            closer()

    # ------------------------------------------------------------------ prompts
    def render(self, group: tuple[str, ...], content: str) -> RenderedPrompt:
        dev = self._dev[group]
        if self.harmony:
            return render_harmony(dev, content, effort=self.options.reasoning_effort)
        md = getattr(self.backend, "metadata", {}) or {}
        prefill = '{"violation": ' if (self.use_prefill and len(group) == 1) else ""
        return render_chat(dev, content, template=md.get("tokenizer.chat_template") or None,
                           architecture=str(md.get("general.architecture", "")), prefill=prefill,
                           extra_tokens=getattr(self.backend, "control_tokens", ()))

    # ------------------------------------------------------------------ classify
    def classify(self, texts: Sequence[str]) -> list[TierResult]:
        """One TierResult per text; never raises for a single bad text."""
        out = []
        for text in texts:
            try:
                out.append(self._classify_one(text))
            except Exception as exc:  # backend or unexpected failure -> recorded error
                kind = getattr(exc, "kind", type(exc).__name__)
                log.warning("safeguard tier %s: %s", self.name, exc)
                self._bump(errors=1, fallbacks=1)
                msg = str(exc) if str(exc).startswith(f"{kind}:") else f"{kind}: {exc}"
                out.append(TierResult(scores={}, error=msg, info={**self._backend_info(), "error_kind": kind}))
        return out

    def _classify_one(self, text: str) -> TierResult:
        t0 = time.perf_counter()
        if not isinstance(text, str):
            return TierResult(scores={}, error=f"text must be str, got {type(text).__name__}")
        self._bump(texts=1)
        windows = self._windows(text)
        best: dict[str, tuple[float, Verdict, dict[str, Any]]] = {}
        cost = {"prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0, "cached_tokens": 0, "calls": 0}
        warnings: list[str] = []
        hallucinated: dict[str, list[str]] = {}
        malformed: list[str] = []
        neutralised = 0
        for window in windows:
            for group in self.groups:
                call = self._call(group, window)
                if isinstance(call, TierResult):  # malformed after retries
                    return call
                malformed.extend(call.malformed)
                neutralised = max(neutralised, call.neutralised)
                for k in ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens"):
                    cost[k] += getattr(call, k)
                cost["calls"] += 1 + call.retries
                for pol, verdict in call.verdicts.items():
                    lp = call.probs[pol]
                    p = lp.probability
                    good, bad = self.policy_objs[pol].check_citations(list(verdict.rule_ids))
                    detail = {"violation": verdict.violation, "confidence": verdict.confidence,
                              "policy_category": verdict.policy_category, "rationale": verdict.rationale,
                              "probability_source": lp.source, **lp.extra, "rule_ids": list(good)}
                    if bad:
                        hallucinated.setdefault(pol, []).extend(bad)
                        detail["hallucinated_rule_ids"] = list(bad)
                        detail["probability_raw"] = round(p, 6)
                        p = penalise(p, mode=self.options.hallucination_penalty, factor=self.options.hallucination_factor)
                    if pol not in best or p > best[pol][0]:
                        best[pol] = (p, verdict, detail)
        if hallucinated:
            warnings.append("hallucinated_rule_ids")
            self._bump(hallucinated=1)
        if len(windows) > 1:
            warnings.append("windowed")
        if neutralised:
            warnings.append("content_neutralised")
            self._bump(neutralised=1)
        latency = (time.perf_counter() - t0) * 1000.0
        info = {**self._backend_info(), "latency_ms": round(latency, 3), "windows": len(windows),
                "verdicts": {pol: d for pol, (_, _, d) in best.items()}}
        if hallucinated:
            info["hallucinated_rule_ids"] = {k: list(dict.fromkeys(v)) for k, v in hallucinated.items()}
        if malformed:
            info["malformed_retried"] = malformed
        if neutralised:
            info["neutralised_tokens"] = neutralised
        return TierResult(scores={pol: float(p) for pol, (p, _, _) in best.items()},
                          rule_ids={pol: tuple(d["rule_ids"]) for pol, (_, _, d) in best.items()},
                          warnings=tuple(warnings), info=info, cost=cost, latency_ms=latency)

    def _call(self, group: tuple[str, ...], content: str) -> _Call | TierResult:
        prompt = self.render(group, content)
        grammar = json_grammar(group, joint=len(group) > 1, prefilled=bool(prompt.prefill)) if self.use_grammar else None
        attempts = 1 + self.options.malformed_retries
        reasons: list[str] = []
        totals = {"prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0, "cached_tokens": 0}
        raw_texts: list[str] = []
        t0 = time.perf_counter()
        for attempt in range(attempts):
            kwargs: dict[str, Any] = {"max_tokens": self.options.max_tokens, "temperature": self.options.temperature,
                                      "grammar": grammar, "harmony": self.harmony}
            if self.harmony:
                kwargs["effort"] = self.options.reasoning_effort
            if self.options.call_timeout_s is not None:
                kwargs["timeout_s"] = self.options.call_timeout_s
            comp = self.backend.complete(prompt, **kwargs)
            self._bump(calls=1, prompt_tokens=comp.prompt_tokens, completion_tokens=comp.completion_tokens,
                       cached_tokens=comp.cached_tokens, tokens=comp.prompt_tokens + comp.completion_tokens)
            for k in ("prompt_tokens", "completion_tokens", "cached_tokens"):
                totals[k] += getattr(comp, k)
            full = prompt.prefill + comp.text
            try:
                ch = split_channels(full, harmony=self.harmony, reasoning=comp.reasoning)
                verdicts = parse_verdicts(ch.final, list(group), joint=len(group) > 1)
            except Malformed as exc:
                reasons.append(exc.reason)
                raw_texts.append(comp.text[:2000])
                self._bump(malformed=1)
                if attempt + 1 < attempts:
                    self._bump(retries=1)
                continue
            lps = label_logprobs(comp.tokens, prefill=prompt.prefill, final_start=ch.final_start) if comp.tokens else []
            probs = {}
            for i, pol in enumerate(group):
                probs[pol] = probability(verdicts[pol], lps[i] if i < len(lps) else None)
            rtoks = comp.reasoning_tokens
            if rtoks is None:
                rtoks = _reasoning_tokens(comp, ch.final_start, prompt.prefill)
            totals["reasoning_tokens"] += rtoks
            self._bump(reasoning_tokens=rtoks)
            return _Call(verdicts=verdicts, probs=probs, retries=attempt, malformed=tuple(reasons),
                         latency_ms=(time.perf_counter() - t0) * 1000.0, neutralised=prompt.neutralised, **totals)
        self._bump(errors=1, fallbacks=1)
        return TierResult(scores={}, error=f"malformed output after {attempts} attempt(s): {', '.join(reasons)}",
                          info={**self._backend_info(), "malformed": reasons, "raw": raw_texts,
                                "latency_ms": round((time.perf_counter() - t0) * 1000.0, 3)},
                          cost={**totals, "calls": attempts}, latency_ms=(time.perf_counter() - t0) * 1000.0)

    def _windows(self, text: str) -> list[str]:
        """The content as one piece, or token windows when it does not fit the context."""
        n_ctx = int(getattr(self.backend, "n_ctx", 0) or 0)
        if not n_ctx:
            return [text]
        group = max(self.groups, key=len)
        overhead = self.backend.count_tokens(self.render(group, "").text) + 8
        budget = n_ctx - overhead - self.options.max_tokens
        n = self.backend.count_tokens(text)
        if n <= budget:
            return [text]
        if self.options.on_overflow == "error" or budget < 32:
            raise _overflow(f"content of ~{n} tokens does not fit the context ({n_ctx} tokens; {max(budget, 0)} left for content)")
        overlap = min(self.options.window_overlap, budget // 4)
        windows = self.backend.split_tokens(text, budget, overlap)
        if len(windows) > self.options.max_windows:
            raise _overflow(f"content needs {len(windows)} windows of {budget} tokens, more than max_windows={self.options.max_windows}")
        self._bump(windowed=1)
        return windows

    def _backend_info(self) -> dict[str, Any]:
        d = dict(self.backend.describe()) if hasattr(self.backend, "describe") else {"backend": type(self.backend).__name__}
        d["prompt_format"] = "harmony" if self.harmony else "chat"
        if self.harmony:
            d["reasoning_effort"] = self.options.reasoning_effort
        return d

    def _bump(self, **counts: int) -> None:
        with self._stats_lock:
            for k, v in counts.items():
                self.stats[k] = self.stats.get(k, 0) + int(v)


def _overflow(msg: str) -> Exception:
    return BackendError("overflow", msg)


def _reasoning_tokens(comp: Any, final_start: int, prefill: str) -> int:
    """Generated tokens before the final answer starts (the analysis channel)."""
    if not comp.tokens or final_start <= len(prefill):
        return 0
    pos = len(prefill)
    n = 0
    for tok in comp.tokens:
        if pos >= final_start:
            break
        pos += len(tok.text)
        n += 1
    return n
