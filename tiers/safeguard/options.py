"""The safeguard tier's options (``type: safeguard``, ``options:`` in the router config), declared
once: the backend's (llama.cpp in a worker process or in process, or an OpenAI-compatible
endpoint) and the tier's (prompt, decoding, windowing, citation checks). All are optional.

An unknown key or a value of the wrong type fails when the router loads, naming the key, the tier
and the valid keys (:func:`safecascade.tiers.base.parse_options`). The ``grammar`` / ``prefill``
switches take ``auto``, ``on`` or ``off``; YAML reads a bare ``on`` / ``off`` as a boolean, which
means the same (:func:`switch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Backend = Literal["llama_cpp", "openai"]
Switch = Literal["auto", "on", "off"]


def switch(value: bool | str) -> str:
    """A ``grammar`` / ``prefill`` value as ``auto`` / ``on`` / ``off`` (YAML's bare on/off are booleans)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


@dataclass(frozen=True, kw_only=True)
class SafeguardOptions:
    """Options of a ``type: safeguard`` tier (see the module docstring)."""

    # ------------------------------------------------------------------ which backend
    backend: Backend = "llama_cpp"
    """``llama_cpp`` (a GGUF through llama.cpp) or ``openai`` (any OpenAI-compatible server)."""

    # ------------------------------------------------------------------ llama_cpp
    model_path: str | Path | None = "stand-in"
    """A GGUF path (relative to the config) or ``stand-in`` (the small test model; also null/empty)."""
    n_ctx: int | None = None
    """llama.cpp context size (default 4096); for ``openai``, the context when ``context_tokens`` is unset."""
    n_threads: int | None = None
    """llama.cpp threads (null: llama.cpp's default)."""
    n_gpu_layers: int = 0
    """Layers offloaded to the GPU (-1 = all)."""
    n_batch: int = 512
    """llama.cpp prompt-evaluation batch size."""
    flash_attn: bool = False
    """llama.cpp flash attention."""
    extra_buffer_types: bool = False
    """llama.cpp's repacked CPU buffer types (off: their AMX kernel segfaults; see :mod:`safecascade.tiers.llama_load`)."""
    prefix_reuse: bool = True
    """Keep the policy prefix's KV state between calls (only the content is evaluated)."""
    isolation: Literal["process", "none"] = "process"
    """``process``: llama.cpp in a worker process (a crash or hang is a recorded error and a
    restart); ``none``: in this process (a crash ends it)."""
    worker_timeout_s: float = 600.0
    """Hard deadline of one worker call, seconds (a complete() call: ``call_timeout_s`` + ``worker_grace_s``)."""
    worker_grace_s: float = 5.0
    """Seconds the worker gets beyond ``call_timeout_s`` before it is killed."""
    worker_load_timeout_s: float = 600.0
    """Seconds the worker may take to load the model."""
    worker_backoff_s: float = 0.5
    """Restart delay after a crash: ``worker_backoff_s * 2**(failures-1)``, capped by ``worker_backoff_max_s``."""
    worker_backoff_max_s: float = 30.0
    """Cap of the restart delay, seconds."""

    # ------------------------------------------------------------------ openai
    base_url: str = ""
    """The server's base URL, e.g. ``http://127.0.0.1:8080/v1`` (required for ``openai``)."""
    model: str = ""
    """The model name the server knows, e.g. ``gpt-oss-safeguard-20b``."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (null: no key)."""
    timeout_s: float = 30.0
    """Per-request timeout, seconds."""
    retries: int = 2
    """Retries on connection errors, timeouts, 429 and 5xx (backoff ``backoff_s * 2**i``)."""
    backoff_s: float = 0.5
    """First retry delay, seconds."""
    max_concurrency: int = 4
    """Requests in flight at once."""
    endpoint: Literal["completions", "chat"] = "completions"
    """``completions`` (the raw rendered prompt) or ``chat`` (messages)."""
    constrain: Literal["none", "grammar", "guided_json"] = "none"
    """Constrained decoding on the server: ``grammar`` (llama.cpp servers), ``guided_json`` (vLLM)."""
    top_logprobs: int = 10
    """Top log-probabilities asked per token (for the label probabilities)."""
    context_tokens: int | None = None
    """The server's context in tokens, for windowing (default: ``n_ctx``, else 8192)."""
    chars_per_token: float = 3.0
    """Characters per token when estimating lengths (the server's tokenizer is not local)."""
    seed: int | None = 0
    """Sampling seed (``openai``: null sends none)."""

    # ------------------------------------------------------------------ the tier (both backends)
    prompt_format: Literal["auto", "harmony", "chat"] = "auto"
    """``auto``: harmony when the model is gpt-oss, else the GGUF's chat template."""
    reasoning_effort: Literal["low", "medium", "high"] = "low"
    """Harmony reasoning effort."""
    multi_policy: Literal["joint", "separate"] = "joint"
    """``joint``: one call, a verdict per policy; ``separate``: a call per policy."""
    policies: tuple[str, ...] | None = None
    """A subset of the router's policies to judge (null: all)."""
    max_tokens: int = 512
    """Completion budget per call (reasoning + answer)."""
    temperature: float = 0.0
    """Sampling temperature (0: greedy)."""
    grammar: bool | Switch = "auto"
    """GBNF on the JSON answer: ``auto`` (on for the chat format), ``on``, ``off``."""
    prefill: bool | Switch = "auto"
    """Prefill ``{"violation": `` in the answer: ``auto`` (chat format, single policy), ``on``, ``off``."""
    malformed_retries: int = 1
    """Retries after an answer that does not parse."""
    on_overflow: Literal["window", "error"] = "window"
    """Content longer than the context: ``window`` (split it, score = max) or ``error``."""
    max_windows: int = 8
    """Most windows one text may be split into."""
    window_overlap: int = 32
    """Tokens shared by consecutive windows."""
    call_timeout_s: float | None = None
    """In-process generation time limit per call, seconds (null: none)."""
    hallucination_penalty: Literal["toward_half", "scale"] = "toward_half"
    """After a cited rule id that does not exist: ``toward_half`` (p -> 0.5 + (p - 0.5) * factor)
    or ``scale`` (p -> p * factor)."""
    hallucination_factor: float = 0.5
    """The factor of ``hallucination_penalty``."""
