"""Backends for the safeguard tier: llama.cpp in process, or an OpenAI-compatible endpoint.

llama.cpp runs in a worker process by default (:mod:`safecascade.tiers.llama_worker`; option
``isolation: process | none``). Both take a :class:`~safecascade.tiers.safeguard_prompt.RenderedPrompt` and return a
:class:`Completion` (text, per-token label log-probabilities, token counts). Failures raise
:class:`BackendError` with a ``kind`` (``timeout``, ``unavailable``, ``http``, ``overflow``,
``load``, and for the worker ``crashed``); the tier turns them into ``TierResult(error=...)``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from safecascade.tiers.llama_load import load_llama
from safecascade.tiers.safeguard_parse import TokenLP
from safecascade.tiers.safeguard_prompt import RenderedPrompt, Segment

log = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """A backend call that failed; ``kind`` says how (timeout, unavailable, http, overflow, load)."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@dataclass(frozen=True, kw_only=True)
class Completion:
    """What a backend generated for one prompt."""

    text: str
    tokens: tuple[TokenLP, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning: str | None = None  # a server's separate reasoning_content
    reasoning_tokens: int | None = None
    cached_tokens: int = 0  # prompt tokens whose KV state was reused
    finish_reason: str = ""
    latency_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- llama.cpp
class LlamaCppBackend:
    """``llama_cpp.Llama`` in this process.

    One context, guarded by a re-entrant lock (llama.cpp contexts are not thread-safe): every
    generation and every tokeniser call (llama.cpp does not document tokenisation as
    thread-safe) runs under it, so a Router sharing this backend between threads serialises
    here. Use the ``openai`` backend (a server with parallel slots) for concurrency. With
    ``prefix_reuse`` (default) the KV state of the previous prompt is kept and llama.cpp's
    ``generate`` re-evaluates only the tokens after the longest common prefix - the system and
    developer messages are the same on every call, so only the content is evaluated. With
    ``prefix_reuse=False`` the context is reset before each call (cold; for measurement).
    Label log-probabilities are read from the logits of each sampled position (no
    ``logits_all`` needed).
    """

    name = "llama_cpp"

    def __init__(self, *, model_path: str | Path, n_ctx: int = 4096, n_threads: int | None = None,
                 n_gpu_layers: int = 0, seed: int = 0, n_batch: int = 512, prefix_reuse: bool = True,
                 flash_attn: bool = False, extra_buffer_types: bool = False):
        path = Path(model_path)
        if not path.is_file():
            raise ValueError(f"safeguard model not found: {path}")
        try:
            import llama_cpp
        except ImportError as exc:
            raise ValueError("backend llama_cpp needs llama-cpp-python: pip install 'safecascade[llm]'") from exc
        self._llama_cpp = llama_cpp
        try:
            self.llm = load_llama(extra_bufts=extra_buffer_types, model_path=str(path), n_ctx=int(n_ctx),
                                  n_threads=n_threads, n_threads_batch=n_threads, n_gpu_layers=int(n_gpu_layers),
                                  seed=int(seed), n_batch=int(n_batch), flash_attn=bool(flash_attn), verbose=False)
        except Exception as exc:
            raise ValueError(f"cannot load safeguard model {path}: {exc}") from exc
        self.model_path = str(path)
        self.prefix_reuse = prefix_reuse
        self.lock = threading.RLock()
        self.metadata = dict(self.llm.metadata)
        self.n_ctx = self.llm.n_ctx()
        self.n_vocab = self.llm.n_vocab()
        self._grammars: dict[str, Any] = {}
        self._label_ids = (self._variants("0"), self._variants("1"))
        self.control_tokens = self._control_tokens()

    # -- tokens
    def _variants(self, label: str) -> list[int]:
        ids = []
        for s in (label, " " + label):
            t = self.llm.tokenize(s.encode(), add_bos=False, special=False)
            if len(t) == 1:
                ids.append(t[0])
        return sorted(set(ids))

    def _control_tokens(self) -> tuple[str, ...]:
        """Texts of the model's control tokens found in the chat-template vocabulary."""
        out = []
        for name in ("<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>", "<|eot_id|>",
                     "<|start_header_id|>", "<|end_header_id|>"):
            t = self.llm.tokenize(name.encode(), add_bos=False, special=True)
            if len(t) == 1:
                out.append(name)
        return tuple(out)

    def token_text(self, token: int) -> str:
        with self.lock:
            self._check_open()
            return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def tokenize_prompt(self, prompt: RenderedPrompt) -> list[int]:
        toks: list[int] = []
        first = True
        with self.lock:
            self._check_open()
            for seg in (*prompt.segments, Segment(text=prompt.prefill)):
                if not seg.text:
                    continue
                toks += self.llm.tokenize(seg.text.encode("utf-8"), add_bos=first, special=seg.trusted)
                first = False
        return toks

    def count_tokens(self, text: str) -> int:
        with self.lock:
            self._check_open()
            return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def split_tokens(self, text: str, size: int, overlap: int) -> list[str]:
        with self.lock:
            self._check_open()
            toks = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            step = max(1, size - overlap)
            out = []
            for i in range(0, len(toks), step):
                out.append(self.llm.detokenize(toks[i:i + size]).decode("utf-8", errors="replace"))
                if i + size >= len(toks):
                    break
        return out

    def stop_ids(self, harmony: bool) -> set[int]:
        ids = {self.llm.token_eos()}
        names = ("<|return|>", "<|call|>") if harmony else ("<end_of_turn>", "<|im_end|>", "<|eot_id|>")
        for n in names:
            t = self.llm.tokenize(n.encode(), add_bos=False, special=True)
            if len(t) == 1:
                ids.add(t[0])
        return ids

    def _grammar(self, gbnf: str) -> Any:
        g = self._grammars.get(gbnf)
        if g is None:
            g = self._llama_cpp.LlamaGrammar.from_string(gbnf, verbose=False)
            self._grammars[gbnf] = g
        return g

    # -- generation
    def complete(self, prompt: RenderedPrompt, *, max_tokens: int, temperature: float = 0.0,
                 grammar: str | None = None, harmony: bool = True, timeout_s: float | None = None,
                 effort: str | None = None) -> Completion:
        import numpy as np

        llama_cpp = self._llama_cpp
        with self.lock:
            self._check_open()
            t0 = time.perf_counter()
            toks = self.tokenize_prompt(prompt)
            if len(toks) + max_tokens > self.n_ctx:
                raise BackendError("overflow", f"prompt {len(toks)} + max_tokens {max_tokens} tokens > n_ctx {self.n_ctx}")
            if not self.prefix_reuse:
                self.llm.reset()
            cached = 0
            for a, b in zip(self.llm._input_ids.tolist() if self.llm.n_tokens else (), toks):
                if a != b:
                    break
                cached += 1
            stops = self.stop_ids(harmony)
            g = self._grammar(grammar) if grammar else None
            if g is not None and hasattr(g, "reset"):
                g.reset()
            out: list[TokenLP] = []
            raw: list[int] = []
            finish = "length"
            ids0, ids1 = self._label_ids
            for tok in self.llm.generate(toks, temp=temperature, top_k=1 if temperature == 0 else 40,
                                         repeat_penalty=1.0, grammar=g):
                ptr = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
                logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
                m = float(logits.max())
                lse = m + math.log(float(np.exp(logits - m).sum()))
                lp0 = float(np.logaddexp.reduce(logits[ids0]) - lse) if ids0 else None
                lp1 = float(np.logaddexp.reduce(logits[ids1]) - lse) if ids1 else None
                if tok in stops:
                    finish = "stop"
                    break
                raw.append(tok)
                out.append(TokenLP(text=self.token_text(tok), lp0=lp0, lp1=lp1))
                if len(raw) >= max_tokens:
                    break
                if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
                    raise BackendError("timeout", f"generation exceeded {timeout_s}s after {len(raw)} tokens")
            text = self.llm.detokenize(raw, special=True).decode("utf-8", errors="replace")
            return Completion(text=text, tokens=tuple(out), prompt_tokens=len(toks), completion_tokens=len(raw) + (finish == "stop"),
                              cached_tokens=cached if self.prefix_reuse else 0, finish_reason=finish,
                              latency_ms=(time.perf_counter() - t0) * 1000.0)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": Path(self.model_path).name, "n_ctx": self.n_ctx,
                "architecture": self.metadata.get("general.architecture", "")}

    def health(self) -> dict[str, Any]:
        """In process: ``up`` until closed (a crash here ends the process, so nothing reports it)."""
        closed = getattr(self, "_closed", False)
        return {"backend": self.name, "isolation": "none", "state": "down" if closed else "up", "pid": os.getpid(),
                "alive": not closed, "restarts": 0, "last_error": "closed" if closed else None}

    def _check_open(self) -> None:
        if getattr(self, "_closed", False):
            raise BackendError("unavailable", "the llama.cpp backend is closed")

    def close(self) -> None:
        """Free the model; waits for a running generation (the lock) so it never frees a context in use.
        Later calls fail with ``BackendError('unavailable')`` instead of touching freed memory."""
        lock = getattr(self, "lock", None)
        with lock if lock is not None else contextlib.nullcontext():
            self._closed = True
            llm = getattr(self, "llm", None)
            if llm is not None and hasattr(llm, "close"):
                try:
                    llm.close()
                except Exception:  # pragma: no cover
                    pass


