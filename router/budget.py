"""Escalation budget: safeguard work per second (token bucket) and/or calls in flight, globally
and per client.

The router asks the budget before sending texts to its last (expensive) tier and releases the
grant when that tier returns. The budget is counted in **work units**, not texts: a text costs
``text_units(text) = max(1, ceil(len(text) / chars_per_unit))`` units (default 4096 characters,
about 1,000 tokens at 4 characters a token, roughly one safeguard call), so one 60,000-character
text costs 15 units, its share of the safeguard's time. The in-flight cap counts texts (calls).
Texts beyond the grant get the last tier's ``on_budget_exhausted`` action (see
``Router._budget_refusal``). Acquiring never blocks: in a latency-sensitive request path a
refused escalation is cheaper than a queue.

:class:`TokenBucketBudget` is one bucket (a global budget). :class:`ClientBudgets` gives every
client (auth identity or ``X-Client-Id``, see ``router.http_api``) its own bucket, at most
``max_clients`` of them (least recently used evicted), with an optional global bucket on top.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Sequence

DEFAULT_CHARS_PER_UNIT = 4096
DEFAULT_MAX_CLIENTS = 10_000
ANONYMOUS = "anonymous"


def text_units(text: str, chars_per_unit: int = DEFAULT_CHARS_PER_UNIT) -> int:
    """Work units one text costs the last tier: ``max(1, ceil(len(text) / chars_per_unit))``."""
    return max(1, -(-len(text) // chars_per_unit))


def client_key(*parts: str | None) -> str:
    """A bounded, non-reversible client key from identity parts (a bearer token, an
    ``X-Client-Id`` value): ``sha256`` of the non-empty parts, 16 hex digits; ``anonymous``
    when every part is empty. Secrets never reach stats or logs."""
    kept = [p for p in parts if p]
    if not kept:
        return ANONYMOUS
    return hashlib.sha256("\x1f".join(kept).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _check_chars_per_unit(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"chars_per_unit must be a positive integer, got {v!r}")
    return v


class TokenBucketBudget:
    """Thread-safe, non-blocking token bucket of work units plus an in-flight cap (texts).

    ``rate_per_s`` units are added per second up to ``burst`` (the bucket starts full; default
    ``max(1, rate_per_s)``); each granted text takes :func:`text_units` units. A text costing
    more than ``burst`` is granted when the bucket is full and leaves it in debt (so it still
    pays its full share). ``rate_per_s=None`` means no rate limit (then ``max_in_flight`` is
    required and ``burst`` must be ``None``). ``max_in_flight`` (``None`` = unbounded) caps texts
    granted but not yet released. A budget that limits nothing, or any non-positive value, is
    refused (``ValueError``). Counters: ``granted`` / ``refused`` (texts), ``granted_units``,
    ``refused_rate`` / ``refused_in_flight`` (texts, by the limit that refused them).
    """

    def __init__(self, rate_per_s: float | None, burst: float | None = None, max_in_flight: int | None = None, *,
                 chars_per_unit: int = DEFAULT_CHARS_PER_UNIT, clock: Callable[[], float] = time.monotonic):
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
        self.chars_per_unit = _check_chars_per_unit(chars_per_unit)
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._last = clock()
        self.in_flight = 0
        self.granted = 0
        self.granted_units = 0
        self.refused = 0
        self.refused_rate = 0
        self.refused_in_flight = 0

    def _refill(self, now: float) -> None:
        if self.rate_per_s is None:
            return
        elapsed = max(0.0, now - self._last)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate_per_s)
        self._last = now

    def acquire_units(self, costs: Sequence[int]) -> int:
        """Grant the longest prefix of texts costing ``costs`` units each; returns its length
        (0..len). Never blocks. The caller must ``release`` the granted count."""
        with self._lock:
            self._refill(self._clock())
            free = math.inf if self.max_in_flight is None else max(0, self.max_in_flight - self.in_flight)
            n, units, by_flight = 0, 0, False
            for cost in costs:
                if n >= free:
                    by_flight = True
                    break
                if self.rate_per_s is not None:
                    if self._tokens + 1e-9 < min(cost, self.burst):
                        break
                    self._tokens -= cost
                n += 1
                units += cost
            refused = len(costs) - n
            self.in_flight += n
            self.granted += n
            self.granted_units += units
            self.refused += refused
            if by_flight:
                self.refused_in_flight += refused
            else:
                self.refused_rate += refused
            return n

    def acquire_texts(self, texts: Sequence[str], client: str | None = None) -> int:
        """Grant a prefix of ``texts`` by their work units (``client`` is ignored: one bucket)."""
        return self.acquire_units([text_units(t, self.chars_per_unit) for t in texts])

    def acquire(self, n: int) -> int:
        """Grant up to ``n`` one-unit calls now (0..n); never blocks. The caller must ``release``."""
        return self.acquire_units([1] * n) if n > 0 else 0

    def refund_units(self, costs: Sequence[int]) -> None:
        """Undo a grant of texts costing ``costs`` (used when a second budget refused them)."""
        if not costs:
            return
        with self._lock:
            if self.rate_per_s is not None:
                self._tokens = min(self.burst, self._tokens + sum(costs))
            self.in_flight = max(0, self.in_flight - len(costs))
            self.granted -= len(costs)
            self.granted_units -= sum(costs)

    def release(self, n: int, client: str | None = None) -> None:
        """Return ``n`` granted calls (the tier finished with them)."""
        if n <= 0:
            return
        with self._lock:
            self.in_flight = max(0, self.in_flight - n)

    release_texts = release

    @property
    def tokens(self) -> float:
        """Units available now (negative while a long text's debt is paid off)."""
        with self._lock:
            self._refill(self._clock())
            return self._tokens

    def stats(self) -> dict[str, Any]:
        """Counters for /healthz and /metrics."""
        with self._lock:
            return {"rate_per_s": self.rate_per_s, "burst": None if self.rate_per_s is None else self.burst, "max_in_flight": self.max_in_flight,
                    "chars_per_unit": self.chars_per_unit, "in_flight": self.in_flight, "granted": self.granted,
                    "granted_units": self.granted_units, "refused": self.refused,
                    "refused_rate": self.refused_rate, "refused_in_flight": self.refused_in_flight}


class ClientBudgets:
    """One :class:`TokenBucketBudget` per client, plus an optional global one.

    ``rate_per_s`` / ``burst`` / ``max_in_flight``: each client's bucket (validated as for
    :class:`TokenBucketBudget`). ``global_budget``: a shared bucket every grant must also pass
    (a global cap on safeguard work, whoever asks). ``max_clients``: buckets kept; the least
    recently used is dropped beyond it, so a flood of made-up client ids costs bounded memory (a
    dropped client starts again with a full bucket: self-asserted ids are no substitute for the
    global cap and a fail-closed ``on_budget_exhausted``). Clients are keys from
    :func:`client_key`; ``None`` is ``anonymous`` (one shared bucket).
    """

    def __init__(self, rate_per_s: float | None, burst: float | None = None, max_in_flight: int | None = None, *,
                 global_budget: TokenBucketBudget | None = None, max_clients: int = DEFAULT_MAX_CLIENTS,
                 chars_per_unit: int = DEFAULT_CHARS_PER_UNIT, clock: Callable[[], float] = time.monotonic):
        if not isinstance(max_clients, int) or isinstance(max_clients, bool) or max_clients < 1:
            raise ValueError(f"max_clients must be a positive integer, got {max_clients!r}")
        self._make = lambda: TokenBucketBudget(rate_per_s, burst, max_in_flight, chars_per_unit=chars_per_unit, clock=clock)
        self._make()  # validate now, not at the first request
        self.rate_per_s, self.burst, self.max_in_flight = rate_per_s, burst, max_in_flight
        self.chars_per_unit = _check_chars_per_unit(chars_per_unit)
        self.global_budget = global_budget
        self.max_clients = max_clients
        self._clients: OrderedDict[str, TokenBucketBudget] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0
        self.granted = 0
        self.refused_client = 0
        self.refused_global = 0

    def _bucket(self, client: str | None, *, create: bool = True) -> TokenBucketBudget | None:
        key = client or ANONYMOUS
        with self._lock:
            bucket = self._clients.get(key)
            if bucket is not None:
                self._clients.move_to_end(key)
            elif create:
                bucket = self._clients[key] = self._make()
                while len(self._clients) > self.max_clients:
                    self._clients.popitem(last=False)
                    self.evicted += 1
            return bucket

    def acquire_texts(self, texts: Sequence[str], client: str | None = None) -> int:
        """Grant a prefix of ``texts``: the client's bucket first, then the global one."""
        costs = [text_units(t, self.chars_per_unit) for t in texts]
        bucket = self._bucket(client)
        assert bucket is not None
        n = bucket.acquire_units(costs)
        got = n
        if self.global_budget is not None and n:
            got = self.global_budget.acquire_units(costs[:n])
            if got < n:
                bucket.refund_units(costs[got:n])
        with self._lock:
            self.granted += got
            self.refused_client += len(costs) - n
            self.refused_global += n - got
        return got

    def acquire(self, n: int) -> int:
        """``n`` one-unit calls for the anonymous client."""
        return self.acquire_texts([""] * n) if n > 0 else 0

    def release(self, n: int, client: str | None = None) -> None:
        """Return ``n`` granted calls of ``client`` (a dropped client's release is ignored)."""
        if n <= 0:
            return
        bucket = self._bucket(client, create=False)
        if bucket is not None:
            bucket.release(n)
        if self.global_budget is not None:
            self.global_budget.release(n)

    release_texts = release

    def client_stats(self, client: str | None) -> dict[str, Any] | None:
        """One client's bucket counters (``None`` when it has no bucket)."""
        bucket = self._bucket(client, create=False)
        return None if bucket is None else bucket.stats()

    def stats(self) -> dict[str, Any]:
        """Counters for /healthz: per-client limits, buckets, evictions, refusals, global stats."""
        with self._lock:
            buckets = list(self._clients.values())
            out: dict[str, Any] = {"per_client": {"rate_per_s": self.rate_per_s, "burst": self.burst, "max_in_flight": self.max_in_flight},
                   "chars_per_unit": self.chars_per_unit, "clients": len(buckets), "max_clients": self.max_clients,
                   "evicted": self.evicted, "granted": self.granted, "refused_client": self.refused_client, "refused_global": self.refused_global}
        per = [b.stats() for b in buckets]
        out["in_flight"] = sum(s["in_flight"] for s in per)
        out["refused"] = out["refused_client"] + out["refused_global"]
        out["global"] = None if self.global_budget is None else self.global_budget.stats()
        return out


def acquire_for(budget: Any, texts: Sequence[str], client: str | None) -> int:
    """Ask any escalation budget for ``texts``: by work units and client when it can
    (``acquire_texts``), else ``acquire(len(texts))`` (a budget counting texts)."""
    fn = getattr(budget, "acquire_texts", None)
    return fn(texts, client) if callable(fn) else budget.acquire(len(texts))


def release_for(budget: Any, n: int, client: str | None) -> None:
    """Release what :func:`acquire_for` granted."""
    fn = getattr(budget, "release_texts", None)
    if callable(fn):
        fn(n, client)
    else:
        budget.release(n)
