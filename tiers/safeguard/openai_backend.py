"""The safeguard tier's backend for any OpenAI-compatible server (:class:`OpenAIBackend`), and
the reading of label log-probabilities from its answers."""

from __future__ import annotations

import math
import os
import random
import threading
import time
from typing import Any

from safecascade.tiers.safeguard.completion import BackendError, Completion
from safecascade.tiers.safeguard.parse import TokenLP
from safecascade.tiers.safeguard.prompt import RenderedPrompt


class OpenAIBackend:
    """Any OpenAI-compatible server: ``python -m llama_cpp.server``, ``llama-server``, vLLM, Ollama.

    ``endpoint: completions`` (default) sends the rendered prompt as raw text to
    ``/v1/completions`` (same prompt and parsing as in process; ``skip_special_tokens: false``
    is sent so vLLM keeps the harmony markup), with ``logprobs`` = ``top_logprobs`` top
    alternatives per token. ``endpoint: chat`` sends system/user messages to
    ``/v1/chat/completions`` and reads ``reasoning_content`` / ``content``.
    ``constrain``: ``grammar`` (GBNF in the ``grammar`` field: llama.cpp servers),
    ``guided_json`` (vLLM), or ``none``. Timeouts, retries with exponential backoff and jitter
    (on connection errors, timeouts, 429 and 5xx), and a concurrency limit (semaphore).
    """

    name = "openai"

    def __init__(self, *, base_url: str, model: str = "", api_key_env: str | None = None, timeout_s: float = 30.0,
                 retries: int = 2, backoff_s: float = 0.5, max_concurrency: int = 4, endpoint: str = "completions",
                 constrain: str = "none", top_logprobs: int = 10, context_tokens: int = 8192,
                 chars_per_token: float = 3.0, seed: int | None = 0):
        try:
            import httpx  # optional: the [llm] extra
        except ImportError as exc:  # pragma: no cover
            raise ValueError("backend openai needs httpx: pip install 'safecascade[llm]'") from exc
        if not base_url:
            raise ValueError("backend openai needs options.base_url (e.g. http://127.0.0.1:8080/v1)")
        if endpoint not in ("completions", "chat"):
            raise ValueError(f"options.endpoint must be completions|chat, got {endpoint!r}")
        if constrain not in ("none", "grammar", "guided_json"):
            raise ValueError(f"options.constrain must be none|grammar|guided_json, got {constrain!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.endpoint = endpoint
        self.constrain = constrain
        self.top_logprobs = int(top_logprobs)
        self.n_ctx = int(context_tokens)
        self.chars_per_token = float(chars_per_token)
        self.seed = seed
        self.control_tokens: tuple[str, ...] = ()
        self.metadata: dict[str, str] = {"general.name": model}
        headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ValueError(f"backend openai: environment variable {api_key_env} (options.api_key_env) is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._httpx = httpx
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout_s)
        self.sem = threading.BoundedSemaphore(max(1, int(max_concurrency)))

    # -- token estimates (the server's tokenizer is not local)
    def count_tokens(self, text: str) -> int:
        return math.ceil(len(text) / self.chars_per_token)

    def split_tokens(self, text: str, size: int, overlap: int) -> list[str]:
        csize = max(1, int(size * self.chars_per_token))
        cstep = max(1, int((size - overlap) * self.chars_per_token))
        out = []
        for i in range(0, len(text), cstep):
            out.append(text[i:i + csize])
            if i + csize >= len(text):
                break
        return out

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        httpx = self._httpx
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * (2 ** (attempt - 1)) * (1 + 0.25 * random.random()))
            try:
                with self.sem:
                    r = self.client.post(path, json=body)
            except httpx.TimeoutException as exc:
                last = BackendError("timeout", f"{self.base_url}{path} did not answer within {self.timeout_s}s")
                continue
            except httpx.TransportError as exc:
                last = BackendError("unavailable", f"{self.base_url}{path}: {type(exc).__name__}: {exc}")
                continue
            if r.status_code == 429 or r.status_code >= 500:
                last = BackendError("http", f"{self.base_url}{path} answered {r.status_code}: {r.text[:200]}")
                continue
            if r.status_code >= 400:
                raise BackendError("http", f"{self.base_url}{path} answered {r.status_code}: {r.text[:200]}")
            try:
                return r.json()
            except ValueError:
                raise BackendError("http", f"{self.base_url}{path} answered non-JSON: {r.text[:200]}") from None
        assert last is not None
        raise last

    def complete(self, prompt: RenderedPrompt, *, max_tokens: int, temperature: float = 0.0,
                 grammar: str | None = None, harmony: bool = True, timeout_s: float | None = None,
                 json_schema: dict | None = None, effort: str | None = None) -> Completion:
        t0 = time.perf_counter()
        body: dict[str, Any] = {"max_tokens": int(max_tokens), "temperature": float(temperature)}
        if self.model:
            body["model"] = self.model
        if self.seed is not None:
            body["seed"] = self.seed
        if self.constrain == "grammar" and grammar:
            body["grammar"] = grammar
        elif self.constrain == "guided_json" and json_schema:
            body["guided_json"] = json_schema
        if self.endpoint == "completions":
            body.update(prompt=prompt.text, logprobs=self.top_logprobs, skip_special_tokens=False)
            if harmony:
                body["stop"] = ["<|return|>", "<|call|>"]
            data = self._post("/completions", body)
            choice = (data.get("choices") or [{}])[0]
            text = choice.get("text") or ""
            tokens = completion_logprobs(choice.get("logprobs"))
            reasoning = None
        else:
            # The server applies the model's template (gpt-oss: the system message becomes the
            # developer message); the content is already neutralised and delimited.
            body.update(messages=[{"role": "system", "content": prompt.developer},
                                  {"role": "user", "content": prompt.user}],
                        logprobs=True, top_logprobs=self.top_logprobs)
            if harmony and effort:  # vLLM / OpenAI field, and llama-server's template kwargs
                body.update(reasoning_effort=effort, chat_template_kwargs={"reasoning_effort": effort})
            data = self._post("/chat/completions", body)
            choice = (data.get("choices") or [{}])[0]
            msg = choice.get("message") or {}
            text = msg.get("content") or ""
            reasoning = msg.get("reasoning_content") or msg.get("reasoning")
            tokens = chat_logprobs(choice.get("logprobs"))
        usage = data.get("usage") or {}
        details = usage.get("completion_tokens_details") or {}
        return Completion(text=text, tokens=tokens, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or len(tokens)), reasoning=reasoning,
                          reasoning_tokens=details.get("reasoning_tokens"), finish_reason=str(choice.get("finish_reason") or ""),
                          cached_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
                          latency_ms=(time.perf_counter() - t0) * 1000.0)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "base_url": self.base_url, "endpoint": self.endpoint}

    def close(self) -> None:
        self.client.close()


