"""The evaluation harness: run a router over a benchmark split and report quality, escalation
and latency per tier, next to the TF-IDF reference baseline on the same texts.

Library::

    from safecascade import Router
    from safecascade.training.datasets import load_benchmark
    from safecascade.training.evaluate import evaluate_router
    report = evaluate_router(Router.load("router.yaml"), load_benchmark("jailbreak", "test"),
                             benchmark="jailbreak", split="test")
    print(report.to_markdown())

CLI (``safecascade eval``)::

    safecascade eval --benchmark jailbreak --split test [--config router.yaml] [--limit 500]
                     [--out DIR] [--no-baseline] [--batch-size 64]

Definitions used in the report:

* score of a text = the Decision's score for the benchmark's policy when the deciding tier
  scored it (``d.policies[policy].score``), else ``d.score``; prediction = ``d.flagged``.
* per tier: *reached* = texts the tier ran on; *decided* = texts whose Decision names the tier;
  *passed on* = texts the tier ran on but that went on to a later tier (escalated, or an error
  with ``on_error: next``); *escalation rate* = passed on / reached.
* latency per tier comes from ``d.path[i].latency_ms`` (the tier's batch time divided by the
  texts in the batch unless the tier reports a per-text latency); cascade latency is
  ``d.latency_ms``, which the router measures from the start of the ``classify_batch`` call, so
  with ``batch_size > 1`` it is the latency of a text's *batch*. Use ``batch_size=1`` for
  per-request latency.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from safecascade.paths import artifact_dir
from safecascade.router.cascade import Router
from safecascade.training.baseline import evaluate_baseline
from safecascade.training.datasets import benchmark_names, benchmark_policy, load_benchmark
from safecascade.training.metrics import classification_summary, latency_summary

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TierStats:
    """What one tier did over the evaluated texts."""

    tier: str
    reached: int
    reached_share: float
    decided: int
    decided_share: float
    passed_on: int
    escalation_rate: float  # passed_on / reached
    errors: int
    latency_ms: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class EvalReport:
    """An evaluation of one router on one set of labelled texts (see the module docstring)."""

    benchmark: str
    split: str
    policy: str | None
    n: int
    positives: int
    config_name: str
    config_hash: str
    policy_hashes: dict[str, str]
    tiers_order: tuple[str, ...]
    metrics: dict[str, Any]
    tiers: tuple[TierStats, ...]
    cascade_latency_ms: dict[str, Any]
    decided_by: dict[str, int]
    reasons: dict[str, int]
    fallbacks: int
    errors: int
    batch_size: int
    wall_seconds: float
    baseline: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()
    limit: int | None = None
    name: str = ""  # report title; default "<config> on <benchmark>/<split> (n=...)"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``report.json`` and ``report.md`` into ``out_dir`` (created); returns the paths."""
        return write_report(self, out_dir)

    def to_markdown(self) -> str:
        """The report as Markdown tables (quality vs baseline, per-tier cascade, confusion)."""
        m = self.metrics
        lim = f", limit {self.limit}" if self.limit else ""
        title = self.name or f"{self.config_name} on {self.benchmark}/{self.split}"
        lines = [
            f"### {title} (n={self.n}, positives={self.positives}, policy={self.policy or 'any'}{lim})",
            "",
            "| system | precision | recall | F1 | FPR | ROC-AUC | R@1%FPR | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| cascade `{self.config_name}` ({' -> '.join(self.tiers_order)}) | {_f(m['precision'])} | {_f(m['recall'])} | "
            f"{_f(m['f1'])} | {_f(m['fpr'])} | {_f(m.get('roc_auc'))} | {_f(m.get('recall_at_1pct_fpr'))} | "
            f"{_f(self.cascade_latency_ms.get('p50'), 2)} | {_f(self.cascade_latency_ms.get('p99'), 2)} |",
        ]
        if self.baseline:
            b = self.baseline["metrics"]
            lines.append(f"| TF-IDF + LR baseline (fit on {self.baseline['train_split']}) | {_f(b['precision'])} | "
                         f"{_f(b['recall'])} | {_f(b['f1'])} | {_f(b['fpr'])} | {_f(b.get('roc_auc'))} | "
                         f"{_f(b.get('recall_at_1pct_fpr'))} | | |")
        lines += [
            "",
            "| tier | reached | reached % | decided | decided % | passed on | escalation rate | errors | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for t in self.tiers:
            lines.append(f"| {t.tier} | {t.reached} | {100 * t.reached_share:.1f} | {t.decided} | {100 * t.decided_share:.1f} | "
                         f"{t.passed_on} | {_f(t.escalation_rate)} | {t.errors} | {_f(t.latency_ms.get('p50'), 3)} | "
                         f"{_f(t.latency_ms.get('p99'), 3)} |")
        c = m["confusion"]
        lines += [
            "",
            "| confusion (cascade) | predicted 1 | predicted 0 |",
            "|---|---:|---:|",
            f"| label 1 | {c['tp']} | {c['fn']} |",
            f"| label 0 | {c['fp']} | {c['tn']} |",
            "",
            f"Fallbacks: {self.fallbacks}; tier errors: {self.errors}; decided by input rules: "
            f"{self.decided_by.get('input', 0)}; batch size {self.batch_size}; wall {self.wall_seconds:.1f} s; "
            f"config {self.config_hash}.",
        ]
        for note in self.notes:
            lines.append(f"Note: {note}")
        return "\n".join(lines) + "\n"


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{float(v):.{digits}f}"


def stratified_sample(examples: Sequence[Any], limit: int, *, seed: str = "eval-limit") -> list[Any]:
    """A deterministic sample of ``limit`` examples with the same label balance (classes picked
    by a seeded hash of the text, returned in the input order)."""
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    exs = list(examples)
    if limit >= len(exs):
        return exs
    pos = [i for i, e in enumerate(exs) if int(e.label) == 1]
    neg = [i for i, e in enumerate(exs) if int(e.label) != 1]
    n_pos = round(limit * len(pos) / len(exs))
    if pos and n_pos == 0:
        n_pos = 1
    n_pos = min(n_pos, len(pos), limit)
    n_neg = min(limit - n_pos, len(neg))

    def key(i: int) -> str:
        return hashlib.sha256(f"{seed}|{exs[i].text}|{getattr(exs[i], 'id', i)}".encode("utf-8", "replace")).hexdigest()

    chosen = set(sorted(pos, key=key)[:n_pos]) | set(sorted(neg, key=key)[:n_neg])
    return [exs[i] for i in sorted(chosen)]


def evaluate_router(router: Any, examples: Sequence[Any], *, policy: str | None = None, batch_size: int = 64,
                    progress: bool = True, benchmark: str = "", split: str = "", baseline: bool = True,
                    limit: int | None = None, name: str = "") -> EvalReport:
    """Classify ``examples`` with ``router`` and return an :class:`EvalReport` (see
    :func:`evaluate_router_with_decisions`, which also returns the Decisions)."""
    return evaluate_router_with_decisions(router, examples, policy=policy, batch_size=batch_size, progress=progress,
                                          benchmark=benchmark, split=split, baseline=baseline, limit=limit,
                                          name=name)[0]


def evaluate_router_with_decisions(router: Any, examples: Sequence[Any], *, policy: str | None = None,
                                   batch_size: int = 64, progress: bool = True, benchmark: str = "",
                                   split: str = "", baseline: bool = True, limit: int | None = None,
                                   name: str = "") -> tuple[EvalReport, list[Any]]:
    """Classify ``examples`` (objects with ``.text`` and ``.label``) with ``router`` in batches
    and build an :class:`EvalReport`.

    ``policy`` selects the Decision score used for ROC-AUC / recall at 1% FPR (default: the
    benchmark's policy when ``benchmark`` is given, else the router's only policy, else
    ``d.score``). With ``benchmark`` set and ``baseline=True`` the TF-IDF baseline (fitted on
    the benchmark's train split, cached in process) is scored on the same texts.
    """
    exs = list(examples)
    if not exs:
        raise ValueError("evaluate_router: no examples to evaluate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    labels = []
    for i, e in enumerate(exs):
        try:
            y = int(e.label)
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"example {i} has no 0/1 label: {e!r:.80}") from None
        if y not in (0, 1):
            raise ValueError(f"example {i} has label {e.label!r}; expected 0 or 1")
        labels.append(y)

    router_policies = list(getattr(router, "policies", {}) or {})
    notes: list[str] = []
    if policy is None and benchmark:
        policy = benchmark_policy(benchmark)
    if policy is None and len(router_policies) == 1:
        policy = router_policies[0]
    if policy is not None and router_policies and policy not in router_policies:
        msg = (f"the router has no policy {policy!r} (it has {', '.join(router_policies)}); "
               "scores are the Decision's overall score")
        log.warning(msg)
        notes.append(msg)

    decisions = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(exs), desc=f"eval {benchmark or 'examples'}{'/' + split if split else ''}", unit="text",
               disable=not progress)
    try:
        for start in range(0, len(exs), batch_size):
            chunk = exs[start:start + batch_size]
            decisions.extend(router.classify_batch([e.text for e in chunk]))
            bar.update(len(chunk))
    finally:
        bar.close()
    wall = time.perf_counter() - t0

    scores, preds = [], []
    for d in decisions:
        v = d.policies.get(policy) if policy is not None else None
        s = v.score if v is not None and v.score is not None else d.score
        scores.append(float(s))
        preds.append(bool(d.flagged))
    metrics = classification_summary(labels, preds, scores)

    n = len(exs)
    tier_names = [tc.name for tc in router.config.tiers]
    reached = {t: 0 for t in tier_names}
    passed = {t: 0 for t in tier_names}
    errors = {t: 0 for t in tier_names}
    lat: dict[str, list[float]] = {t: [] for t in tier_names}
    decided_by: dict[str, int] = {}
    reasons: dict[str, int] = {}
    fallbacks = 0
    for d in decisions:
        decided_by[d.tier] = decided_by.get(d.tier, 0) + 1
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
        if d.reason.startswith("fallback:"):
            fallbacks += 1
        for k, trace in enumerate(d.path):
            if trace.tier not in reached:  # "input" pseudo-tier
                continue
            reached[trace.tier] += 1
            lat[trace.tier].append(float(trace.latency_ms))
            if trace.outcome == "error":
                errors[trace.tier] += 1
            if k < len(d.path) - 1:
                passed[trace.tier] += 1
    tiers = tuple(
        TierStats(tier=t, reached=reached[t], reached_share=reached[t] / n, decided=decided_by.get(t, 0),
                  decided_share=decided_by.get(t, 0) / n, passed_on=passed[t],
                  escalation_rate=passed[t] / reached[t] if reached[t] else 0.0, errors=errors[t],
                  latency_ms=latency_summary(lat[t]))
        for t in tier_names)

    base = None
    if baseline and benchmark:
        try:
            import sklearn  # noqa: F401  (heavy, optional: is the `train` extra installed?)
        except ImportError:
            notes.append("TF-IDF baseline skipped: scikit-learn is not installed (pip install 'safecascade[train]')")
        else:
            base = evaluate_baseline(benchmark, split or "test", examples=exs).to_dict()

    return EvalReport(
        benchmark=benchmark or "examples", split=split, policy=policy, n=n, positives=sum(labels),
        config_name=router.config.name, config_hash=router.config_hash, policy_hashes=dict(router.policy_hashes),
        tiers_order=tuple(tier_names), metrics=metrics, tiers=tiers,
        cascade_latency_ms=latency_summary([d.latency_ms for d in decisions]),
        decided_by=dict(sorted(decided_by.items())), reasons=dict(sorted(reasons.items())), fallbacks=fallbacks,
        errors=sum(errors.values()), batch_size=batch_size, wall_seconds=round(wall, 3), baseline=base,
        notes=tuple(notes), limit=limit, name=name,
    ), decisions