# --------------------------------------------------------------------------- OpenAI-compatible
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
            import httpx
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
            tokens = _completion_logprobs(choice.get("logprobs"))
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
            tokens = _chat_logprobs(choice.get("logprobs"))
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


def _lp_pair(top: dict[str, float] | None) -> tuple[float | None, float | None]:
    if not top:
        return None, None
    res: list[float | None] = []
    for label in ("0", "1"):
        vals = [v for k, v in top.items() if k.strip() == label and v is not None]
        res.append(float(max(vals)) if len(vals) == 1 else (float(math.log(sum(math.exp(v) for v in vals))) if vals else None))
    return res[0], res[1]


def _completion_logprobs(lp: dict | None) -> tuple[TokenLP, ...]:
    if not lp or not lp.get("tokens"):
        return ()
    tops = lp.get("top_logprobs") or [None] * len(lp["tokens"])
    out = []
    for tok, top in zip(lp["tokens"], tops):
        lp0, lp1 = _lp_pair(top)
        out.append(TokenLP(text=tok, lp0=lp0, lp1=lp1))
    return tuple(out)


def _chat_logprobs(lp: dict | None) -> tuple[TokenLP, ...]:
    if not lp or not lp.get("content"):
        return ()
    out = []
    for item in lp["content"]:
        top = {t.get("token", ""): t.get("logprob") for t in (item.get("top_logprobs") or [])}
        top.setdefault(item.get("token", ""), item.get("logprob"))
        lp0, lp1 = _lp_pair(top)
        out.append(TokenLP(text=item.get("token", ""), lp0=lp0, lp1=lp1))
    return tuple(out)


