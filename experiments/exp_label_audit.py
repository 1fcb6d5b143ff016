"""Experiment: how many of the jailbreak benchmark's test positives are jailbreaks by the policy,
what the fast tier does with each kind, and what its figures are when the positives carry the
policy's labels instead of the collection's.

The benchmark labels every JailbreakHub prompt as a jailbreak, because it was collected in a
jailbreak community. **All 490 test positives** were read against the jailbreak policy
(``models/policies/jailbreak.md``: override / bypass of the assistant's rules, prompt injection,
obfuscated or directly harmful requests) and given one verdict each: ``real`` (a violation),
``not`` (benign text that sits in the jailbreak set: writing tasks, benign personas, character
cards without rule-breaking, placeholders) or ``ambiguous``. The verdicts are in
``experiments/data/jailbreak_test_audit.csv`` (id, verdict, reason, reading), in two readings:

* ``sample``: a **seeded random sample** of 120 (``random.Random(2026)`` shuffle of the test
  positives, first 120; not conditioned on any model's errors), read first;
* ``rest``: the other 370, read later by eight independent readers (one chunk each, in a shuffled
  order, blind to every model's scores and to the first reading), who also re-read 32 texts of the
  sample, mixed into their chunks unmarked. Those second verdicts are in
  ``experiments/data/jailbreak_test_audit_second.csv`` and give the agreement between readings.

Every reading was done by an AI assistant during development (long texts cut in the middle), not
by a human panel or by gpt-oss-safeguard, so treat the verdicts as careful readings, and the
agreement figure as their repeatability. Negatives keep their labels: ToxicChat's are human
annotated (its ``jailbreaking`` rows are kept out), awesome-chatgpt-prompts' were reviewed when
the file was built, Alpaca's are everyday instructions.

The program checks that the file covers exactly the test positives (the sample first, in order),
scores the whole test split with the fast tier (calibrated probability >= 0.5, as
``experiments/configs/fast_only.yaml``) and the TF-IDF reference, and reports recall per verdict
with Wilson 95% intervals, the figures under the benchmark's and the policy's labels, and the
benchmark F1 of a classifier that follows the policy exactly.

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
SECOND = ROOT / "experiments" / "data" / "jailbreak_test_audit_second.csv"
SEED, N = 2026, 120
VERDICTS = ("real", "ambiguous", "not")
READINGS = ("sample", "rest")
# How the policy's labels treat each verdict, per view: 1 = violation, 0 = allowed, None = left out.
VIEWS: dict[str, dict[str, int | None]] = {
    "benchmark (as collected)": {"real": 1, "ambiguous": 1, "not": 1},
    "policy, ambiguous left out": {"real": 1, "ambiguous": None, "not": 0},
    "policy, ambiguous = violation": {"real": 1, "ambiguous": 1, "not": 0},
}


def sample_ids(positives: Sequence[Any], *, seed: int = SEED, n: int = N) -> list[str]:
    """Ids of the seeded random sample of test positives the first reading covers (in audit order)."""
    pos = list(positives)
    random.Random(seed).shuffle(pos)
    return [e.id for e in pos[:n]]


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    bad = sorted({r["verdict"] for r in rows} - set(VERDICTS))
    if bad:
        raise ValueError(f"{path}: unknown verdicts {bad}; expected {VERDICTS}")
    ids = [r["id"] for r in rows]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"{path}: ids read twice: {dup[:5]}")
    return rows


def read_audit(path: Path = AUDIT) -> dict[str, str]:
    """``id -> verdict`` from an audit CSV (file order); unknown verdicts or repeated ids are an error."""
    return {r["id"]: r["verdict"] for r in _read_rows(path)}


def read_readings(path: Path = AUDIT) -> dict[str, str]:
    """``id -> reading`` (``sample`` or ``rest``) from the audit CSV."""
    rows = _read_rows(path)
    bad = sorted({r.get("reading") or "" for r in rows} - set(READINGS))
    if bad:
        raise ValueError(f"{path}: unknown readings {bad}; expected {READINGS}")
    return {r["id"]: r["reading"] for r in rows}


def check_coverage(verdicts: Mapping[str, str], readings: Mapping[str, str], positives: Sequence[Any]) -> None:
    """Raise ``ValueError`` unless the audit covers exactly ``positives``, with the seeded sample
    first (in its order) as reading ``sample`` and every other positive as reading ``rest``."""
    expected = sample_ids(positives)
    ids = list(verdicts)
    if ids[: len(expected)] != expected or any(readings[i] != "sample" for i in expected):
        raise ValueError(f"the audit does not start with the seeded sample (seed {SEED}, first {N} test positives)")
    rest = set(ids[len(expected):])
    want = {e.id for e in positives} - set(expected)
    if rest != want or any(readings[i] != "rest" for i in rest):
        missing, extra = sorted(want - rest), sorted(rest - want)
        raise ValueError(f"the audit's other rows are not the other test positives: {len(missing)} missing "
                         f"{missing[:3]}, {len(extra)} extra {extra[:3]}")


def agreement(first: Mapping[str, str], second: Mapping[str, str]) -> dict[str, Any]:
    """Agreement of two readings on the ids both have: count, share agreeing and Cohen's kappa
    (scikit-learn), over the three verdicts and over violation / not (``ambiguous`` counted as a
    violation)."""
    from sklearn.metrics import cohen_kappa_score

    ids = [i for i in second if i in first]
    if not ids:
        raise ValueError("the two readings share no ids")
    a, b = [first[i] for i in ids], [second[i] for i in ids]
    a2, b2 = [v != "not" for v in a], [v != "not" for v in b]
    kappa = float(cohen_kappa_score(a, b, labels=list(VERDICTS))) if len(set(a) | set(b)) > 1 else 1.0
    kappa2 = float(cohen_kappa_score(a2, b2)) if len(set(a2) | set(b2)) > 1 else 1.0
    return {"n": len(ids), "agree": sum(x == y for x, y in zip(a, b)) / len(ids), "kappa": kappa,
            "agree_binary": sum(x == y for x, y in zip(a2, b2)) / len(ids), "kappa_binary": kappa2,
            "pairs": Counter(zip(a, b))}


def relabel(examples: Sequence[Any], verdicts: Mapping[str, str], view: Mapping[str, int | None]) -> list[tuple[int, int]]:
    """``(index, label)`` of the examples a view keeps: positives take the view's label for their
    verdict (left out when it is None), negatives keep theirs. A positive with no verdict is an error."""
    out = []
    for i, e in enumerate(examples):
        if e.label != 1:
            out.append((i, int(e.label)))
            continue
        if e.id not in verdicts:
            raise ValueError(f"positive {e.id} has no verdict")
        lab = view[verdicts[e.id]]
        if lab is not None:
            out.append((i, int(lab)))
    return out


def view_metrics(examples: Sequence[Any], verdicts: Mapping[str, str], view: Mapping[str, int | None],
                 scores: Sequence[float], *, threshold: float = 0.5) -> dict[str, Any]:
    """Precision, recall, F1, FPR and recall at 1% FPR of ``scores`` under a view's labels."""
    from safecascade.training.metrics import classification_summary

    kept = relabel(examples, verdicts, view)
    labels = [lab for _, lab in kept]
    s = [float(scores[i]) for i, _ in kept]
    m = classification_summary(labels, [x >= threshold for x in s], s)
    return {"texts": len(kept), "violations": sum(labels), "precision": m["precision"], "recall": m["recall"],
            "F1": m["f1"], "FPR": m["fpr"], "R@1%FPR": m["recall_at_1pct_fpr"]}


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


