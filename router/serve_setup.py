"""The Router a server runs: :func:`build_router` loads one and attaches the serving components
(verdict cache, escalation budget, verdict log); :func:`check_budget_action` refuses a budget action
the server cannot honour. Used by ``safecascade serve`` (:mod:`safecascade.router.serve_cli`) and tests.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from safecascade.router.budget import DEFAULT_CHARS_PER_UNIT, DEFAULT_MAX_CLIENTS, ClientBudgets, TokenBucketBudget
from safecascade.router.cache import LRUDecisionCache
from safecascade.router.cascade import Router
from safecascade.router.config import BUDGET_ACTIONS
from safecascade.router.verdict_log import VerdictLog

log = logging.getLogger(__name__)


def build_router(config: str | None = None, *, log_path: str | None = None, store_text: bool = False,
                 cache_size: int = 10_000, cache_ttl_s: float = 3600.0, budget_rps: float | None = None,
                 budget_burst: float | None = None, budget_in_flight: int | None = None,
                 client_budget_rps: float | None = None, client_budget_burst: float | None = None,
                 client_budget_in_flight: int | None = None, max_clients: int = DEFAULT_MAX_CLIENTS,
                 budget_unit_chars: int = DEFAULT_CHARS_PER_UNIT,
                 on_budget_exhausted: str | None = None) -> tuple[Router, VerdictLog | None]:
    """A Router with the serving components attached (cache, budget, verdict log).

    An escalation budget (in work units, see :mod:`safecascade.router.budget`) is attached when
    ``budget_rps`` or ``budget_in_flight`` is given (either alone works: the global budget);
    ``client_budget_*`` add a bucket per client (at most ``max_clients``, LRU) under the global
    one. Values that limit nothing (0, negative, a burst without a rate) raise ``ValueError``
    before anything is loaded. ``on_budget_exhausted`` overrides the last tier's action for every
    policy (``block`` | ``allow`` | ``fast-verdict`` | ``queue``)."""
    if on_budget_exhausted is not None and on_budget_exhausted not in BUDGET_ACTIONS:
        raise ValueError(f"on_budget_exhausted must be one of {'|'.join(BUDGET_ACTIONS)}, got {on_budget_exhausted!r}")
    global_budget: TokenBucketBudget | None = None
    if budget_rps is not None or budget_in_flight is not None or budget_burst is not None:
        global_budget = TokenBucketBudget(budget_rps, budget_burst, budget_in_flight, chars_per_unit=budget_unit_chars)  # validates
    budget: TokenBucketBudget | ClientBudgets | None = global_budget
    if client_budget_rps is not None or client_budget_in_flight is not None or client_budget_burst is not None:
        budget = ClientBudgets(client_budget_rps, client_budget_burst, client_budget_in_flight, global_budget=global_budget,
                               max_clients=max_clients, chars_per_unit=budget_unit_chars)
    router = Router.load(config)
    if on_budget_exhausted is not None:
        last = router.config.tiers[-1]
        cfg = replace(router.config, tiers=(*router.config.tiers[:-1], replace(last, on_budget_exhausted={"default": on_budget_exhausted})))
        router.config, router.config_hash = cfg, cfg.sha
    if cache_size and cache_size > 0:
        router.cache = LRUDecisionCache(cache_size, cache_ttl_s if cache_ttl_s and cache_ttl_s > 0 else None)
    router.budget = budget
    vlog = None
    if log_path:
        try:
            vlog = VerdictLog(log_path, store_text=store_text)
        except BaseException:
            router.close()
            raise
        router.sinks.append(vlog)
    return router, vlog


def check_budget_action(router: Router, *, post_moderation: bool) -> None:
    """Refuse ``on_budget_exhausted: queue`` with a budget but without post-moderation (the
    router would block those texts instead); warn when an uncertain text can be allowed on a
    spent budget (``allow``, ``fast-verdict``): draining the budget then switches the last tier off."""
    if router.budget is None or len(router.tiers) < 2:
        return
    actions = set((router.config.tiers[-1].on_budget_exhausted or {"default": "block"}).values())
    if "queue" in actions and not post_moderation:
        raise ValueError("on_budget_exhausted: queue needs --post-moderation (the queue is the post-moderation queue)")
    if actions & {"allow", "fast-verdict"}:
        log.warning("on_budget_exhausted is %s: a caller who drains the escalation budget gets uncertain texts "
                    "past the last tier (block or queue fail closed; docs/serving.md)", "|".join(sorted(actions)))
