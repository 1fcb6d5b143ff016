"""Experiment 2 - reasoning effort low / medium / high on a fixed seeded subset of the jailbreak
benchmark (test split, balanced labels): latency p50/p99, prompt/completion/reasoning tokens
(the backend's usage), precision/recall/F1 and the parse-failure rate.

    python -m experiments.exp_reasoning_effort [--quick] [--n 200] [--model-path GGUF | --base-url URL --model NAME]

The issue asks for 200 texts; the default is 40 because the stand-in runs at ~3-10 s a call on
shared CPU cores (``--n 200`` runs the full subset). Outputs are cached, so reruns are cheap.
"""

from __future__ import annotations

import logging
import sys

from experiments import safeguard_exp as sx
from experiments.common import ResultWriter

log = logging.getLogger("experiments")
EFFORTS = ("low", "medium", "high")


def main(argv: list[str] | None = None) -> int:
    ap = sx.parser(__doc__.splitlines()[0], n_default=40, n_quick=6)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from safecascade.router.policy import Policy, builtin_policies
    from safecascade.training.metrics import classification_summary, latency_summary

    n = sx.n_texts(args)
    exs = sx.balanced_sample("jailbreak", "test", n, max_chars=args.max_chars, seed="reasoning-effort")
    policy = Policy.from_file("jailbreak", builtin_policies()["jailbreak"])
    labels = [e.label for e in exs]
    rows, lat_by_effort = [], {}
    params = {"model": sx.model_label(args), "n": len(exs), "benchmark": "jailbreak/test (balanced)",
              "max_chars": args.max_chars, "threads": args.threads}
    with sx.judge(args) as judge, ResultWriter("reasoning_effort", title="Reasoning effort (low / medium / high)",
                                               params=params) as rw:
        base_prompt = None
        for effort in EFFORTS:
            opts = {"reasoning_effort": effort}
            tier = judge.tier({"jailbreak": policy}, opts)
            prompt = tier.render(tier.groups[0], exs[0].text).text
            base_prompt = base_prompt or prompt
            js = judge.judge({"jailbreak": policy}, [e.text for e in exs], options=opts, desc=f"effort {effort}")
            preds = [j.prediction("jailbreak") for j in js]
            ok = [i for i, p in enumerate(preds) if p is not None]
            summ = classification_summary([labels[i] for i in ok], [preds[i] for i in ok]) if ok else {}
            lat = latency_summary([j.latency_ms for j in js])
            lat_by_effort[effort] = [j.latency_ms / 1000.0 for j in js]
            k = len(js)
            row = {"effort": effort, "format": "harmony" if tier.harmony else "chat (effort not in prompt)",
                   "prompt_differs_from_low": prompt != base_prompt, "n": k,
                   "latency_p50_s": lat["p50"] / 1000.0, "latency_p99_s": lat["p99"] / 1000.0,
                   "prompt_tok": sum(j.prompt_tokens for j in js) / k, "completion_tok": sum(j.completion_tokens for j in js) / k,
                   "reasoning_tok": sum(j.reasoning_tokens for j in js) / k,
                   "precision": summ.get("precision"), "recall": summ.get("recall"), "f1": summ.get("f1"),
                   "parse_failure_rate": sum(1 for j in js if j.malformed) / k,
                   "error_rate": sum(1 for j in js if j.error) / k,
                   "cached": sum(j.from_cache for j in js)}
            rows.append(row)
            rw.metrics({f"{effort}_{m}": row[m] for m in ("f1", "latency_p50_s", "latency_p99_s", "completion_tok",
                                                          "parse_failure_rate") if row[m] is not None})
        rw.text(f"Jailbreak policy, {len(exs)} texts of the jailbreak benchmark's test split "
                f"({sum(labels)} label 1, {len(labels) - sum(labels)} label 0; seeded, balanced, texts up to "
                f"{args.max_chars or 'any'} characters), one safeguard call per text and effort. Latency is per text "
                "(wall clock of the run that filled the cache); tokens are the backend's usage; F1 over texts with a "
                "verdict; parse failures = texts where any attempt could not be parsed (the tier retries once), "
                "errors = texts left without a verdict.\n")
        rw.table(rows, ["effort", "format", "prompt_differs_from_low", "n", "latency_p50_s", "latency_p99_s",
                        "prompt_tok", "completion_tok", "reasoning_tok", "precision", "recall", "f1",
                        "parse_failure_rate", "error_rate", "cached"], caption="Headline: effort vs latency, tokens, quality")
        if not rows[0]["format"].startswith("harmony"):
            rw.text("**Reading this table.** Reasoning effort is a harmony (gpt-oss) setting - it is the `Reasoning:` "
                    "line of the system message. A chat-template model such as the stand-in never sees it: the "
                    "rendered prompts are byte-identical across efforts (`prompt_differs_from_low` = False), so the "
                    "three rows share one set of cached outputs and differ in nothing. The row structure, token "
                    "accounting and the parse-failure counter are what this run checks; run it against a gpt-oss "
                    "GGUF or endpoint to see the real trade-off.\n")
        _plot(rw, lat_by_effort, rows)
        rw.text(f"Cache: {judge.stats['hits']} hits, {judge.stats['misses']} model calls this run. Default size: "
                "40 texts (the issue's 200 with `--n 200`); cold on the stand-in 40 calls (one per text; the efforts share them), about 3 s each on idle cores, 8-20 s on the shared machine this page was produced on.\n")
        rw.text(sx.STAND_IN_NOTE)
        rw.text(sx.BUDGET_NOTE)
    return 0


def _plot(rw: ResultWriter, lat: dict[str, list[float]], rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.boxplot([lat[e] for e in EFFORTS], tick_labels=list(EFFORTS))
    a.set_ylabel("seconds per text")
    a.set_title("latency")
    b.bar(list(EFFORTS), [r["f1"] or 0 for r in rows], color="#4c72b0")
    b.set_ylim(0, 1)
    b.set_title("F1 (jailbreak)")
    rw.figure(fig, "latency_f1.png", caption="latency and F1 by reasoning effort")


if __name__ == "__main__":
    sys.exit(main())
