"""Same decisions before and after a change: run a router over a benchmark split and save or compare.

    python -m experiments.decision_parity --save before.jsonl      # on the old tree
    python -m experiments.decision_parity --check before.jsonl     # on the new tree: exit 1 on any difference

Each line holds the text's hash, the action, the deciding tier, the reason and the score rounded to
6 decimals. A restructuring must leave every line identical; a model change shows up as the count
of flipped actions and moved scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safecascade.router.cascade import Router
from safecascade.training.datasets import load_benchmark


def decisions(config: str | None, benchmark: str, split: str) -> list[dict[str, object]]:
    """The router's decisions on every text of ``benchmark``/``split``, one dict per text."""
    router = Router.load(config)
    texts = [e.text for e in load_benchmark(benchmark, split)]
    out = []
    for d in router.classify_batch(texts):
        out.append({"text_hash": d.text_hash, "action": d.action, "tier": d.tier, "reason": d.reason,
                    "score": round(float(d.score), 6)})
    return out


def compare(before: list[dict[str, object]], after: list[dict[str, object]]) -> dict[str, int]:
    """Counts of texts whose action, deciding tier or score differ (same order and texts required)."""
    if [b["text_hash"] for b in before] != [a["text_hash"] for a in after]:
        raise ValueError("the two runs scored different texts (or a different order)")
    return {
        "n": len(before),
        "action_flips": sum(b["action"] != a["action"] for b, a in zip(before, after)),
        "tier_changes": sum(b["tier"] != a["tier"] for b, a in zip(before, after)),
        "score_changes": sum(abs(float(b["score"]) - float(a["score"])) > 1e-6 for b, a in zip(before, after)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="router config (default: the embedded default)")
    ap.add_argument("--benchmark", default="jailbreak")
    ap.add_argument("--split", default="test")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--save", type=Path)
    g.add_argument("--check", type=Path)
    args = ap.parse_args(argv)
    rows = decisions(args.config, args.benchmark, args.split)
    if args.save:
        args.save.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
        print(f"saved {len(rows)} decisions to {args.save}")
        return 0
    before = [json.loads(line) for line in args.check.read_text(encoding="utf-8").splitlines() if line]
    diff = compare(before, rows)
    print(json.dumps(diff))
    return 0 if diff["action_flips"] == diff["tier_changes"] == diff["score_changes"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
