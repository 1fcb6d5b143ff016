"""The ``safecascade`` command line. Each subcommand lives in a module exposing
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when needed."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from safecascade.router.cascade import Router

# name -> (module, one-line help). Modules must be cheap to import (heavy imports inside run()).
COMMANDS: dict[str, tuple[str, str]] = {
    "classify": ("safecascade.cli", "classify a text (or '-' for stdin) and print the Decision"),
    "eval": ("safecascade.training.evaluate", "evaluate a router on a benchmark split (JSON + Markdown report)"),
    "train": ("safecascade.training.train_cli", "train the fast or static tier from labelled data and logged verdicts"),
    "export": ("safecascade.training.train_cli", "export a trained fast/static tier as ONNX + card"),
    "demo": ("safecascade.demo", "evaluate the default cascade on the benchmark's whole test split, then the llama.cpp stand-in path"),
    "models": ("safecascade.models_cli", "the shipped default models: verify (sha256 against provenance) | build (make models)"),
    "serve": ("safecascade.router.serve_cli", "run the HTTP service"),
    "verdicts": ("safecascade.router.verdict_log_cli", "read a verdict log: count its rows | export a tier's logged scores as the replay-tier CSV"),
    "tune": ("safecascade.training.tuning.tune_cli", "tune escalation bands on a cost / F1 Pareto front (MLflow run, tuned router YAML)"),
    "retrain": ("safecascade.training.retrain", "retrain the fast tier from the verdict log; promote in MLflow only if it does not regress"),
    "policy-test": ("safecascade.training.policy_checks_cli", "A/B a policy edit (McNemar), ablate rules, sweep length, detect regressions vs a stored result"),
    "export-sft": ("safecascade.training.export_sft", "write logged safeguard verdicts as harmony JSONL for fine-tuning gpt-oss-safeguard"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``classify``."""
    parser.add_argument("text", help="text to classify, or '-' to read stdin")
    parser.add_argument("--config", default=None, help="router YAML or models:/name@alias (default: embedded)")
    parser.add_argument("--json", action="store_true", help="print the full Decision as JSON")


def run(args: argparse.Namespace) -> int:
    """Run ``classify``."""
    text = sys.stdin.buffer.read() if args.text == "-" else args.text
    router = Router.load(args.config)
    try:
        d = router.classify(text)
    finally:
        router.close()
    if args.json:
        print(json.dumps(d.to_dict(), indent=2, ensure_ascii=False))
    else:
        scores = ", ".join(f"{k}={v.score:.3f}" if v.score is not None else f"{k}=n/a" for k, v in d.policies.items())
        rules = f" rules={','.join(d.rule_ids)}" if d.rule_ids else ""
        subs = [f"{k}/{s}" for k, v in d.policies.items() if v.flagged for s in v.sub_categories]
        found = f" sub-categories={','.join(subs)}" if subs else ""
        print(f"{d.action} (tier={d.tier}, reason={d.reason}, {scores}{rules}{found}, {d.latency_ms:.1f} ms)")
    return 1 if d.flagged else 0


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safecascade", description="Policy-following moderation cascade.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            mod = importlib.import_module(module)
            adder = getattr(mod, f"add_{name}_arguments", None) or mod.add_arguments
            adder(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    only = next((a for a in argv if a in COMMANDS), None)
    args = build_parser(only).parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mod = importlib.import_module(COMMANDS[args.command][0])
    runner = getattr(mod, f"run_{args.command}", None) or mod.run
    try:
        return int(runner(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        logging.getLogger("safecascade").debug("command failed", exc_info=True)
        print(f"safecascade {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
