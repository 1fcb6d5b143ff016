"""Build a realistic verdict log for the retrain loop (``safecascade retrain --from-log``).

The embedded default router (heuristic -> static -> fast) with its last tier, the safeguard,
replaced by a ``replay`` tier named ``safeguard`` classifies a stratified sample of a
benchmark split as "traffic" (in a seeded random order), and every decision is written to a
real verdict log with ``store_text`` on - what ``safecascade serve --log DB --store-text``
writes. Only texts the cheap tiers are unsure about reach the "safeguard", as in production.

The replay teacher stands in for gpt-oss-safeguard (whose weights are not available here):
its probability is derived from the gold label (0.86-0.97 for label 1, 0.03-0.14 for label 0,
hash-seeded jitter) and a ``--teacher-noise`` share of texts gets the wrong verdict, so the
teacher is good but not perfect. Say so when you quote numbers measured on such a log.

    python -m experiments.retrain_log_sim --out /tmp/retrain/verdicts.db --n 1000 --split val
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
import time
from collections import Counter
from importlib import resources
from pathlib import Path

import yaml


def _u(text: str, salt: str) -> float:
    return int(hashlib.sha256(f"{salt}|{text}".encode("utf-8", "replace")).hexdigest()[:8], 16) / 0xFFFFFFFF


def teacher_probability(text: str, label: int, *, noise: float) -> float:
    """Gold-derived probability; a ``noise`` share of texts (hash-chosen) is flipped."""
    if _u(text, "flip") < noise:
        label = 1 - label
    j = _u(text, "jitter")
    return round((0.86 + 0.11 * j) if label else (0.03 + 0.11 * j), 4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="verdict log SQLite file to create (must not exist)")
    ap.add_argument("--benchmark", default="jailbreak")
    ap.add_argument("--split", default="val", help="benchmark split used as traffic (not test: retrain keeps it unseen)")
    ap.add_argument("--n", type=int, default=1000, help="texts (stratified sample)")
    ap.add_argument("--teacher-noise", type=float, default=0.05, help="share of wrong teacher verdicts")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args(argv)

    from tqdm.auto import tqdm

    from safecascade.router.cascade import Router
    from safecascade.hashing import text_hash
    from safecascade.router.verdict_log import VerdictLog
    from safecascade.training.datasets import benchmark_policy, load_benchmark
    from safecascade.training.evaluate import stratified_sample
    from safecascade.training.default_models import ensure_default_models

    db = Path(args.out)
    if db.exists():
        print(f"{db} exists; choose a new path", file=sys.stderr)
        return 2
    ensure_default_models()
    policy = benchmark_policy(args.benchmark)
    examples = stratified_sample(load_benchmark(args.benchmark, args.split), args.n, seed="retrain-log-sim")
    examples.sort(key=lambda e: _u(e.text, "order"))  # arrival order of the simulated traffic
    work = db.parent / (db.stem + "-router")
    work.mkdir(parents=True, exist_ok=True)
    with (work / "teacher.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text_hash", policy])
        for e in examples:
            w.writerow([text_hash(e.text), teacher_probability(e.text, e.label, noise=args.teacher_noise)])
    cfg = yaml.safe_load(resources.files("safecascade.models").joinpath("with-safeguard.yaml").read_text(encoding="utf-8"))
    cfg["name"] = "default-replay-teacher"
    cfg["tiers"][-1] = {"name": "safeguard", "type": "replay", "options": {"path": "teacher.csv", "missing": "error"},
                        "threshold": 0.5, "on_error": "fast-verdict"}
    (work / "router.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")

    router = Router.load(work / "router.yaml")
    vlog = VerdictLog(db, store_text=True)
    router.sinks.append(vlog)
    t0 = time.perf_counter()
    tiers: Counter[str] = Counter()
    try:
        for i in tqdm(range(0, len(examples), args.batch), desc="classifying", unit="batch"):
            for d in router.classify_batch([e.text for e in examples[i : i + args.batch]]):
                tiers[d.tier] += 1
    finally:
        vlog.close()
        router.close()
    pos = sum(e.label for e in examples)
    print(f"{len(examples)} texts ({pos} positive) from {args.benchmark}/{args.split} -> {db} in {time.perf_counter() - t0:.0f}s")
    print("decided by: " + ", ".join(f"{k}={v}" for k, v in tiers.most_common()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
