"""safecascade: a policy-following moderation router, cheapest tier first.

    from safecascade import Router
    router = Router.load()                 # embedded default: heuristic -> static -> multilingual -> fast, shipped models
    d = router.classify("text")            # -> Decision: d.action, d.flagged, d.tier, d.score ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Router", "Decision", "TierResult", "Tier", "load", "__version__"]

if TYPE_CHECKING:
    from safecascade.router.cascade import Router
    from safecascade.router.decision import Decision
    from safecascade.tiers.base import Tier, TierResult


def load(source: Any = None, *, safeguard: str | None = None) -> "Router":
    """Shorthand for :meth:`Router.load`."""
    from safecascade.router.cascade import Router

    return Router.load(source, safeguard=safeguard)


def __getattr__(name: str) -> Any:  # lazy, so `import safecascade` stays cheap
    if name == "Router":
        from safecascade.router.cascade import Router

        return Router
    if name == "Decision":
        from safecascade.router.decision import Decision

        return Decision
    if name in ("Tier", "TierResult"):
        from safecascade.tiers import base

        return getattr(base, name)
    raise AttributeError(f"module 'safecascade' has no attribute {name!r}")
