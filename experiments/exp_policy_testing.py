"""Experiment 3 - the policy testing framework (``safecascade policy-test``) on the jailbreak policy:
A/B (the policy vs the same policy without its EXAMPLES section, McNemar), rule ablation (each
rule dropped in turn), a length sweep (cut to 50% / 75%, expanded to 150% with train-split
examples) and a regression check against a stored baseline result JSON.

    python -m experiments.exp_policy_testing [--quick] [--n 40] [--rebaseline] [--model-path GGUF | --base-url URL --model NAME]

Default: 6 texts (balanced, jailbreak val split) x 17 policy variants = 102 safeguard calls,
~10-30 min cold on the stand-in on shared cores; cached afterwards. ``--n 40`` or more is what a
real policy edit needs - with 6 texts a difference reaches p < 0.05 only when all 6 change in
the same direction.
"""

from __future__ import annotations

import json
import logging
import re
import sys

from experiments import safeguard_exp as sx
from experiments.common import ResultWriter, results_dir

log = logging.getLogger("experiments")
FRACTIONS = (0.5, 0.75, 1.5)


def without_examples(policy):
    from safecascade.router.policy import Policy

    text = re.split(r"\n## EXAMPLES\b", policy.text)[0].rstrip() + "\n"
    return Policy.from_text(policy.name, text, path="jailbreak.md without EXAMPLES")


