"""Tiers of the cascade: one tier per module (the safeguard tier: the package ``tiers/safeguard/``),
all implementing :class:`safecascade.tiers.base.Tier`, each with its options dataclass.

Heavy dependencies (onnxruntime, llama_cpp, torch) are imported inside the tier that needs them,
so importing this package is cheap and has no side effects.
"""

from __future__ import annotations

from safecascade.tiers.base import (
    Tier,
    TierResult,
    TierSpec,
    available_tiers,
    create_tier,
    parse_options,
    register_tier,
    tier_options_class,
)

__all__ = ["Tier", "TierResult", "TierSpec", "available_tiers", "create_tier", "parse_options", "register_tier",
           "tier_options_class"]