def lp_pair(top: dict[str, float] | None) -> tuple[float | None, float | None]:
    """Log-probabilities of the labels ``0`` and ``1`` in one position's top log-probs (variants
    with surrounding spaces summed), ``None`` for a label not among them."""
    if not top:
        return None, None
    res: list[float | None] = []
    for label in ("0", "1"):
        vals = [v for k, v in top.items() if k.strip() == label and v is not None]
        res.append(float(max(vals)) if len(vals) == 1 else (float(math.log(sum(math.exp(v) for v in vals))) if vals else None))
    return res[0], res[1]


def completion_logprobs(lp: dict | None) -> tuple[TokenLP, ...]:
    """Per-token label log-probabilities from a ``/completions`` answer's ``logprobs``."""
    if not lp or not lp.get("tokens"):
        return ()
    tops = lp.get("top_logprobs") or [None] * len(lp["tokens"])
    out = []
    for tok, top in zip(lp["tokens"], tops):
        lp0, lp1 = lp_pair(top)
        out.append(TokenLP(text=tok, lp0=lp0, lp1=lp1))
    return tuple(out)


def chat_logprobs(lp: dict | None) -> tuple[TokenLP, ...]:
    """Per-token label log-probabilities from a ``/chat/completions`` answer's ``logprobs``."""
    if not lp or not lp.get("content"):
        return ()
    out = []
    for item in lp["content"]:
        top = {t.get("token", ""): t.get("logprob") for t in (item.get("top_logprobs") or [])}
        top.setdefault(item.get("token", ""), item.get("logprob"))
        lp0, lp1 = lp_pair(top)
        out.append(TokenLP(text=item.get("token", ""), lp0=lp0, lp1=lp1))
    return tuple(out)
