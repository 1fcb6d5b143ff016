"""Tiers of the cascade: one tier per module, all implementing :class:`safecascade.tiers.base.Tier`.

Heavy dependencies (onnxruntime, llama_cpp, torch) are imported inside the tier that needs them,
so importing this package is cheap and has no side effects.
"""

from safecascade.tiers.base import Tier, TierResult, TierSpec, available_tiers, create_tier, register_tier

__all__ = ["Tier", "TierResult", "TierSpec", "available_tiers", "create_tier", "register_tier"]
