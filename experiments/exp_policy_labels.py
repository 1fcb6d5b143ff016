"""Experiment: train the fast tier on the policy's labels instead of the collection's.

JailbreakHub labels every prompt collected in a jailbreak community as a jailbreak. All 952 train
and val positives were read against the jailbreak policy, as the 490 test positives were
(``experiments/data/jailbreak_trainval_audit.csv``; method and caveats in
:mod:`experiments.exp_label_audit`): 783 ``real``, 125 ``not``, 44 ``ambiguous``. This program
retrains the fast tier with those verdicts as labels, the way distilling gpt-oss-safeguard's
verdicts would (``safecascade train fast --from-log``):

* train: ``real`` positives stay 1, ``not`` become negatives (benign texts in the jailbreak
  communities' style: the hard negatives the collection lacks), ``ambiguous`` become soft rows
  with target 0.5 (through the trainer's verdict-replay path);
* val (calibration, stacking, the train+val refit): ``real`` 1, ``not`` 0, ``ambiguous`` left out;
* everything else is the default recipe. By default the encoder is the default model's
  fine-tuned MiniLM (contrastively tuned on the benchmark's labels; its embeddings are cached),
  so only the heads, the lexical block and the calibration learn the new labels;
  ``--finetune`` tunes the encoder on the policy's labels too (about 17 minutes more).

Two more sources of policy-following labels can be added:

* ``--read-negatives``: the 2,710 train and val hard negatives (ToxicChat, awesome-chatgpt-prompts)
  were read against the policy too (``experiments/data/jailbreak_trainval_negatives_audit.csv``:
  13 ``real``, 31 ``ambiguous``); they are relabelled like the positives;
* ``--toxicchat-jailbreaks``: the ToxicChat prompts its human annotators flagged as jailbreaking,
  which the benchmark leaves out (41 train, 9 val after duplicates and benchmark texts are
  dropped; :func:`safecascade.training.datasets.toxicchat_jailbreaks`), as positives.

Both models are scored on the whole test split, fp32, at calibrated probability 0.5, under the
benchmark's labels and under the policy's (the test texts relabelled by the audit).

    python -m experiments.exp_policy_labels [--finetune] [--read-negatives] [--toxicchat-jailbreaks] [--out DIR]

Results: ``experiments/results/policy_labels[_finetune][_negatives][_toxicchat].md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from experiments.common import ResultWriter, work_dir
from experiments.exp_label_audit import TRAINVAL_AUDIT, TRAINVAL_NEGATIVES_AUDIT

__all__ = ["POLICY_TARGET", "TRAINVAL_AUDIT", "TRAINVAL_NEGATIVES_AUDIT", "main", "policy_rows"]
POLICY_TARGET = {"real": 1.0, "not": 0.0, "ambiguous": 0.5}


def policy_rows(examples: Sequence[Any], verdicts: Mapping[str, str]) -> tuple[list[Any], list[dict[str, Any]]]:
    """Split ``examples`` into hard-labelled examples and soft replay rows by the policy's verdicts.

    A text with a verdict takes its target (``real`` 1, ``not`` 0) and an ``ambiguous`` one becomes
    a replay row ``{"text", "jailbreak": 0.5}``. A negative without a verdict (one nobody read)
    passes unchanged; a positive without one is an error.
    """
    hard, soft = [], []
    for e in examples:
        if e.label != 1 and e.id not in verdicts:
            hard.append(e)
            continue
        if e.id not in verdicts:
            raise ValueError(f"positive {e.id} has no policy verdict in {TRAINVAL_AUDIT.name}")
        t = POLICY_TARGET[verdicts[e.id]]
        if t in (0.0, 1.0):
            hard.append(replace(e, label=int(t)))
        else:
            soft.append({"text": e.text, "jailbreak": t})
    return hard, soft


def _write_replay(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "jailbreak"])
        w.writeheader()
        w.writerows(rows)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--finetune", action="store_true", help="tune the encoder on the policy's labels (about 17 min more)")
    ap.add_argument("--toxicchat-jailbreaks", action="store_true",
                    help="add ToxicChat's human-flagged jailbreak prompts of train and val as positives")
    ap.add_argument("--read-negatives", action="store_true",
                    help="relabel the train and val hard negatives by their reading too (13 real, 31 ambiguous)")
    ap.add_argument("--out", default=None, help="artifact dir for the policy-labelled model (default: a work dir)")
    ap.add_argument("--quick", action="store_true", help="accepted for run_all; the experiment is the same either way")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from experiments.exp_label_audit import VIEWS, metric_name, read_audit, split_verdicts, view_metrics
    from safecascade.tiers.fast import FastTier
    from safecascade.training.datasets import load_benchmark, toxicchat_jailbreaks
    from safecascade.training.default_models import DEFAULT_RECIPE, ensure_default_models
    from safecascade.training.fast_train import train_fast
    from safecascade.training.train_config import TrainConfig

    train, val, test = (load_benchmark("jailbreak", s) for s in ("train", "val", "test"))
    pos_v = read_audit(TRAINVAL_AUDIT)
    want = {e.id for e in (*train, *val) if e.label == 1}
    if set(pos_v) != want:
        raise SystemExit(f"{TRAINVAL_AUDIT}: covers {len(pos_v)} ids, the train and val positives are {len(want)}")
    neg_v = read_audit(TRAINVAL_NEGATIVES_AUDIT) if args.read_negatives else {}
    if set(neg_v) - {e.id for e in (*train, *val) if e.label == 0}:
        raise SystemExit(f"{TRAINVAL_NEGATIVES_AUDIT}: names ids that are not train or val negatives")
    tv = {**pos_v, **neg_v}
    train_hard, train_soft = policy_rows(train, tv)
    val_hard, _ = policy_rows(val, tv)  # ambiguous val positives are left out (calibration needs hard labels)
    extra = {s: toxicchat_jailbreaks(s) if args.toxicchat_jailbreaks else [] for s in ("train", "val")}
    train_hard, val_hard = train_hard + extra["train"], val_hard + extra["val"]
    default_dir = ensure_default_models(kinds=("fast",))["fast"]
    default_card = json.loads((default_dir / "card.json").read_text(encoding="utf-8"))
    recipe = dict(DEFAULT_RECIPE["fast"], int8=False)
    if not args.finetune:
        recipe.update(finetune=False, encoder=str(default_card["encoder"].get("path") or "default"))
    cfg = TrainConfig(kind="fast", **recipe)
    variant = [n for n, on in (("finetune", args.finetune), ("negatives", args.read_negatives),
                               ("toxicchat", args.toxicchat_jailbreaks)) if on]
    out = Path(args.out) if args.out else work_dir("policy_labels", "-".join(["fast-policy", *variant]))
    with tempfile.TemporaryDirectory() as tmp:
        replay = _write_replay(train_soft, Path(tmp) / "ambiguous.csv")
        res = train_fast(cfg, train=train_hard, val=val_hard, verdicts=replay, out_dir=out)
    texts = [e.text for e in test]
    test_verdicts = split_verdicts(test)
    models = {"default (benchmark labels)": default_dir, "policy labels": out}
    rows, scores = [], {}
    for name, d in models.items():
        scores[name] = [r.scores.get("jailbreak", 0.0) for r in FastTier(model_dir=d, quantized=False).classify(texts)]
        for view, mapping in VIEWS.items():
            rows.append({"trained on": name, "test labels": view, **view_metrics(test, test_verdicts, mapping, scores[name])})
    counts = {v: sum(x == v for x in pos_v.values()) for v in POLICY_TARGET}
    neg_counts = {v: sum(x == v for x in neg_v.values()) for v in POLICY_TARGET}
    title = "The fast tier trained on the policy's labels" + (" (encoder tuned on them too)" if args.finetune else "")
    title += " (hard negatives read too)" if args.read_negatives else ""
    title += " + ToxicChat's human jailbreak flags" if args.toxicchat_jailbreaks else ""
    with ResultWriter("_".join(["policy_labels", *variant]), title=title,
                      params={"finetune": args.finetune, "read_negatives": args.read_negatives,
                              "toxicchat_jailbreaks": args.toxicchat_jailbreaks,
                              "toxicchat_positives": {s: len(v) for s, v in extra.items()}, "encoder": cfg.encoder, "out": str(out),
                              "train_rows": len(train_hard) + len(train_soft), "val_rows": len(val_hard)}) as rw:
        rw.text(f"Train and val positives by the policy: {counts['real']} real, {counts['not']} not (trained as negatives), "
                f"{counts['ambiguous']} ambiguous (soft target 0.5 in train, left out of val). Method and caveats in the "
                "program's docstring; both models fp32, calibrated probability 0.5, the whole test split.")
        if neg_v:
            rw.text(f"Train and val hard negatives by the policy: {neg_counts['real']} real (trained as positives), "
                    f"{neg_counts['ambiguous']} ambiguous (as above), {neg_counts['not']} not.")
        if args.toxicchat_jailbreaks:
            rw.text(f"ToxicChat's human-flagged jailbreak prompts added as positives: {len(extra['train'])} train, "
                    f"{len(extra['val'])} val (`toxicchat_jailbreaks`).")
        rw.table(rows, name="views", caption="Test split under the benchmark's labels and under the policy's")
        vm = res.card.get("metrics", {}).get("val", {}).get("jailbreak", {})
        if vm:
            rw.text(f"Val (policy labels, out of fold): F1 {vm.get('f1', float('nan')):.3f}, "
                    f"R@1%FPR {vm.get('recall_at_1pct_fpr', float('nan')):.3f}.")
        rw.metrics({metric_name(r["trained on"], r["test labels"], k): r[k] for r in rows for k in ("F1", "R@1%FPR")
                    if isinstance(r[k], (int, float))})
    print(rw.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
