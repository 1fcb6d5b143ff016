"""Real verdict logs for the retrain / export-sft tests: a real Router (heuristic [-> fast] ->
replay "safeguard") classifies benchmark texts and a real VerdictLog records the decisions.

The replay tier plays the safeguard: its recorded probabilities are derived from the gold
labels (0.86-0.97 for jailbreaks, 0.03-0.14 otherwise, a hash-seeded jitter), i.e. a good teacher.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any, Sequence

import yaml

from safecascade.router.cascade import Router
from safecascade.hashing import text_hash
from safecascade.router.verdict_log import VerdictLog


def teacher_probability(text: str, label: int) -> float:
    j = int(hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return round((0.86 + 0.11 * j) if label else (0.03 + 0.11 * j), 4)


def pick_texts(n_pos: int, n_neg: int, *, split: str = "val", max_chars: int = 1500) -> list[Any]:
    """Short-ish benchmark examples (cheap to embed), positives first then negatives, each
    group in the benchmark's fixed order."""
    from safecascade.training.datasets import load_benchmark

    ex = [e for e in load_benchmark("jailbreak", split) if len(e.text) <= max_chars]
    pos = [e for e in ex if e.label == 1][:n_pos]
    neg = [e for e in ex if e.label == 0][:n_neg]
    return pos + neg


def write_router(dir_: Path, examples: Sequence[Any], fast_model: Path | None = None) -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    with (dir_ / "teacher.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text_hash", "jailbreak", "jailbreak_rule_ids"])
        for e in examples:
            p = teacher_probability(e.text, e.label)
            w.writerow([text_hash(e.text), p, "JB1.a" if p >= 0.5 else ""])
    cfg = {
        "name": "retrain-test",
        "policies": {"jailbreak": "builtin:jailbreak"},
        "tiers": [
            {"name": "heuristic", "type": "heuristic", "bands": {"default": [None, 0.98]}},
            *([{"name": "fast", "type": "fast", "options": {"model": str(fast_model)}, "bands": {"default": [0.02, 0.98]}}]
              if fast_model is not None else []),
            {"name": "safeguard", "type": "replay", "options": {"path": "teacher.csv", "missing": "error"},
             "threshold": 0.5, "on_error": "fast-verdict"},
        ],
    }
    path = dir_ / "router.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def build_log(db: Path, examples: Sequence[Any], fast_model: Path | None = None, *, no_text_first: int = 0) -> dict[str, int]:
    """Classify ``examples`` in order, logging every decision into ``db``. The first
    ``no_text_first`` texts are logged with ``store_text`` off (as a production log would be),
    the rest with it on. Returns ``{"decisions", "by_safeguard"}``."""
    router = Router.load(write_router(db.parent / "router", examples, fast_model))
    texts = [e.text for e in examples]
    decisions = []
    try:
        for store_text, chunk in ((False, texts[:no_text_first]), (True, texts[no_text_first:])):
            if not chunk:
                continue
            vlog = VerdictLog(db, store_text=store_text, sync="none")
            router.sinks[:] = [vlog]
            try:
                for i in range(0, len(chunk), 16):
                    decisions += router.classify_batch(chunk[i : i + 16])
            finally:
                vlog.close()
    finally:
        router.close()
    return {"decisions": len(decisions), "by_safeguard": sum(d.tier == "safeguard" for d in decisions),
            "by_safeguard_with_text": sum(d.tier == "safeguard" for d in decisions[no_text_first:])}
