"""Prometheus metrics for the router and the HTTP service, in the text exposition format.

Written by hand (no ``prometheus_client`` dependency). :class:`Metrics` is a router sink
(``router.sinks.append(metrics)``) counting decisions by tier and action, escalations, budget
refusals, cache hits, tier errors and latency histograms; the HTTP service adds request
counters and gauges read at scrape time (cache size and hit rate, budget, verdict log).
"""

from __future__ import annotations

import math
import threading
from typing import Callable, Iterable, Mapping, Sequence

from safecascade.router.decision import Decision

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# seconds: sub-ms heuristic decisions up to multi-second safeguard calls
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()):
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: Mapping[str, object]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"metric {self.name}: labels {sorted(labels)} != {sorted(self.labelnames)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        """The metric's exposition lines (each kind renders its own)."""
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing counter with labels."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()):
        super().__init__(name, help_text, labelnames)
        self._values: dict[LabelValues, float] = {}

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: object) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.labelnames:
            items = [((), 0.0)]
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_fmt(v)}" for k, v in items]


class Histogram(_Metric):
    """Cumulative-bucket histogram with labels (``_bucket``, ``_sum``, ``_count``)."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS):
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._values: dict[LabelValues, tuple[list[int], list[float]]] = {}  # counts per bucket (+Inf last), [sum]

    def observe(self, value: float, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total = self._values.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
                    break
            else:
                counts[-1] += 1
            total[0] += value

    def count(self, **labels: object) -> int:
        with self._lock:
            entry = self._values.get(self._key(labels))
            return sum(entry[0]) if entry else 0

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), s[0])) for k, (c, s) in self._values.items())
        lines = self.header()
        for key, (counts, total) in items:
            running = 0
            for bound, c in zip(self.buckets + (math.inf,), counts):
                running += c
                le = 'le="' + _fmt(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_fmt(total)}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {running}")
        return lines


class Gauge(_Metric):
    """A value read at scrape time from a callback: a number, or ``{label values: number}``."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, fn: Callable[[], float | Mapping[LabelValues, float] | None],
                 labelnames: Sequence[str] = ()):
        super().__init__(name, help_text, labelnames)
        self.fn = fn

    def render(self) -> list[str]:
        try:
            value = self.fn()
        except Exception:  # a broken gauge must not break the scrape
            return []
        if value is None:
            return []
        items: Iterable[tuple[LabelValues, float]] = value.items() if isinstance(value, Mapping) else [((), float(value))]
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_fmt(float(v))}" for k, v in items]


class Metrics:
    """The safecascade metric set; a router sink (``metrics(decision, text)``).

    Counters (all prefixed ``safecascade_``): ``requests_total{endpoint,status}``,
    ``decisions_total{tier,action}``, ``decision_reasons_total{reason}``,
    ``escalations_total{tier}`` (texts a tier passed on), ``budget_refusals_total``,
    ``cache_hits_total``, ``tier_errors_total{tier}``. Histograms (seconds):
    ``request_duration_seconds{endpoint}``, ``decision_latency_seconds{tier}`` (router latency
    by deciding tier), ``tier_latency_seconds{tier}`` (each tier that ran). Gauges are added
    with :meth:`add_gauge` (the server adds cache, budget and verdict-log gauges).
    """

    def __init__(self, *, prefix: str = "safecascade", buckets: Sequence[float] = LATENCY_BUCKETS):
        p = prefix
        self.requests = Counter(f"{p}_requests_total", "HTTP requests by endpoint and status code.", ("endpoint", "status"))
        self.request_duration = Histogram(f"{p}_request_duration_seconds", "HTTP request duration.", ("endpoint",), buckets)
        self.decisions = Counter(f"{p}_decisions_total", "Decisions by deciding tier and action.", ("tier", "action"))
        self.reasons = Counter(f"{p}_decision_reasons_total", "Decisions by reason (band, last_tier, budget_exhausted, ...).", ("reason",))
        self.escalations = Counter(f"{p}_escalations_total", "Texts a tier was unsure about and passed to the next tier.", ("tier",))
        self.budget_refusals = Counter(f"{p}_budget_refusals_total", "Escalations refused by the escalation budget.")
        self.cache_hits = Counter(f"{p}_cache_hits_total", "Decisions served from the verdict cache.")
        self.tier_errors = Counter(f"{p}_tier_errors_total", "Tier failures (on_error applied).", ("tier",))
        self.decision_latency = Histogram(f"{p}_decision_latency_seconds", "Router latency by deciding tier.", ("tier",), buckets)
        self.tier_latency = Histogram(f"{p}_tier_latency_seconds", "Latency of each tier that ran.", ("tier",), buckets)
        self._gauges: list[Gauge] = []
        self._prefix = prefix

    # ------------------------------------------------------------------ sink
    def __call__(self, decision: Decision, text: str | None = None) -> None:
        """Router sink: count one decision."""
        self.decisions.inc(tier=decision.tier, action=decision.action)
        self.reasons.inc(reason=decision.reason)
        self.decision_latency.observe(decision.latency_ms / 1000.0, tier=decision.tier)
        if decision.cache_hit:
            self.cache_hits.inc()
            return  # the path is the cached decision's: its tiers did not run now
        if decision.reason == "provisional":
            return  # post-moderation: its tiers are counted once, with the final decision's path
        if decision.reason == "budget_exhausted":
            self.budget_refusals.inc()
        for trace in decision.path:
            if trace.outcome == "escalate":
                self.escalations.inc(tier=trace.tier)
            elif trace.outcome == "error":
                self.tier_errors.inc(tier=trace.tier)
            if trace.outcome != "skipped" and trace.tier != "input":
                self.tier_latency.observe(trace.latency_ms / 1000.0, tier=trace.tier)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one HTTP request."""
        self.requests.inc(endpoint=endpoint, status=str(status))
        self.request_duration.observe(seconds, endpoint=endpoint)

    def add_gauge(self, name: str, help_text: str, fn: Callable[[], float | Mapping[LabelValues, float] | None],
                  labelnames: Sequence[str] = ()) -> None:
        """Register a scrape-time gauge ``<prefix>_<name>``."""
        self._gauges.append(Gauge(f"{self._prefix}_{name}", help_text, fn, labelnames))

    def render(self) -> str:
        """The exposition text for ``GET /metrics``."""
        lines: list[str] = []
        for m in (self.requests, self.request_duration, self.decisions, self.reasons, self.escalations,
                  self.budget_refusals, self.cache_hits, self.tier_errors, self.decision_latency, self.tier_latency,
                  *self._gauges):
            lines.extend(m.render())
        return "\n".join(lines) + "\n"
