"""The ``safeguard`` tier: gpt-oss-safeguard (or a stand-in GGUF) as a policy-following judge.

Modules:

- :mod:`~safecascade.tiers.safeguard.tier`: :class:`SafeguardTier` (prompts, calls, verdicts, windows).
- :mod:`~safecascade.tiers.safeguard.options`: :class:`SafeguardOptions`, the tier's options.
- :mod:`~safecascade.tiers.safeguard.prompt`: the harmony / chat prompt and the answer grammar.
- :mod:`~safecascade.tiers.safeguard.parse`: parsing answers, label log-probabilities, penalties.
- :mod:`~safecascade.tiers.safeguard.backends`: ``create_backend`` from the options; the backends in
  :mod:`~safecascade.tiers.safeguard.llama_backend` (llama.cpp in process),
  :mod:`~safecascade.tiers.safeguard.llama_worker` (llama.cpp in a worker process, whose child is
  :mod:`~safecascade.tiers.safeguard.llama_worker_child`) and
  :mod:`~safecascade.tiers.safeguard.openai_backend` (an OpenAI-compatible server), with their
  shared types in :mod:`~safecascade.tiers.safeguard.completion`.
- :mod:`~safecascade.tiers.safeguard.stand_in`: the small stand-in GGUF for tests and the demo.
"""

from __future__ import annotations

from safecascade.tiers.safeguard.options import SafeguardOptions
from safecascade.tiers.safeguard.tier import SafeguardTier

__all__ = ["SafeguardOptions", "SafeguardTier"]