def _bool_option(options: dict[str, Any], key: str, default: bool) -> bool:
    """A YAML boolean; ``'no'`` (a string) or ``1`` is an error, never read as true."""
    v = options.get(key, default)
    if not isinstance(v, bool):
        raise ValueError(f"safeguard option {key} must be true or false, got {v!r}")
    return v


WORKER_OPTIONS = ("worker_timeout_s", "worker_grace_s", "worker_load_timeout_s", "worker_backoff_s", "worker_backoff_max_s")


def create_backend(options: dict[str, Any], base_dir: Path) -> Any:
    """Build the backend that ``options['backend']`` names (``llama_cpp`` or ``openai``).

    ``llama_cpp`` runs in a worker process (:class:`~safecascade.tiers.llama_worker.WorkerBackend`)
    unless ``isolation: none`` (in this process: a llama.cpp crash ends the process).
    """
    kind = options.get("backend", "llama_cpp")
    if kind == "llama_cpp":
        mp = options.get("model_path", "stand-in")
        if mp in (None, "", "stand-in"):
            from safecascade.tiers.stand_in import stand_in_path

            path = stand_in_path()
        else:
            path = Path(os.path.expanduser(str(mp)))
            if not path.is_absolute():
                path = base_dir / path
        load = dict(model_path=path, n_ctx=int(options.get("n_ctx", 4096)),
                    n_threads=options.get("n_threads"), n_gpu_layers=int(options.get("n_gpu_layers", 0)),
                    seed=int(options.get("seed", 0)), n_batch=int(options.get("n_batch", 512)),
                    prefix_reuse=_bool_option(options, "prefix_reuse", True),
                    flash_attn=_bool_option(options, "flash_attn", False),
                    extra_buffer_types=_bool_option(options, "extra_buffer_types", False))
        isolation = options.get("isolation", "process")
        if isolation not in ("process", "none"):
            raise ValueError(f"safeguard option isolation must be process or none, got {isolation!r}")
        if isolation == "none":
            return LlamaCppBackend(**load)
        if os.name != "posix":  # pragma: no cover - the worker's pipes are passed as POSIX fds
            raise ValueError("safeguard option isolation: process needs a POSIX system; set isolation: none")
        from safecascade.tiers.llama_worker import WorkerBackend

        worker = {k[len("worker_"):]: options[k] for k in WORKER_OPTIONS if k in options}
        return WorkerBackend(**worker, **load)
    if kind == "openai":
        return OpenAIBackend(base_url=str(options.get("base_url", "")), model=str(options.get("model", "")),
                             api_key_env=options.get("api_key_env"), timeout_s=float(options.get("timeout_s", 30.0)),
                             retries=int(options.get("retries", 2)), backoff_s=float(options.get("backoff_s", 0.5)),
                             max_concurrency=int(options.get("max_concurrency", 4)),
                             endpoint=str(options.get("endpoint", "completions")),
                             constrain=str(options.get("constrain", "none")),
                             top_logprobs=int(options.get("top_logprobs", 10)),
                             context_tokens=int(options.get("context_tokens", options.get("n_ctx", 8192))),
                             chars_per_token=float(options.get("chars_per_token", 3.0)),
                             seed=options.get("seed", 0))
    raise ValueError(f"unknown safeguard backend {kind!r} (llama_cpp | openai)")
