"""Escalation budget: at most N calls per second (token bucket) and/or M in flight to the last tier.

The router asks ``acquire(n)`` before sending ``n`` texts to its last (expensive) tier and
calls ``release(granted)`` when that tier returns. Texts beyond the grant keep the previous
tier's verdict with reason ``budget_exhausted`` (see ``Router._budget_refusal``). ``acquire``
never blocks: in a latency-sensitive request path a refused escalation is cheaper than a queue.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable


class TokenBucketBudget:
    """Thread-safe, non-blocking token bucket plus an in-flight cap.

    ``rate_per_s`` tokens are added per second up to ``burst`` (the bucket starts full); each
    granted call takes one token; ``rate_per_s=None`` means no rate limit (then ``max_in_flight``
    is required and ``burst`` must be ``None``). ``max_in_flight`` (``None`` = unbounded) caps
    calls granted but not yet released. At least one of the two limits must be set: a budget
    that limits nothing is refused (``ValueError``), as is any non-positive value. Counters:
    ``granted``, ``refused`` (texts), ``refused_rate`` / ``refused_in_flight`` (which limit
    refused them).
    """

    def __init__(self, rate_per_s: float | None, burst: float | None = None, max_in_flight: int | None = None, *,
                 clock: Callable[[], float] = time.monotonic):
        if max_in_flight is not None and (not isinstance(max_in_flight, int) or isinstance(max_in_flight, bool) or max_in_flight < 1):
            raise ValueError(f"max_in_flight must be a positive integer or None, got {max_in_flight!r}")
        if rate_per_s is None:
            if burst is not None:
                raise ValueError("burst applies to the rate limit: give rate_per_s too")
            if max_in_flight is None:
                raise ValueError("a budget needs rate_per_s, max_in_flight or both (neither would limit anything)")
        else:
            if not isinstance(rate_per_s, (int, float)) or isinstance(rate_per_s, bool) or not rate_per_s > 0 or math.isinf(rate_per_s):
                raise ValueError(f"rate_per_s must be a positive finite number, got {rate_per_s!r}")
            burst = max(1.0, float(rate_per_s)) if burst is None else burst
            if not isinstance(burst, (int, float)) or isinstance(burst, bool) or not burst >= 1 or math.isinf(burst):
                raise ValueError(f"burst must be a finite number >= 1, got {burst!r}")
        self.rate_per_s = None if rate_per_s is None else float(rate_per_s)
        self.burst = math.inf if burst is None else float(burst)
        self.max_in_flight = max_in_flight
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._last = clock()
        self.in_flight = 0
        self.granted = 0
        self.refused = 0
        self.refused_rate = 0
        self.refused_in_flight = 0

    def _refill(self, now: float) -> None:
        if self.rate_per_s is None:
            return
        elapsed = max(0.0, now - self._last)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate_per_s)
        self._last = now

    def acquire(self, n: int) -> int:
        """Grant up to ``n`` calls now (0..n); never blocks. The caller must ``release`` the grant."""
        if n <= 0:
            return 0
        with self._lock:
            self._refill(self._clock())
            by_rate = n if self.rate_per_s is None else int(self._tokens + 1e-9)
            by_flight = n if self.max_in_flight is None else max(0, self.max_in_flight - self.in_flight)
            grant = min(n, by_rate, by_flight)
            if self.rate_per_s is not None:
                self._tokens -= grant
            self.in_flight += grant
            self.granted += grant
            refused = n - grant
            self.refused += refused
            if refused:
                if by_flight < by_rate and by_flight < n:
                    self.refused_in_flight += refused
                else:
                    self.refused_rate += refused
            return grant

    def release(self, n: int) -> None:
        """Return ``n`` granted calls (the tier finished with them)."""
        if n <= 0:
            return
        with self._lock:
            self.in_flight = max(0, self.in_flight - n)

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        with self._lock:
            self._refill(self._clock())
            return self._tokens

    def stats(self) -> dict[str, Any]:
        """Counters for /healthz and /metrics."""
        with self._lock:
            return {"rate_per_s": self.rate_per_s, "burst": None if self.rate_per_s is None else self.burst, "max_in_flight": self.max_in_flight,
                    "in_flight": self.in_flight, "granted": self.granted, "refused": self.refused,
                    "refused_rate": self.refused_rate, "refused_in_flight": self.refused_in_flight}
