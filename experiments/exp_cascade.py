"""Experiment 1: the cascade against its single tiers.

    python -m experiments.exp_cascade [--n 1000] [--n-safeguard 200] [--quick] [--tuned A.yaml B.yaml ...]

Systems, each evaluated through the public Router API on the same seeded stratified samples:

* jailbreak benchmark (date-split test): heuristic alone, static alone, fast alone, the safeguard alone
  (stand-in GGUF, and a replay of its recorded verdicts), the default cascade (``models/with-safeguard.yaml``, whose
  bands were tuned out of sample with twin tiers fit on train only) and the
  tuned cascade at three operating points (bands chosen by ``safecascade tune``'s API on the val split: 2% and 5% escalation, and max F1 with escalation <= 10%;
  the tuner assumes the safeguard's published confusion matrix, the evaluation runs the stand-in; the shipped
  static/fast tiers are refit on train+val, so these in-sample bands are optimistic by construction);
* OpenAI moderation (policy ``harmful_content``; static and fast heads trained on its train split
  here, cascade bands tuned on its val split) and XSTest: over-blocking = share of XSTest's *safe* prompts that are blocked.

The safeguard tier is wrapped in :mod:`experiments.tier_cache`, so each text is judged once; the
latency recorded when it was computed is kept, so costs are those of the real call. Cost per 1,000
texts is the summed per-tier compute (ms) of every text's path; "escalation" is the share of texts
that reach the safeguard. The stand-in (gemma3-270m) is not a safety model: its rows measure the
harness and the cost structure, not gpt-oss-safeguard's quality. With about 56 jailbreaks in the
600-text sample, one text moves recall by almost 0.02: compare rows with each other, and use
``safecascade eval`` on the whole test split for absolute figures.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from experiments import tier_cache  # noqa: F401  (registers the "cached" tier type)
from experiments.common import ROOT, ResultWriter, work_dir

log = logging.getLogger("experiments.cascade")

MODELS = ROOT / "models"


def _single(kind: str, policy: str, *, model: str = "default", threshold: float = 0.5) -> dict[str, Any]:
    return {"version": 1, "name": f"{kind}-only", "policies": {policy: f"builtin:{policy}"},
            "tiers": [{"name": kind, "type": kind, "threshold": threshold,
                       # the fast tier as the default router serves it: int8 when the model offers one
                       "options": {"model": model, **({"quantized": "auto"} if kind == "fast" else {})}}]}


def _safeguard_only(policy: str) -> dict[str, Any]:
    base = yaml.safe_load((MODELS / "with-safeguard.yaml").read_text())
    sg = next(t for t in base["tiers"] if t["type"] == "safeguard")
    sg = {**copy.deepcopy(sg), "on_error": "block"}
    return {"version": 1, "name": "safeguard-only", "policies": {policy: f"builtin:{policy}"}, "tiers": [sg]}


def with_cache(cfg: dict[str, Any]) -> dict[str, Any]:
    """Wrap every safeguard tier of a config dict in the disk cache."""
    out = copy.deepcopy(cfg)
    cache = str(work_dir("cascade") / "tier_cache.sqlite")
    for t in out["tiers"]:
        if t.get("type") == "safeguard":
            t["type"] = "cached"
            t["options"] = {"inner": "safeguard", "cache": cache, "options": t.get("options", {})}
    return out


def evaluate(name: str, cfg: dict[str, Any], examples: Sequence[Any], *, base_dir: Path, benchmark: str) -> dict[str, Any]:
    """Run one config over ``examples``; return a table row."""
    from safecascade.router.cascade import Router
    from safecascade.router.config import parse_config
    from safecascade.training.evaluate import evaluate_router_with_decisions
    from safecascade.training.metrics import latency_summary

    rc = parse_config(with_cache(cfg), base_dir=base_dir, source=name)
    router = Router.load(rc)
    try:
        rep, decisions = evaluate_router_with_decisions(router, examples, benchmark=benchmark, split="test",
                                                        baseline=False, batch_size=32, name=name)
    finally:
        router.close()
    last = rc.tiers[-1].name
    per_text = [sum(float(t.latency_ms) for t in d.path) for d in decisions]
    escalated = sum(1 for d in decisions if any(t.tier == last for t in d.path)) if len(rc.tiers) > 1 else len(decisions)
    lat = latency_summary(per_text)
    m = rep.metrics
    return {"system": name, "n": rep.n, "precision": m["precision"], "recall": m["recall"], "F1": m["f1"],
            "FPR": m["fpr"], "R@1%FPR": m.get("recall_at_1pct_fpr"),
            "escalation": escalated / rep.n if len(rc.tiers) > 1 else None,
            "ms per 1k texts": sum(per_text) / rep.n * 1000.0, "p50 ms": lat.get("p50"), "p99 ms": lat.get("p99"),
            "decided by": ", ".join(f"{k} {v}" for k, v in rep.decided_by.items())}


def _export_replay(examples: Sequence[Any], policy: str, out: Path) -> Path:
    """Write the safeguard's recorded verdicts for ``examples`` as a replay CSV (via the cached tier)."""
    import csv

    from safecascade.router.config import parse_config
    from safecascade.hashing import text_hash
    from safecascade.tiers.base import TierSpec, create_tier

    rc = parse_config(with_cache(_safeguard_only(policy)), base_dir=MODELS, source="replay-export")
    spec = rc.tiers[0]
    tier = create_tier(TierSpec(name=spec.name, type=spec.type, options=spec.options, policies=rc.resolve_policies(),
                                base_dir=MODELS))
    try:
        results = tier.classify([e.text for e in examples])
    finally:
        tier.close()
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text_hash", policy, f"{policy}_rule_ids"])
        for e, r in zip(examples, results):
            if r.error is None and policy in r.scores:
                w.writerow([text_hash(e.text), r.scores[policy], ";".join(r.rule_ids.get(policy, ()))])
    return out


