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

Both models are scored on the whole test split, fp32, at calibrated probability 0.5, under the
benchmark's labels and under the policy's (the test texts relabelled by the audit).

    python -m experiments.exp_policy_labels [--finetune] [--out DIR] [--quick]

Results: ``experiments/results/policy_labels.md`` (``policy_labels_finetune.md`` with ``--finetune``).
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

from experiments.common import ROOT, ResultWriter, work_dir

TRAINVAL_AUDIT = ROOT / "experiments" / "data" / "jailbreak_trainval_audit.csv"
POLICY_TARGET = {"real": 1.0, "not": 0.0, "ambiguous": 0.5}


def policy_rows(examples: Sequence[Any], verdicts: Mapping[str, str]) -> tuple[list[Any], list[dict[str, Any]]]:
    """Split ``examples`` into hard-labelled examples and soft replay rows by the policy's verdicts.

    Negatives pass unchanged; a positive takes its verdict's target (``real`` 1, ``not`` 0) and an
    ``ambiguous`` one becomes a replay row ``{"text", "jailbreak": 0.5}``. A positive without a
    verdict is an error.
    """
    hard, soft = [], []
    for e in examples:
        if e.label != 1:
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
    ap.add_argument("--out", default=None, help="artifact dir for the policy-labelled model (default: a work dir)")
    ap.add_argument("--quick", action="store_true", help="accepted for run_all; the experiment is the same either way")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from experiments.exp_label_audit import VIEWS, metric_name, read_audit, split_verdicts, view_metrics
    from safecascade.tiers.fast import FastTier
    from safecascade.training.datasets import load_benchmark
    from safecascade.training.fast_train import DEFAULT_RECIPE, TrainConfig, ensure_default_models, train_fast

    train, val, test = (load_benchmark("jailbreak", s) for s in ("train", "val", "test"))
    tv = read_audit(TRAINVAL_AUDIT)
    want = {e.id for e in (*train, *val) if e.label == 1}
    if set(tv) != want:
        raise SystemExit(f"{TRAINVAL_AUDIT}: covers {len(tv)} ids, the train and val positives are {len(want)}")
    train_hard, train_soft = policy_rows(train, tv)
    val_hard, _ = policy_rows(val, tv)  # ambiguous val positives are left out (calibration needs hard labels)
    default_dir = ensure_default_models(kinds=("fast",))["fast"]
    default_card = json.loads((default_dir / "card.json").read_text(encoding="utf-8"))
    recipe = dict(DEFAULT_RECIPE["fast"], int8=False)
    if not args.finetune:
        recipe.update(finetune=False, encoder=str(default_card["encoder"].get("path") or "default"))
    cfg = TrainConfig(kind="fast", **recipe)
    out = Path(args.out) if args.out else work_dir("policy_labels", "fast-policy" + ("-ft" if args.finetune else ""))
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
    counts = {v: sum(x == v for x in tv.values()) for v in POLICY_TARGET}
    with ResultWriter("policy_labels" + ("_finetune" if args.finetune else ""),
                      title="The fast tier trained on the policy's labels" + (" (encoder tuned on them too)" if args.finetune else ""),
                      params={"finetune": args.finetune, "encoder": cfg.encoder, "out": str(out),
                              "train_rows": len(train_hard) + len(train_soft), "val_rows": len(val_hard)}) as rw:
        rw.text(f"Train and val positives by the policy: {counts['real']} real, {counts['not']} not (trained as negatives), "
                f"{counts['ambiguous']} ambiguous (soft target 0.5 in train, left out of val). Method and caveats in the "
                "program's docstring; both models fp32, calibrated probability 0.5, the whole test split.")
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
