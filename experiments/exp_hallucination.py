"""Experiment 5 - CoT hallucination rate: the share of safeguard verdicts that cite rule ids the
policy does not define (the tier checks every cited id against the policy's parsed ids and
flags the rest as ``hallucinated_rule_ids``), and the accuracy of verdicts with vs without a
hallucinated citation.

    python -m experiments.exp_hallucination [--quick] [--n 40] [--model-path GGUF | --base-url URL --model NAME]

Texts: the reasoning-effort experiment's jailbreak sample (same seed, so its cached outputs are
reused), a balanced moderation sample (harmful-content policy) and the multi-policy experiment's
hand-written set under the PII policy (also cached by that experiment). Default 40 + 16 + 14.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter

from experiments import safeguard_exp as sx
from experiments.common import ResultWriter

log = logging.getLogger("experiments")


def main(argv: list[str] | None = None) -> int:
    ap = sx.parser(__doc__.splitlines()[0], n_default=40, n_quick=6)
    ap.add_argument("--n-moderation", type=int, default=None, help="moderation texts (default 16; quick 4)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from experiments.exp_multi_policy import HAND
    from safecascade.router.policy import Policy, builtin_policies

    shipped = builtin_policies()
    n = sx.n_texts(args)
    n_mod = args.n_moderation or (4 if args.quick else 16)
    sets = [
        ("jailbreak", "jailbreak/test", [(e.text, e.label) for e in
                                         sx.balanced_sample("jailbreak", "test", n, max_chars=args.max_chars, seed="reasoning-effort")]),
        ("harmful_content", "moderation/test", [(e.text, e.label) for e in
                                                sx.balanced_sample("moderation", "test", n_mod, max_chars=args.max_chars,
                                                                   seed="hallucination")]),
        ("pii", "hand-written (exp 4)", [(t, c) for _, t, _, _, c in (HAND[:2] if args.quick else HAND)]),
    ]
    params = {"model": sx.model_label(args), "jailbreak": len(sets[0][2]), "moderation": len(sets[1][2]),
              "pii": len(sets[2][2]), "threads": args.threads}
    with sx.judge(args) as judge, ResultWriter("hallucination", title="CoT hallucination: citations of undefined rule ids",
                                               params=params) as rw:
        rows, fake_ids = [], Counter()
        all_h, all_c = [], []
        for pol_name, source, data in sets:
            pol = Policy.from_file(pol_name, shipped[pol_name])
            js = judge.judge({pol_name: pol}, [t for t, _ in data], options={"reasoning_effort": "low"}, desc=pol_name)
            ok = [(j.verdicts[pol_name], y) for j, y in zip(js, (y for _, y in data)) if pol_name in j.verdicts]
            hall = [(v, y) for v, y in ok if v.hallucinated]
            clean = [(v, y) for v, y in ok if not v.hallucinated]
            cites_any = [(v, y) for v, y in ok if v.rule_ids or v.hallucinated]
            for v, _ in hall:
                fake_ids.update(v.hallucinated)
            all_h += hall
            all_c += clean

            def acc(xs):
                return sum(int(v.violation) == int(y) for v, y in xs) / len(xs) if xs else None

            rows.append({"policy": pol_name, "texts": source, "verdicts": len(ok), "errors": len(js) - len(ok),
                         "cite_any_id": len(cites_any) / len(ok) if ok else None,
                         "hallucination_rate": len(hall) / len(ok) if ok else None,
                         "acc_with_hallucination": acc(hall), "n_with": len(hall),
                         "acc_without": acc(clean), "n_without": len(clean), "p_fisher": _fisher(hall, clean),
                         "mean_conf_margin_with": _margin(hall), "mean_conf_margin_without": _margin(clean)})
        total = len(all_h) + len(all_c)
        rows.append({"policy": "all", "texts": "", "verdicts": total, "errors": sum(r["errors"] for r in rows),
                     "cite_any_id": None, "hallucination_rate": len(all_h) / total if total else None,
                     "acc_with_hallucination": (sum(int(v.violation) == int(y) for v, y in all_h) / len(all_h)) if all_h else None,
                     "n_with": len(all_h),
                     "acc_without": (sum(int(v.violation) == int(y) for v, y in all_c) / len(all_c)) if all_c else None,
                     "n_without": len(all_c), "p_fisher": _fisher(all_h, all_c), "mean_conf_margin_with": _margin(all_h), "mean_conf_margin_without": _margin(all_c)})
        rw.text("One safeguard call per text and policy (single-policy prompts). A verdict *hallucinates* when any cited "
                "rule id is not defined by the policy (the tier's `hallucinated_rule_ids`; the policy's ids are parsed "
                "by `router/policy.py`). Accuracy = verdict label equals the gold label; `p_fisher` = Fisher's exact test of accuracy with vs without (SciPy). `mean_conf_margin` = mean "
                "|p - 0.5| of the tier's probability, after its hallucination penalty (`toward_half`, factor 0.5), so "
                "it shows how much the penalty discounts those verdicts.\n")
        rw.table(rows, ["policy", "texts", "verdicts", "errors", "cite_any_id", "hallucination_rate", "acc_with_hallucination",
                        "n_with", "acc_without", "n_without", "p_fisher", "mean_conf_margin_with", "mean_conf_margin_without"],
                 caption="Headline: hallucination rate and accuracy with / without hallucinated citations")
        top = [{"cited id": k, "times": v} for k, v in fake_ids.most_common(10)]
        rw.table(top, ["cited id", "times"], name="top_ids", caption="Most frequent undefined ids cited")
        _plot(rw, rows[:-1])
        last = rows[-1]
        rw.metrics({"hallucination_rate": last["hallucination_rate"] or 0.0,
                    **({"acc_with": last["acc_with_hallucination"]} if last["acc_with_hallucination"] is not None else {}),
                    **({"acc_without": last["acc_without"]} if last["acc_without"] is not None else {})})
        rw.text("A grammar constrains the stand-in's rule ids to the *shape* `A1.a` (`[A-Z][A-Z0-9]{0,4}.[a-z0-9]{1,3}`), "
                "not to the policy's ids, so made-up ids are possible by construction; a policy-specific grammar (an "
                "enumeration of the ids) would remove them for chat models but not for harmony models, which are not "
                "grammar-constrained here.\n")
        rw.text(f"Cache: {judge.stats['hits']} hits, {judge.stats['misses']} model calls this run.\n")
        rw.text(sx.STAND_IN_NOTE)
        rw.text(sx.BUDGET_NOTE)
    return 0


def _fisher(with_h, without) -> float | None:
    """Two-sided Fisher exact p for accuracy with vs without a hallucinated citation."""
    if not with_h or not without:
        return None
    from scipy.stats import fisher_exact

    def right(xs):
        return sum(int(v.violation) == int(y) for v, y in xs)

    table = [[right(with_h), len(with_h) - right(with_h)], [right(without), len(without) - right(without)]]
    return float(fisher_exact(table).pvalue)


def _margin(pairs) -> float | None:
    return sum(abs(v.probability - 0.5) for v, _ in pairs) / len(pairs) if pairs else None


def _plot(rw: ResultWriter, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(rows))
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.3))
    a.bar(x, [r["hallucination_rate"] or 0 for r in rows], color="#8172b2")
    a.set_xticks(x, [r["policy"] for r in rows])
    a.set_ylim(0, 1)
    a.set_title("hallucination rate")
    b.bar(x - 0.2, [r["acc_with_hallucination"] or 0 for r in rows], 0.4, label="with undefined id")
    b.bar(x + 0.2, [r["acc_without"] or 0 for r in rows], 0.4, label="without")
    b.set_xticks(x, [r["policy"] for r in rows])
    b.set_ylim(0, 1)
    b.legend(fontsize=8)
    b.set_title("accuracy")
    rw.figure(fig, "rate_accuracy.png", caption="hallucination rate and accuracy by policy")


if __name__ == "__main__":
    sys.exit(main())
