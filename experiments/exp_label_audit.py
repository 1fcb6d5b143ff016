"""Experiment: how many of the jailbreak benchmark's test positives are jailbreaks, and what the
fast tier does with each kind (an unbiased label audit).

The benchmark labels every JailbreakHub prompt as a jailbreak, because it was collected in a
jailbreak community. A **seeded random sample** of the test positives (``random.Random(2026)``
shuffle of the test split's label-1 examples, first 120; not conditioned on any model's errors)
was read against the jailbreak policy (``models/policies/jailbreak.md``: override / bypass of the
assistant's rules, prompt injection, obfuscated or directly harmful requests) and given one
verdict each: ``real`` (a violation), ``not`` (benign text that sits in the jailbreak set:
writing tasks, benign personas, character cards without rule-breaking, placeholders) or
``ambiguous``. The verdicts are in ``experiments/data/jailbreak_test_audit.csv`` (id, verdict,
reason); they were written during development by an AI assistant reading each text (long texts
cut in the middle), not by a human panel or by gpt-oss-safeguard, so treat them as one careful
reading. The program checks that the file holds exactly the seeded sample, scores the sampled
texts with the fast tier (calibrated probability >= 0.5, as ``experiments/configs/fast_only.yaml``)
and reports recall per verdict with Wilson 95% intervals.

    python -m experiments.exp_label_audit [--model default|DIR] [--quantized auto|false|true]
"""

from __future__ import annotations

import argparse
import csv
import logging
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from experiments.common import ROOT, ResultWriter

log = logging.getLogger("experiments.label_audit")

AUDIT = ROOT / "experiments" / "data" / "jailbreak_test_audit.csv"
SEED, N = 2026, 120
VERDICTS = ("real", "ambiguous", "not")


def sample_ids(positives: Sequence[Any], *, seed: int = SEED, n: int = N) -> list[str]:
    """Ids of the seeded random sample of test positives the audit covers (in audit order)."""
    pos = list(positives)
    random.Random(seed).shuffle(pos)
    return [e.id for e in pos[:n]]


def read_audit(path: Path = AUDIT) -> dict[str, str]:
    """``id -> verdict`` from the audit CSV; unknown verdicts are an error."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    bad = sorted({r["verdict"] for r in rows} - set(VERDICTS))
    if bad:
        raise ValueError(f"{path}: unknown verdicts {bad}; expected {VERDICTS}")
    return {r["id"]: r["verdict"] for r in rows}


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n (scipy's ``binomtest``); (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def recall_by_verdict(verdicts: Mapping[str, str], flagged: Mapping[str, bool]) -> list[dict[str, Any]]:
    """One row per verdict: audited texts, share of the sample, flagged, recall and its interval."""
    n_all = len(verdicts)
    rows = []
    for v in VERDICTS:
        ids = [i for i, x in verdicts.items() if x == v]
        k = sum(bool(flagged[i]) for i in ids)
        lo, hi = wilson(k, len(ids))
        slo, shi = wilson(len(ids), n_all)
        rows.append({"verdict": v, "texts": len(ids), "share of positives": len(ids) / n_all if n_all else 0.0,
                     "share 95% CI": f"{slo:.2f}-{shi:.2f}", "flagged": k, "recall": k / len(ids) if ids else float("nan"),
                     "recall 95% CI": f"{lo:.3f}-{hi:.3f}"})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="fast tier artifact dir (default: the cache's fast-default)")
    ap.add_argument("--quantized", default="auto", choices=["false", "true", "auto"],
                    help="auto (default, as the default router serves it): the int8 graph when the model offers one")
    ap.add_argument("--quick", action="store_true", help="accepted for run_all; the audit is small either way")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from safecascade.tiers.fast import FastTier
    from safecascade.training.datasets import load_benchmark
    from safecascade.training.fast_train import ensure_default_models

    test = load_benchmark("jailbreak", "test")
    positives = [e for e in test if e.label == 1]
    verdicts = read_audit()
    expected = sample_ids(positives)
    if list(verdicts) != expected:
        raise SystemExit(f"{AUDIT} does not hold the seeded sample (seed {SEED}, first {N} test positives)")
    model = ensure_default_models(kinds=("fast",))["fast"] if args.model == "default" else Path(args.model)
    q = {"false": False, "true": True, "auto": "auto"}[args.quantized]
    tier = FastTier(model_dir=model, quantized=q)
    by_id = {e.id: e.text for e in positives}
    res = tier.classify([by_id[i] for i in expected])
    flagged = {i: r.scores.get("jailbreak", 0.0) >= 0.5 for i, r in zip(expected, res)}
    rows = recall_by_verdict(verdicts, flagged)
    n_pos = len(positives)
    with ResultWriter("label_audit", title="Label audit of the jailbreak test positives",
                      params={"seed": SEED, "n": N, "model": str(model), "int8": tier.quantized}) as rw:
        rw.text("A seeded random sample of the test positives (not conditioned on any model's errors) was read against "
                "the jailbreak policy and given one verdict each; see the program's docstring for the method and "
                f"`{AUDIT.relative_to(ROOT)}` for every verdict with its reason. The verdicts are one careful reading by an "
                "AI assistant during development, not a human panel or gpt-oss-safeguard.")
        rw.table(rows, caption=f"Fast tier at probability 0.5 on the audited sample ({N} of {n_pos} test positives)")
        counts = Counter(verdicts.values())
        missed = {v: r["texts"] - r["flagged"] for v, r in zip(VERDICTS, rows)}
        rw.text(f"Of the {sum(missed.values())} sampled positives the fast tier misses, {missed['not']} are texts read as "
                f"not violating the policy, {missed['ambiguous']} ambiguous and {missed['real']} real (a jailbreak by the policy). "
                f"Scaled to the {n_pos} test positives, about {round(counts['not'] / N * n_pos)} are not jailbreaks by the "
                f"policy: the benchmark's F1 ceiling for a policy-following classifier is well under 1, and the way to a "
                f"higher benchmark F1 is to flag more benign texts written in the jailbreak communities' style "
                f"(the tier already flags {rows[2]['flagged']} of the {rows[2]['texts']} sampled ones).")
        rw.metrics({f"recall_{r['verdict']}": r["recall"] for r in rows} | {f"share_{r['verdict']}": r["share of positives"] for r in rows})
    print(rw.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
