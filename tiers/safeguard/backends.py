"""Building the safeguard tier's backend from its options: llama.cpp in a worker process (the
default), llama.cpp in process, or an OpenAI-compatible endpoint.

Every backend takes a :class:`~safecascade.tiers.safeguard.prompt.RenderedPrompt` and returns a
:class:`~safecascade.tiers.safeguard.completion.Completion` (text, per-token label
log-probabilities, token counts). Failures raise
:class:`~safecascade.tiers.safeguard.completion.BackendError` with a ``kind`` (``timeout``,
``unavailable``, ``http``, ``overflow``, ``load``, and for the worker ``crashed``); the tier turns
them into ``TierResult(error=...)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from safecascade.tiers.base import parse_options
from safecascade.tiers.safeguard.llama_backend import LlamaCppBackend
from safecascade.tiers.safeguard.llama_worker import WorkerBackend
from safecascade.tiers.safeguard.openai_backend import OpenAIBackend
from safecascade.tiers.safeguard.options import SafeguardOptions
from safecascade.tiers.safeguard.stand_in import stand_in_path


def create_backend(options: Mapping[str, Any] | SafeguardOptions, base_dir: Path, *, tier_name: str = "safeguard") -> Any:
    """Build the backend that ``options.backend`` names (``llama_cpp`` or ``openai``).

    ``options`` is a :class:`SafeguardOptions` or the config mapping (checked here: an unknown key
    or a wrong type -> ``ValueError`` naming it). ``llama_cpp`` runs in a worker process
    (:class:`~safecascade.tiers.safeguard.llama_worker.WorkerBackend`) unless ``isolation: none``
    (in this process: a llama.cpp crash ends the process).
    """
    o = options if isinstance(options, SafeguardOptions) else parse_options(
        SafeguardOptions, options, tier_name=tier_name, tier_type="safeguard")
    if o.backend == "openai":
        context = o.context_tokens if o.context_tokens is not None else (o.n_ctx if o.n_ctx is not None else 8192)
        return OpenAIBackend(base_url=o.base_url, model=o.model, api_key_env=o.api_key_env, timeout_s=o.timeout_s,
                             retries=o.retries, backoff_s=o.backoff_s, max_concurrency=o.max_concurrency,
                             endpoint=o.endpoint, constrain=o.constrain, top_logprobs=o.top_logprobs,
                             context_tokens=context, chars_per_token=o.chars_per_token, seed=o.seed)
    if o.model_path in (None, "", "stand-in"):
        path = stand_in_path()
    else:
        path = Path(os.path.expanduser(str(o.model_path)))
        if not path.is_absolute():
            path = base_dir / path
    if o.seed is None:
        raise ValueError(f"safeguard tier {tier_name!r}: options.seed must be an integer for backend llama_cpp, got None")
    load: dict[str, Any] = dict(model_path=path, n_ctx=o.n_ctx if o.n_ctx is not None else 4096, n_threads=o.n_threads,
                                n_gpu_layers=o.n_gpu_layers, seed=o.seed, n_batch=o.n_batch, prefix_reuse=o.prefix_reuse,
                                flash_attn=o.flash_attn, extra_buffer_types=o.extra_buffer_types)
    if o.isolation == "none":
        return LlamaCppBackend(**load)
    if os.name != "posix":  # pragma: no cover - the worker's pipes are passed as POSIX fds
        raise ValueError("safeguard option isolation: process needs a POSIX system; set isolation: none")
    return WorkerBackend(timeout_s=o.worker_timeout_s, grace_s=o.worker_grace_s, load_timeout_s=o.worker_load_timeout_s,
                         backoff_s=o.worker_backoff_s, backoff_max_s=o.worker_backoff_max_s, **load)