OPERATING_POINTS = (("esc2", ("target-escalation", 0.02)), ("esc5", ("target-escalation", 0.05)),
                    ("maxf1-esc10", ("max-f1", 0.10)))


def tune_points(config_path: Path, benchmark: str, *, limit: int | None, points=OPERATING_POINTS) -> list[Path]:
    """Tune ``config_path``'s bands on ``benchmark``'s val split at each operating point
    (``safecascade tune``'s library API; scores cached, the safeguard's assumed confusion matrix);
    returns the tuned YAML paths."""
    from safecascade.router.config import load_config
    from safecascade.training.datasets import load_benchmark
    from safecascade.training.evaluate import stratified_sample
    from safecascade.training.tuning import Objective, TuneOptions, tune

    config = load_config(config_path)
    val = load_benchmark(benchmark, "val")
    if limit:
        val = stratified_sample(val, limit, seed="exp-cascade-tune")
    out = []
    for name, (kind, value) in points:
        obj = Objective(kind=kind, target=value) if kind == "target-escalation" else Objective(kind=kind, max_escalation=value)
        res = tune(config, [e.text for e in val], [e.label for e in val], TuneOptions(objective=obj, seed=0, cache_dir=work_dir("cascade", "tune_scores")))
        path = work_dir("cascade", "tuned") / f"{benchmark}_{name}.yaml"
        res.write_yaml(path, name=f"tuned-{name}")
        m = res.chosen_metrics
        log.info("tuned %s on %s/val: expected F1 %.3f escalation %.3f", name, benchmark, m["f1"], m["escalation"])
        out.append(path)
    return out


