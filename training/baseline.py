"""The reference baseline every report is compared with: TF-IDF n-grams + logistic regression.

Word 1-2-grams and character 3-5-grams (``char_wb``), sublinear TF, logistic regression with
balanced class weights; fitted on a benchmark's train split, predicts at threshold 0.5 and
gives probabilities for ROC-AUC and recall at 1% FPR. Fitted models are cached in process.

    .venv/bin/python -m safecascade.training.baseline --benchmark jailbreak --split test
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from safecascade.training.datasets import benchmark_splits, load_benchmark
from safecascade.training.metrics import classification_summary

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class BaselineResult:
    """The baseline's figures on one split (metrics as in :mod:`safecascade.training.metrics`)."""

    benchmark: str
    train_split: str
    split: str
    metrics: dict[str, Any]
    fit_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_pipeline(*, seed: int = 0) -> Any:
    """An unfitted sklearn pipeline (word 1-2 + char_wb 3-5 TF-IDF -> balanced logistic regression)."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # heavy, optional (sklearn)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    features = FeatureUnion([
        ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), min_df=2, max_features=200_000,
                                 sublinear_tf=True, lowercase=True)),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=2, max_features=300_000,
                                 sublinear_tf=True, lowercase=True)),
    ])
    clf = LogisticRegression(C=10.0, class_weight="balanced", max_iter=2000, solver="liblinear", random_state=seed)
    return Pipeline([("tfidf", features), ("clf", clf)])


def _train_split(benchmark: str) -> str:
    return "train" if "train" in benchmark_splits(benchmark) else ""


# For benchmarks without a train split (xstest) the baseline is trained on this benchmark's train split.
_TRAIN_FALLBACK = {"xstest": "moderation"}


@functools.lru_cache(maxsize=8)
def fitted_baseline(benchmark: str) -> tuple[Any, str, float]:
    """(fitted pipeline, "<benchmark>/<split>" it was fitted on, seconds) — cached in process."""
    train_bench = benchmark if _train_split(benchmark) else _TRAIN_FALLBACK.get(benchmark, "")
    if not train_bench:
        raise ValueError(f"benchmark {benchmark!r} has no train split and no fallback for the baseline")
    train = load_benchmark(train_bench, "train")
    t0 = time.perf_counter()
    pipe = make_pipeline()
    pipe.fit([e.text for e in train], [e.label for e in train])
    secs = time.perf_counter() - t0
    log.info("TF-IDF baseline fitted on %s/train (%d texts) in %.1f s", train_bench, len(train), secs)
    return pipe, f"{train_bench}/train", secs


def baseline_scores(benchmark: str, texts: Sequence[str]) -> list[float]:
    """Baseline probabilities of a violation for ``texts`` (model fitted on the benchmark's train split)."""
    pipe, _, _ = fitted_baseline(benchmark)
    if not texts:
        return []
    return [float(p) for p in pipe.predict_proba(list(texts))[:, 1]]


def evaluate_baseline(benchmark: str, split: str = "test", *, examples: Sequence[Any] | None = None,
                      threshold: float = 0.5) -> BaselineResult:
    """Fit (or reuse) the baseline and score it on ``examples`` (default: the whole split)."""
    exs = list(examples) if examples is not None else load_benchmark(benchmark, split)
    _, fitted_on, secs = fitted_baseline(benchmark)
    scores = baseline_scores(benchmark, [e.text for e in exs])
    labels = [e.label for e in exs]
    metrics = classification_summary(labels, [s >= threshold for s in scores], scores)
    return BaselineResult(benchmark=benchmark, train_split=fitted_on, split=split, metrics=metrics,
                          fit_seconds=round(secs, 2))


def main(argv: list[str] | None = None) -> int:
    """CLI: print the baseline's figures on a benchmark split as JSON."""
    ap = argparse.ArgumentParser(description="TF-IDF + logistic-regression reference baseline")
    ap.add_argument("--benchmark", default="jailbreak")
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(json.dumps(evaluate_baseline(args.benchmark, args.split).to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