def main(argv: list[str] | None = None) -> int:
    ap = sx.parser(__doc__.splitlines()[0], n_default=6, n_quick=2)
    ap.add_argument("--rebaseline", action="store_true", help="overwrite the stored baseline result JSON")
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from safecascade.router.policy import Policy, builtin_policies
    from safecascade.training import policy_checks as pt

    n = sx.n_texts(args)
    exs = sx.balanced_sample("jailbreak", "val", n, max_chars=args.max_chars, seed="policy-testing")
    pool = sx.balanced_sample("jailbreak", "train", 40, max_chars=args.max_chars, seed="policy-testing-pool")
    policy = Policy.from_file("jailbreak", builtin_policies()["jailbreak"])
    base_path = results_dir() / f"policy_testing_baseline{'_quick' if args.quick else ''}.json"
    params = {"model": sx.model_label(args), "n": len(exs), "benchmark": "jailbreak/val (balanced)",
              "alpha": args.alpha, "fractions": ",".join(map(str, FRACTIONS)), "threads": args.threads}
    with sx.judge(args) as judge, ResultWriter("policy_testing", title="Policy testing (A/B, ablation, length, regression)",
                                               params=params) as rw:
        scorer = pt.judge_scorer(judge)
        count = judge.backend.count_tokens
        ref = pt.evaluate("full policy", policy, exs, scorer, count_tokens=count)
        m = ref.metrics()
        b = without_examples(policy)
        ab = pt.compare(ref, pt.evaluate("without EXAMPLES", b, exs, scorer, count_tokens=count), alpha=args.alpha)
        abl = pt.ablation(policy, exs, scorer, reference=ref, alpha=args.alpha, count_tokens=count)
        lengths = [pt.compare(ref, pt.evaluate(name, var, exs, scorer, count_tokens=count), alpha=args.alpha)
                   for name, var in pt.length_variants(policy, FRACTIONS, pool=pool, count_tokens=count) if var is not policy]
        if args.rebaseline or not base_path.is_file():
            base_path.write_text(json.dumps(ref.to_dict(), indent=2), encoding="utf-8")
            base_note = f"stored now from this run's full-policy result (`{base_path.name}`)"
        else:
            base_note = f"`{base_path.name}` (stored by an earlier run; `--rebaseline` replaces it)"
        baseline = json.loads(base_path.read_text(encoding="utf-8"))
        reg_rows = []
        for label, res in [("full policy (this run)", ref), ("without EXAMPLES", ab.b),
                           (max(abl, key=lambda c: -c.delta_accuracy).b.name, max(abl, key=lambda c: -c.delta_accuracy).b)]:
            r = pt.regression(res.to_dict(), baseline, alpha=args.alpha)
            reg_rows.append({"candidate": label, "n": r.n, "baseline_acc": r.baseline_accuracy, "candidate_acc": r.current_accuracy,
                             "p_value": r.test.p_value, "regression": r.regressed, "policy-test exit": 1 if r.regressed else 0})

        rw.text(f"Jailbreak policy ({ref.tokens} tokens by the model's tokenizer, {ref.rules} rules) on {len(exs)} texts of the "
                f"jailbreak benchmark's val split ({sum(ref.labels)} label 1; seeded, balanced, up to {args.max_chars or 'any'} "
                f"characters). Reference: accuracy {m['accuracy']:.3f}, F1 {m['f1']:.3f}, error rate {m['error_rate']:.3f}. "
                "Every variant is scored on the same texts; `p_value` is McNemar's exact test on the paired correctness "
                "(statsmodels); `ref_only_right` / `variant_only_right` are the discordant pairs. The same run from the "
                "command line: `safecascade policy-test --policy jailbreak --against B.md --ablate --lengths 0.5,0.75,1.5 "
                f"--split val --n {len(exs)} --save base.json` (then `--baseline base.json`).\n")
        cols = ["variant", "tokens", "rules", "accuracy", "f1", "errors", "d_accuracy", "d_f1", "ref_only_right",
                "variant_only_right", "p_value", "significant"]
        headline = [ab.row()] + [c.row() for c in lengths]
        rw.table(headline, cols, name="headline", caption="Headline: A/B and length sweep against the full policy")
        rw.table([c.row() for c in abl], cols, name="ablation", caption="Rule ablation (each rule and the examples citing it dropped)")
        variants = [ab] + lengths + abl
        worse = sum(c.delta_accuracy < 0 for c in variants)
        better = sum(c.delta_accuracy > 0 for c in variants)
        rw.text(f"Of {len(variants)} variants, {worse} score lower than the full policy, {better} higher and "
                f"{len(variants) - worse - better} the same; {sum(c.significant for c in variants)} of the differences are "
                f"significant at alpha {args.alpha}.\n")
        rw.text(f"**Regression check** against the stored baseline, {base_note}:\n")
        rw.table(reg_rows, ["candidate", "n", "baseline_acc", "candidate_acc", "p_value", "regression", "policy-test exit"],
                 name="regression")
        _plot(rw, abl, lengths, ref)
        rw.metrics({"accuracy_full": m["accuracy"], "f1_full": m["f1"], "d_accuracy_no_examples": ab.delta_accuracy,
                    "p_no_examples": ab.test.p_value, "significant_ablations": sum(c.significant for c in abl)})
        rw.text(f"Cache: {judge.stats['hits']} hits, {judge.stats['misses']} model calls this run "
                f"({len(exs)} texts x {2 + len(abl) + len(lengths)} policy variants). With this few texts the test is "
                "underpowered by design of the default size; raise `--n` for a real policy decision.\n")
        rw.text(sx.STAND_IN_NOTE)
        rw.text(sx.BUDGET_NOTE)
    return 0


def _plot(rw: ResultWriter, abl, lengths, ref) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.barh([c.b.name.replace("without ", "-") for c in abl], [c.delta_accuracy for c in abl], color="#c44e52")
    a.axvline(0, color="black", lw=0.8)
    a.set_xlabel("accuracy change vs full policy")
    a.set_title("rule ablation")
    pts = sorted([(ref.tokens, ref.metrics()["accuracy"])] + [(c.b.tokens, c.b.metrics()["accuracy"]) for c in lengths])
    b.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
    b.axvspan(400, 600, color="#8fbc8f", alpha=0.3, label="guide: 400-600 tokens")
    b.set_xlabel("policy tokens")
    b.set_ylabel("accuracy")
    b.set_ylim(0, 1)
    b.legend(loc="lower right")
    b.set_title("length sweep")
    rw.figure(fig, "ablation_length.png", caption="rule ablation and length sweep")


if __name__ == "__main__":
    sys.exit(main())