def jailbreak_rows(n: int, n_sg: int, tuned: Sequence[Path]) -> list[dict[str, Any]]:
    from safecascade.training.datasets import load_benchmark
    from safecascade.training.evaluate import stratified_sample

    test = load_benchmark("jailbreak", "test")
    exs = stratified_sample(test, n, seed="exp-cascade")
    sub = stratified_sample(exs, n_sg, seed="exp-cascade-sg")
    rows = [evaluate("heuristic alone", yaml.safe_load((ROOT / "experiments/configs/heuristic_only.yaml").read_text()),
                     exs, base_dir=ROOT / "experiments/configs", benchmark="jailbreak"),
            evaluate("static alone", _single("static", "jailbreak"), exs, base_dir=MODELS, benchmark="jailbreak"),
            evaluate("fast alone", _single("fast", "jailbreak"), exs, base_dir=MODELS, benchmark="jailbreak"),
            evaluate("default cascade (models/with-safeguard.yaml)", yaml.safe_load((MODELS / "with-safeguard.yaml").read_text()), exs,
                     base_dir=MODELS, benchmark="jailbreak")]
    for path in tuned:
        rows.append(evaluate(f"tuned cascade: {path.stem.split('_', 1)[-1]}", yaml.safe_load(path.read_text()), exs, base_dir=path.parent,
                             benchmark="jailbreak"))
    # the safeguard alone is slow: a smaller stratified subset, and the same subset for the other systems
    sg_rows = [evaluate(f"safeguard alone (stand-in) [subset]", _safeguard_only("jailbreak"), sub, base_dir=MODELS,
                        benchmark="jailbreak")]
    replay = _export_replay(sub, "jailbreak", work_dir("cascade") / "safeguard_replay.csv")
    sg_rows.append(evaluate("safeguard alone (replay of recorded verdicts) [subset]",
                            {"version": 1, "name": "replay", "policies": {"jailbreak": "builtin:jailbreak"},
                             "tiers": [{"name": "safeguard", "type": "replay", "options": {"path": str(replay)},
                                        "threshold": 0.5, "on_error": "block"}]}, sub, base_dir=MODELS, benchmark="jailbreak"))
    sg_rows.append(evaluate("fast alone [subset]", _single("fast", "jailbreak"), sub, base_dir=MODELS, benchmark="jailbreak"))
    sg_rows.append(evaluate("default cascade [subset]", yaml.safe_load((MODELS / "with-safeguard.yaml").read_text()), sub,
                            base_dir=MODELS, benchmark="jailbreak"))
    return rows, sg_rows


def _moderation_models(quick: bool) -> dict[str, Path]:
    """Static and fast heads for ``harmful_content`` trained on the moderation train split (cached)."""
    from safecascade.training.fast_train import train_from_benchmark
    from safecascade.training.train_config import TrainConfig

    out = {}
    for kind in ("static", "fast"):
        d = work_dir("cascade", f"moderation-{kind}")
        if not (d / "card.json").is_file():
            log.info("training the %s tier on the moderation benchmark", kind)
            train_from_benchmark(TrainConfig(kind=kind, benchmark="moderation", policies=("harmful_content",)),
                                 out_dir=d, progress=True)
        out[kind] = d
    return out


