"""A two-tier router for the tier tests: a tier under test deciding by its band, then a last tier."""

from __future__ import annotations

from typing import Any, Iterable

from safecascade.router.cascade import Router
from safecascade.router.config import parse_config
from safecascade.router.decision import Decision


def decide_two_tiers(first: dict[str, Any], last: dict[str, Any], texts: Iterable[str]) -> list[Decision]:
    """The Decisions of a jailbreak-only router made of ``first`` (with its bands) and ``last``."""
    cfg = parse_config({"version": 1, "name": "t", "policies": {"jailbreak": "builtin:jailbreak"}, "tiers": [first, last]})
    router = Router.load(cfg)
    try:
        return router.classify_batch(list(texts))
    finally:
        router.close()
