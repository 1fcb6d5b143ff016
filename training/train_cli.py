"""``safecascade train fast|static|multilingual`` and ``safecascade export`` (cheap to import: numpy and the
project's own modules; torch, sklearn and mlflow load inside ``run_*``)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from safecascade.mlflow_store import download_model_dir
from safecascade.paths import artifact_dir
from safecascade.tiers.fast import FastTier
from safecascade.tiers.onnx_encoder import read_card
from safecascade.tiers.static import StaticTier
from safecascade.training import datasets
from safecascade.training.default_models import DEFAULT_RECIPE
from safecascade.training.fast_train import POLICY_BENCHMARK, train_from_benchmark
from safecascade.training.int8_gate import int8_gate, record_int8
from safecascade.training.mlflow_runs import log_training_run
from safecascade.training.policy_data import training_split
from safecascade.training.train_config import TrainConfig


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``safecascade train``."""
    parser.add_argument("kind", choices=["fast", "static", "multilingual"], help="which tier to train")
    parser.add_argument("--benchmark", default=None,
                        help="labelled benchmark (train split; val calibrates; test reports); default: 'policies', the shipped "
                             "recipe (jailbreak, prompt_injection, harmful_request); a single-policy benchmark (e.g. jailbreak) "
                             "trains that policy's head only")
    parser.add_argument("--from-log", dest="from_log", default=None, metavar="PATH",
                        help="logged safeguard verdicts used as soft targets: the SQLite verdict log (rows stored with "
                             "--store-text) or a replay CSV (text + a probability column per policy)")
    parser.add_argument("--verdict-weight", type=float, default=1.0, help="weight of each verdict row relative to a labelled row")
    parser.add_argument("--out", default=None, help="artifact dir (default: <cache>/models/<kind>-default)")
    parser.add_argument("--head", choices=["lr", "mlp"], default=None, help="head on the embeddings (default: the recipe's, mlp: one hidden layer, torch)")
    parser.add_argument("--calibration", choices=["auto", "platt", "isotonic", "none"], default="auto")
    parser.add_argument("--fit-on", dest="fit_on", choices=["train", "train+val"], default=None,
                        help="train (the shipped recipe): heads on train, val out of sample for calibration, the int8 gate and band "
                             "tuning; train+val: refit the heads on train+val, calibrated on out-of-fold val logits")
    parser.add_argument("--encoder", default="default", help="sentence-transformers model dir (default: bundled all-MiniLM-L6-v2)")
    parser.add_argument("--limit", type=int, default=None, help="use at most N training examples (quick runs)")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                        help="fast tier: also write model.int8.onnx (per-channel dynamic quantisation), kept only if its val F1 "
                             "is < 0.005 below fp32's (on by default for the fast tier)")
    parser.add_argument("--lexical", action=argparse.BooleanOptionalAction, default=True,
                        help="fast tier: stack a hashed word-piece + character n-gram TF-IDF logit with the embedding head")
    parser.add_argument("--lexical-c", type=float, default=30.0, help="inverse regularisation of the lexical block's LR")
    parser.add_argument("--stack-weighted", default="", metavar="POLICY[,POLICY...]",
                        help="fit these policies' stacks on val at the texts' training weights (real user prompts 16x)")
    parser.add_argument("--lowercase-copies", dest="lowercase_copies", action=argparse.BooleanOptionalAction, default=None,
                        help="multilingual tier: also train on each text lower-cased (on in the shipped recipe)")
    parser.add_argument("--finetune", action=argparse.BooleanOptionalAction, default=None,
                        help="SetFit-style contrastive fine-tuning of the encoder on the train split before export "
                             "(fast tier; on by default there: about 3 s a step on 2 cores)")
    parser.add_argument("--finetune-pairs", type=int, default=None,
                        help=f"pairs sampled for fine-tuning (16 per step; default {DEFAULT_RECIPE['fast']['finetune_pairs']})")
    parser.add_argument("--finetune-seq-len", type=int, default=128, help="tokens per window while fine-tuning")
    parser.add_argument("--finetune-max-seconds", type=float, default=None,
                        help=f"wall-clock cap on fine-tuning (default {DEFAULT_RECIPE['fast']['finetune_max_seconds']:.0f}; "
                             "the card records the steps done)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mlflow", action=argparse.BooleanOptionalAction, default=True, help="log the run and register the model")
    parser.add_argument("--no-progress", action="store_true")


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The training config of ``safecascade train``: the default recipe for ``args.kind`` with the
    command line's overrides; a ``--stack-weighted`` policy the recipe does not train is an error."""
    recipe = dict(DEFAULT_RECIPE[args.kind])
    if args.finetune is not None:
        recipe["finetune"] = args.finetune
    if args.int8 is not None:
        recipe["int8"] = args.int8
    if args.lowercase_copies is not None:
        recipe["lowercase_copies"] = args.lowercase_copies
    for key in ("finetune_pairs", "finetune_max_seconds"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    if args.fit_on is not None:
        recipe["fit_on"] = args.fit_on
    if args.benchmark is not None and args.benchmark != recipe.get("benchmark"):
        recipe["benchmark"] = args.benchmark
        recipe["policies"] = (datasets.benchmark_policy(args.benchmark),)  # a single-policy benchmark trains its own policy's head
    if args.head is not None:
        recipe["head"] = args.head
    if args.stack_weighted:
        recipe["stack_weighted"] = tuple(p.strip() for p in args.stack_weighted.split(",") if p.strip())
    return TrainConfig(kind=args.kind, calibration=args.calibration,
                       encoder=args.encoder, limit=args.limit, threads=args.threads,
                       verdict_weight=args.verdict_weight, **recipe,
                       finetune_seq_len=args.finetune_seq_len,
                       lexical=args.lexical, lexical_C=args.lexical_c)


def run_train(args: argparse.Namespace) -> int:
    """Train, write the artifact dir, print metrics, log to MLflow."""
    cfg = train_config_from_args(args)
    out = Path(args.out) if args.out else artifact_dir("models") / f"{args.kind}-default"
    res = train_from_benchmark(cfg, out_dir=out, verdicts=args.from_log, progress=not args.no_progress)
    summary = {"out_dir": str(res.out_dir), "seconds": round(res.seconds, 1),
               "test": {p: {k: m.get(k) for k in ("precision", "recall", "f1", "recall_at_1pct_fpr", "roc_auc")}
                        for p, m in res.metrics.get("test", {}).items()}}
    if "int8" in res.card:
        summary["int8"] = res.card["int8"]
    if args.mlflow:
        summary["mlflow"] = log_training_run(res)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``safecascade export``."""
    parser.add_argument("source", help="artifact dir or models:/safecascade-fast/<version|@alias>")
    parser.add_argument("out", help="directory to write (model.onnx or static.npy + heads, tokenizer.json, card.json)")
    parser.add_argument("--int8", action="store_true", help="also write model.int8.onnx (dynamic per-channel quantisation; fast tier only), kept only if its F1 on the benchmark's val split is < 0.005 below fp32's")


def run_export(args: argparse.Namespace) -> int:
    """Copy a trained tier's artifact dir (validated by loading it) to ``out``."""
    src = args.source
    if src.startswith("models:/"):
        src_dir = download_model_dir(src)
    else:
        src_dir = Path(src)
    card = read_card(src_dir)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"export target {out} exists and is not empty")
    if args.int8 and card["kind"] != "fast":
        raise ValueError("--int8 applies to the fast tier only")
    shutil.copytree(src_dir, out, dirs_exist_ok=True)
    if args.int8:
        cfg = card.get("config", {})
        if cfg.get("fit_on") == "train+val":
            logging.getLogger(__name__).warning(
                "%s was refitted on train+val: its val scores are in sample, so the int8 gate is lenient here; "
                "`safecascade train fast --int8` decides on a train-only twin instead", src_dir)
        bench = cfg.get("benchmark", "jailbreak")
        val = training_split("val") if bench == POLICY_BENCHMARK else datasets.load_benchmark(bench, "val")
        gate = int8_gate(out, val, threads=int(cfg.get("threads", 2)))
        record_int8(card, gate)
        (out / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True), encoding="utf-8")
        print(json.dumps({"int8": gate}, indent=2))
    # load it once so a broken export fails here, not in production
    if card["kind"] == "fast":
        FastTier(model_dir=out).classify(["export check"])
    else:
        StaticTier(model_dir=out).classify(["export check"])
    print(f"exported {card['kind']} tier to {out}")
    return 0
