"""What a safeguard backend returns for one prompt (:class:`Completion`) and how a call fails
(:class:`BackendError`): the types every backend (llama.cpp in process, in a worker process, an
OpenAI-compatible endpoint) shares with the tier."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from safecascade.tiers.safeguard.parse import TokenLP


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
