"""The final tier's assumed confusion matrix, and the cost / latency model of a cascade.

**Safeguard assumption.** Where the final tier has no recorded verdict for a text, its verdict is
not known, and using the gold label would pretend the safeguard is perfect. Instead the tuner
assumes the final tier behaves as an independent measurement says it does: by default
gpt-oss-safeguard-20b on JailbreakHub, precision ``P = 0.634``, recall ``R = 0.684``.

Derivation of the rates used: precision depends on prevalence, recall does not, so they are
turned into the prevalence-free rates ``TPR`` and ``FPR``. With prevalence ``pi`` (share of
positives; default the tuning data's, which is JailbreakHub's 9.3% on the jailbreak benchmark)::

    TPR = R
    P   = TPR * pi / (TPR * pi + FPR * (1 - pi))
    =>  FPR = TPR * pi * (1 - P) / (P * (1 - pi))

(with the defaults: ``FPR = 0.684 * 0.093 * 0.366 / (0.634 * 0.907) = 0.0405``). For the
escalated texts without a recorded verdict, with ``E+`` positives and ``E-`` negatives among
them, the *expected* confusion counts are ``TP = TPR * E+``, ``FN = (1 - TPR) * E+``,
``FP = FPR * E-``, ``TN = (1 - FPR) * E-``. The labels enter only through these counts - the
expected value of the verdicts of a classifier with that confusion matrix - never as
predictions. Caveat: escalated texts are the hard ones, so the real rates on them are likely
worse than on the whole benchmark; record safeguard verdicts (``--replay``) to replace the
assumption with measurements.

**Cost.** Each tier's cost per call is its measured latency per text (seconds) from the scoring
pass (the final tier: the replay file's ``latency_ms`` where recorded, else ``safeguard_ms``),
times ``price_per_second`` (default 1, so costs are compute-seconds), plus for the final tier
``safeguard_tokens / 1000 * price_per_1k_tokens``. Expected cost per 1,000 texts is
``1000 / n * sum over texts of sum over the tiers a text reaches of its cost there``, which is
``sum_tier reach_rate * mean cost per call of the texts reaching it * 1000``. Latency per text is
the sum of its latency at every tier it reaches; p50 / p99 are over the texts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# A published independent measurement of gpt-oss-safeguard-20b on JailbreakHub.
SAFEGUARD_PRECISION = 0.634
SAFEGUARD_RECALL = 0.684
SAFEGUARD_SOURCE = "gpt-oss-safeguard-20b on JailbreakHub (published independent measurement)"


@dataclass(frozen=True, kw_only=True)
class SafeguardAssumption:
    """An assumed confusion matrix for the final tier (see the module docstring)."""

    precision: float = SAFEGUARD_PRECISION
    recall: float = SAFEGUARD_RECALL
    prevalence: float = 0.093
    source: str = SAFEGUARD_SOURCE

    def __post_init__(self) -> None:
        if not (0.0 < self.precision <= 1.0):
            raise ValueError(f"assumed precision must be in (0, 1], got {self.precision!r}")
        if not (0.0 <= self.recall <= 1.0):
            raise ValueError(f"assumed recall must be in [0, 1], got {self.recall!r}")
        if not (0.0 < self.prevalence < 1.0):
            raise ValueError(f"prevalence must be in (0, 1), got {self.prevalence!r}")
        if self.fpr > 1.0:
            raise ValueError(f"precision {self.precision} and recall {self.recall} are impossible at prevalence "
                             f"{self.prevalence} (they imply a false-positive rate of {self.fpr:.3f} > 1)")

    @property
    def tpr(self) -> float:
        """True-positive rate: the recall."""
        return float(self.recall)

    @property
    def fpr(self) -> float:
        """False-positive rate implied by precision and recall at the prevalence."""
        pi = self.prevalence
        return self.recall * pi * (1.0 - self.precision) / (self.precision * (1.0 - pi))

    def expected_counts(self, positives: float, negatives: float) -> dict[str, float]:
        """Expected TP / FP / FN / TN of the final tier on ``positives`` + ``negatives`` texts."""
        return {"tp": self.tpr * positives, "fn": (1.0 - self.tpr) * positives,
                "fp": self.fpr * negatives, "tn": (1.0 - self.fpr) * negatives}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"tpr": self.tpr, "fpr": self.fpr}


@dataclass(frozen=True, kw_only=True)
class CostModel:
    """Per-call cost from measured latency (see the module docstring)."""

    safeguard_ms: float = 2500.0
    price_per_second: float | None = None
    price_per_1k_tokens: float | None = None
    safeguard_tokens: float = 700.0

    def __post_init__(self) -> None:
        for key in ("safeguard_ms", "safeguard_tokens"):
            v = getattr(self, key)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{key} must be a finite number >= 0, got {v!r}")
        for key in ("price_per_second", "price_per_1k_tokens"):
            v = getattr(self, key)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{key} must be a finite number >= 0, got {v!r}")

    @property
    def unit(self) -> str:
        """``compute-seconds`` without prices, else ``price`` (the currency of the given prices)."""
        return "compute-seconds" if self.price_per_second is None and self.price_per_1k_tokens is None else "price"

    def _per_second(self) -> float:
        if self.price_per_second is not None:
            return float(self.price_per_second)
        return 1.0 if self.price_per_1k_tokens is None else 0.0

    def latency_matrix(self, tier_latency_ms: list[np.ndarray], final_latency_ms: np.ndarray) -> np.ndarray:
        """``(tiers + 1, n)`` per-text latency in ms; unmeasured entries get the tier's mean
        (the final tier's: ``safeguard_ms``)."""
        rows = []
        for lat in tier_latency_ms:
            fill = float(np.nanmean(lat)) if np.isfinite(lat).any() else 0.0
            rows.append(np.where(np.isfinite(lat), lat, fill))
        rows.append(np.where(np.isfinite(final_latency_ms), final_latency_ms, float(self.safeguard_ms)))
        return np.vstack(rows).astype(np.float64)

    def cost_matrix(self, latency_ms: np.ndarray) -> np.ndarray:
        """``(tiers + 1, n)`` per-text cost per call from the latency matrix."""
        cost = latency_ms / 1000.0 * self._per_second()
        if self.price_per_1k_tokens is not None:
            cost = cost.copy()
            cost[-1] += self.safeguard_tokens / 1000.0 * float(self.price_per_1k_tokens)
        return cost

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"unit": self.unit}