def _metric_name(*parts: str) -> str:
    """An MLflow-safe metric name: ``fast_tier.policy_ambiguous_left_out.F1``."""
    import re

    return ".".join(re.sub(r"[^A-Za-z0-9]+", "_", p).strip("_") for p in parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="fast tier artifact dir (default: the cache's fast-default)")
    ap.add_argument("--quantized", default="auto", choices=["false", "true", "auto"],
                    help="auto (default, as the default router serves it): the int8 graph when the model offers one")
    ap.add_argument("--no-baseline", action="store_true", help="skip the TF-IDF reference (about a minute)")
    ap.add_argument("--quick", action="store_true", help="accepted for run_all; the audit is the same either way")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from safecascade.tiers.fast import FastTier
    from safecascade.training.datasets import load_benchmark
    from safecascade.training.fast_train import ensure_default_models

    test = load_benchmark("jailbreak", "test")
    positives = [e for e in test if e.label == 1]
    verdicts, readings = read_audit(), read_readings()
    try:
        check_coverage(verdicts, readings, positives)
    except ValueError as exc:
        raise SystemExit(f"{AUDIT}: {exc}") from exc
    sample = {i: v for i, v in verdicts.items() if readings[i] == "sample"}
    model = ensure_default_models(kinds=("fast",))["fast"] if args.model == "default" else Path(args.model)
    q = {"false": False, "true": True, "auto": "auto"}[args.quantized]
    tier = FastTier(model_dir=model, quantized=q)
    texts = [e.text for e in test]
    fast = [r.scores.get("jailbreak", 0.0) for r in tier.classify(texts)]
    scorers: dict[str, list[float]] = {"fast tier": fast}
    if not args.no_baseline:
        from safecascade.training.baseline import baseline_scores

        scorers["TF-IDF reference"] = baseline_scores("jailbreak", texts)
    for name, allowed in (("policy oracle (flags real + ambiguous)", ("real", "ambiguous")), ("policy oracle (flags real)", ("real",))):
        scorers[name] = [float(e.label == 1 and verdicts[e.id] in allowed) for e in test]
    flagged = {e.id: s >= 0.5 for e, s in zip(test, fast)}
    n_pos = len(positives)
    with ResultWriter("label_audit", title="Label audit of the jailbreak test positives",
                      params={"seed": SEED, "n_sample": N, "n_audited": len(verdicts), "model": str(model),
                              "int8": tier.quantized}) as rw:
        rw.text(f"All {n_pos} test positives were read against the jailbreak policy and given one verdict each; see the "
                f"program's docstring for the method and `{AUDIT.relative_to(ROOT)}` for every verdict with its reason. "
                "The verdicts are careful readings by an AI assistant during development, not a human panel or "
                "gpt-oss-safeguard. Negatives keep their labels.")
        rows = recall_by_verdict(sample, flagged)
        rw.table(rows, name="sample", caption=f"Fast tier at probability 0.5 on the seeded random sample ({N} of {n_pos} test positives, first reading)")
        all_rows = recall_by_verdict(verdicts, flagged)
        rw.table(all_rows, name="all", caption=f"Fast tier at probability 0.5 on all {n_pos} test positives")
        by = {r["verdict"]: r for r in all_rows}
        view_rows = []
        for view, mapping in VIEWS.items():
            for name, sc in scorers.items():
                view_rows.append({"labels": view, "classifier": name, **view_metrics(test, verdicts, mapping, sc)})
        rw.table(view_rows, name="views", caption="The whole test split under the benchmark's labels and under the policy's "
                 "(positives relabelled by their verdict; negatives unchanged); probability 0.5")
        oracle = next(r for r in view_rows if r["labels"].startswith("benchmark") and r["classifier"].startswith("policy oracle (flags real +"))
        fast_policy = next(r for r in view_rows if r["labels"] == "policy, ambiguous left out" and r["classifier"] == "fast tier")
        rw.text(f"{by['not']['texts']} of the {n_pos} test positives ({by['not']['share of positives']:.0%}) do not violate the "
                f"policy; the fast tier flags {by['not']['flagged']} of them and {by['real']['flagged']} of the "
                f"{by['real']['texts']} real jailbreaks. A classifier that follows the policy exactly (flags every real or "
                f"ambiguous positive, nothing else) scores benchmark F1 {oracle['F1']:.3f}: the benchmark's labels reward "
                f"flagging the communities' benign texts. Under the policy's labels (ambiguous left out) the fast tier's "
                f"precision is {fast_policy['precision']:.3f} and its recall {fast_policy['recall']:.3f}.")
        if SECOND.is_file():
            ag = agreement(verdicts, read_audit(SECOND))
            pairs = ", ".join(f"{a}→{b}: {k}" for (a, b), k in sorted(ag["pairs"].items()) if a != b) or "none"
            rw.table([{k: v for k, v in ag.items() if k != "pairs"}], name="agreement",
                     caption=f"Agreement of a second, blind reading of {ag['n']} sampled texts with the first "
                             "(three verdicts; binary = violation or ambiguous vs not)")
            rw.text(f"Disagreements (first → second): {pairs}.")
            rw.metrics({"kappa": ag["kappa"], "kappa_binary": ag["kappa_binary"]})
        rw.metrics({f"recall_{r['verdict']}": r["recall"] for r in all_rows} | {f"share_{r['verdict']}": r["share of positives"] for r in all_rows}
                   | {_metric_name(r["classifier"], r["labels"], k): r[k] for r in view_rows for k in ("F1", "R@1%FPR")
                      if isinstance(r[k], (int, float))})
    print(rw.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