# ---------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``safecascade eval``."""
    parser.add_argument("--benchmark", default="jailbreak", choices=benchmark_names(), help="benchmark (default: jailbreak)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test", "all"], help="split (default: test)")
    parser.add_argument("--config", default=None, help="router YAML or models:/name@alias (default: embedded)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate a seeded stratified sample of N texts")
    parser.add_argument("--out", default=None, help="folder for report.json, report.md and predictions.csv "
                        "(default: <cache>/eval/<config>/<benchmark>-<split>)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the TF-IDF baseline row")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per classify_batch call (default 64)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``safecascade eval``: print the Markdown report and write it (and JSON) to --out."""
    examples = load_benchmark(args.benchmark, args.split)
    if args.limit is not None:
        examples = stratified_sample(examples, args.limit)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    router = Router.load(args.config)
    try:
        report, decisions = evaluate_router_with_decisions(
            router, examples, batch_size=args.batch_size, progress=not args.no_progress, benchmark=args.benchmark,
            split=args.split, baseline=not args.no_baseline, limit=args.limit)
    finally:
        router.close()
    safe_name = re.sub(r"[^\w.-]+", "_", router.config.name) or "router"
    out = Path(args.out) if args.out else artifact_dir("eval", safe_name, f"{args.benchmark}-{args.split}")
    paths = write_report(report, out, examples=examples, decisions=decisions)
    print(report.to_markdown())
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def write_report(report: EvalReport, out_dir: str | Path, *, examples: Sequence[Any] | None = None,
                 decisions: Sequence[Any] | None = None) -> list[Path]:
    """Write ``report.json`` and ``report.md`` (and ``predictions.csv`` with one row per text:
    id, label, score, flagged, deciding tier, reason, text hash; no text) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "report.md"]
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.md").write_text(report.to_markdown(), encoding="utf-8")
    if examples is not None and decisions is not None:
        if len(examples) != len(decisions):
            raise ValueError(f"{len(examples)} examples but {len(decisions)} decisions")
        path = out / "predictions.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "source", "label", "score", "flagged", "tier", "reason", "text_hash"])
            for i, (e, d) in enumerate(zip(examples, decisions)):
                v = d.policies.get(report.policy) if report.policy else None
                s = v.score if v is not None and v.score is not None else d.score
                w.writerow([getattr(e, "id", i), getattr(e, "source", ""), int(e.label), f"{float(s):.6f}",
                            int(d.flagged), d.tier, d.reason, d.text_hash])
        written.append(path)
    return written