def moderation_rows(n: int, quick: bool, *, tune_limit: int | None) -> list[dict[str, Any]]:
    from safecascade.training.datasets import load_benchmark
    from safecascade.training.evaluate import stratified_sample

    models = _moderation_models(quick)
    pol = "harmful_content"
    cascade = {"version": 1, "name": "moderation-cascade", "policies": {pol: f"builtin:{pol}"},
               "tiers": [{"name": "static", "type": "static", "options": {"model": str(models["static"])},
                          "bands": {"default": [0.02, 0.98]}, "on_error": "next"},
                         {"name": "fast", "type": "fast", "options": {"model": str(models["fast"])},
                          "bands": {"default": [0.1, 0.9]}, "on_error": "next"},
                         {**_safeguard_only(pol)["tiers"][0], "on_error": "fast-verdict"}]}
    hand = work_dir("cascade", "tuned") / "moderation_hand.yaml"
    hand.write_text(yaml.safe_dump(cascade, sort_keys=False), encoding="utf-8")
    tuned = tune_points(hand, "moderation", limit=tune_limit, points=(("maxf1-esc10", ("max-f1", 0.10)),))[0]
    systems = [("static alone", _single("static", pol, model=str(models["static"]))),
               ("fast alone", _single("fast", pol, model=str(models["fast"]))),
               ("cascade static→fast→safeguard (tuned: max F1, escalation ≤ 0.10)", yaml.safe_load(tuned.read_text()))]
    rows = []
    mod = stratified_sample(load_benchmark("moderation", "test"), n, seed="exp-cascade-mod")
    xs_safe = [e for e in load_benchmark("xstest", "test") if e.label == 0]
    xs_safe = xs_safe[: max(20, n // 2)] if quick else xs_safe
    for name, cfg in systems:
        row = evaluate(name, cfg, mod, base_dir=hand.parent, benchmark="moderation")
        xs = evaluate(name, cfg, xs_safe, base_dir=hand.parent, benchmark="xstest")
        row["XSTest safe blocked"] = xs["FPR"]
        rows.append(row)
    return rows


COLS = ["system", "n", "precision", "recall", "F1", "FPR", "R@1%FPR", "escalation", "ms per 1k texts", "p50 ms", "p99 ms",
        "decided by"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600, help="jailbreak test texts (stratified)")
    ap.add_argument("--n-safeguard", type=int, default=100, help="subset for the safeguard-alone rows")
    ap.add_argument("--n-moderation", type=int, default=300)
    ap.add_argument("--tuned", nargs="*", type=Path, default=None,
                    help="tuned router YAMLs to evaluate (default: tune models/with-safeguard.yaml on the val split at three points)")
    ap.add_argument("--tune-limit", type=int, default=None, help="tune on a stratified sample of the val split")
    ap.add_argument("--quick", action="store_true", help="small samples (smoke run)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.quick:
        args.n, args.n_safeguard, args.n_moderation, args.tune_limit = 120, 12, 40, args.tune_limit or 300
    tuned = args.tuned if args.tuned is not None else tune_points(MODELS / "with-safeguard.yaml", "jailbreak", limit=args.tune_limit)
    params = {"n": args.n, "n_safeguard": args.n_safeguard, "n_moderation": args.n_moderation,
              "tuned": ",".join(p.name for p in tuned) or "none"}
    with ResultWriter("cascade", title="Cascade vs single tiers", params=params) as rw:
        rw.text(__doc__.split("\n\n", 2)[2])
        jb, jb_sg = jailbreak_rows(args.n, args.n_safeguard, tuned)
        rw.table(jb, COLS, name="jailbreak", caption=f"Jailbreak benchmark, date-split test, stratified n={args.n}")
        rw.table(jb_sg, COLS, name="jailbreak_safeguard_subset",
                 caption=f"Safeguard alone vs the others on a stratified subset (n={args.n_safeguard}) of the same sample")
        mod = moderation_rows(args.n_moderation, args.quick, tune_limit=args.tune_limit)
        rw.table(mod, COLS + ["XSTest safe blocked"], name="moderation",
                 caption=f"OpenAI moderation test (harmful_content, n={args.n_moderation}) and over-blocking on XSTest's safe prompts")
        for r in jb:
            key = r["system"].split(" (")[0].replace(" ", "_").replace(":", "")
            rw.metrics({f"{key}.f1": r["F1"], f"{key}.ms_per_1k": r["ms per 1k texts"]})
        _plot(rw, jb)
    return 0


def _plot(rw: ResultWriter, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["ms per 1k texts"], r["F1"], s=40)
        ax.annotate(r["system"].replace("tuned cascade: ", "tuned "), (r["ms per 1k texts"], r["F1"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("compute per 1,000 texts (ms, log)")
    ax.set_ylabel("F1 (jailbreak test)")
    ax.grid(alpha=0.3)
    rw.figure(fig, "f1_vs_cost.png", caption="F1 vs cost per 1,000 texts")


if __name__ == "__main__":
    sys.exit(main())
