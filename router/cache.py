"""Exact-match verdict cache: LRU with a size bound and a time-to-live.

The router builds the key (:meth:`safecascade.router.cascade.Router.cache_key`: normalised text
hash + config hash + policy hashes), so a config or policy change never serves a stale verdict.
Only fresh, fully decided verdicts are cached (the router skips input-rule, fallback and
budget-refused decisions).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable

from safecascade.router.decision import Decision


class LRUDecisionCache:
    """Thread-safe LRU cache of Decisions with a TTL, and hit / miss counters.

    ``max_items`` bounds the number of entries (least recently used evicted first); ``ttl_s``
    is how long an entry may be served after it was put (``None`` = no expiry). ``clock`` is
    injectable for tests (default :func:`time.monotonic`).
    """

    def __init__(self, max_items: int = 10_000, ttl_s: float | None = 3600.0, *,
                 clock: Callable[[], float] = time.monotonic):
        if not isinstance(max_items, int) or isinstance(max_items, bool) or max_items < 1:
            raise ValueError(f"max_items must be a positive integer, got {max_items!r}")
        if ttl_s is not None and (not isinstance(ttl_s, (int, float)) or isinstance(ttl_s, bool) or ttl_s <= 0):
            raise ValueError(f"ttl_s must be a positive number or None, got {ttl_s!r}")
        self.max_items = max_items
        self.ttl_s = None if ttl_s is None else float(ttl_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[float, Decision]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0

    def get(self, key: str) -> Decision | None:
        """The cached Decision for ``key``, or None (a miss) when absent or expired."""
        now = self._clock()
        with self._lock:
            entry = self._items.get(key)
            if entry is not None and self.ttl_s is not None and now - entry[0] > self.ttl_s:
                del self._items[key]
                self.expirations += 1
                entry = None
            if entry is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return entry[1]

    def put(self, key: str, decision: Decision) -> None:
        """Store (or refresh) ``key``; evicts the least recently used entries beyond ``max_items``."""
        now = self._clock()
        with self._lock:
            self._items[key] = (now, decision)
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
                self.evictions += 1

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses); 0.0 before the first lookup."""
        with self._lock:
            total = self.hits + self.misses
            return self.hits / total if total else 0.0

    def stats(self) -> dict[str, Any]:
        """Counters for /healthz and /metrics."""
        with self._lock:
            total = self.hits + self.misses
            return {"size": len(self._items), "max_items": self.max_items, "ttl_s": self.ttl_s,
                    "hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                    "expirations": self.expirations, "hit_rate": self.hits / total if total else 0.0}
