"""Measure every heuristic rule on the jailbreak benchmark and (optionally) store the result.

    python -m safecascade.training.rule_precision                 # print the table (train split)
    python -m safecascade.training.rule_precision --write         # ... and write precision/support
                                                                  #     into models/heuristic_rules.yaml
    python -m safecascade.training.rule_precision --evaluate test # also: the tier alone on test

For each rule: matches (texts of the split it fires on, plain or decoded), TP, FP,
precision = TP / matches, and whether it "decides alone" (precision >= --block-above and
support >= the file's ``min_support``). ``--write`` edits only the ``precision:``, ``support:``
and ``measured_on:`` lines of the YAML, so comments and layout are kept.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import yaml
from tqdm import tqdm

from safecascade.tiers.heuristic import HeuristicTier, RuleScanner
from safecascade.tiers.heuristic_rules import RuleSet, default_rules_path, load_rules, parse_rules
from safecascade.training.datasets import load_benchmark
from safecascade.training.policy_data import PARAPHRASE, PART, POLICIES, load_policy_benchmark
from safecascade.training.train_rows import example_labels

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RuleStats:
    """How one rule did on a labelled split."""

    rule_id: str
    family: str
    matches: int
    tp: int
    fp: int

    @property
    def precision(self) -> float | None:
        return self.tp / self.matches if self.matches else None


@dataclass(frozen=True, kw_only=True)
class TierMetrics:
    """The heuristic tier alone on a split, at one operating point."""

    name: str
    n: int
    positives: int
    tp: int
    fp: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / self.positives if self.positives else 0.0

    @property
    def fpr(self) -> float:
        neg = self.n - self.positives
        return self.fp / neg if neg else 0.0


def load_split(benchmark: str, split: str) -> list[tuple[str, int]]:
    """(text, label) pairs of a benchmark split, through ``safecascade.training.datasets``."""
    return [(ex.text, int(ex.label)) for ex in load_benchmark(benchmark, split)]


def scan_all(tier: HeuristicTier | RuleScanner, texts: Sequence[str], *, desc: str = "scan") -> list[tuple[str, ...]]:
    """Matched rule ids for each text (``tier`` is anything with ``scan(text)``)."""
    out = []
    for t in tqdm(texts, desc=desc, unit="text", leave=False, disable=None):
        out.append(tuple(m.rule.id for m in tier.scan(t).matches))
    return out


def measure(ruleset: RuleSet, matched: Sequence[tuple[str, ...]], labels: Sequence[int],
            labels_by_policy: dict[str, Sequence[int]] | None = None) -> list[RuleStats]:
    """Per-rule matches / TP / FP from precomputed scans. With ``labels_by_policy`` (the
    multi-policy benchmark: -1 = not labelled for that policy), each rule is counted against its
    own policy's labels, on the texts labelled for it."""
    tp = {r.id: 0 for r in ruleset.rules}
    fp = {r.id: 0 for r in ruleset.rules}
    policy_of = {r.id: r.policy for r in ruleset.rules}
    for k, (ids, y) in enumerate(zip(matched, labels)):
        for rid in ids:
            if labels_by_policy is not None:
                y = labels_by_policy.get(policy_of[rid], [-1] * len(matched))[k]
                if y < 0:
                    continue
            if y == 1:
                tp[rid] += 1
            else:
                fp[rid] += 1
    return [RuleStats(rule_id=r.id, family=r.family, matches=tp[r.id] + fp[r.id], tp=tp[r.id], fp=fp[r.id]) for r in ruleset.rules]


def with_measurements(ruleset: RuleSet, stats: Iterable[RuleStats]) -> RuleSet:
    """The rule set with ``precision`` / ``support`` replaced by ``stats`` (for scoring other splits)."""
    by_id = {s.rule_id: s for s in stats}
    rules = tuple(replace(r, precision=by_id[r.id].precision, support=by_id[r.id].matches) if r.id in by_id else r for r in ruleset.rules)
    return replace(ruleset, rules=rules)


def markdown_table(ruleset: RuleSet, stats: Sequence[RuleStats], *, block_above: float, alone_from: RuleSet | None = None) -> str:
    """Markdown table: rule, family, matches, TP, FP, precision, decides alone.

    "decides alone" is judged from ``stats`` themselves, or from ``alone_from`` (a rule set whose
    stored measurements are used instead, e.g. the train measurement when tabulating test).
    """
    measured = alone_from if alone_from is not None else with_measurements(ruleset, stats)
    by_id = {r.id: r for r in measured.rules}
    lines = ["| rule | family | matches | TP | FP | precision | decides alone |", "|---|---|---:|---:|---:|---:|---|"]
    for s in stats:
        prec = "-" if s.precision is None else f"{s.precision:.3f}"
        alone = "yes" if measured.effective_precision(by_id[s.rule_id]) >= block_above else "no"
        lines.append(f"| {s.rule_id} | {s.family} | {s.matches} | {s.tp} | {s.fp} | {prec} | {alone} |")
    return "\n".join(lines)


def tier_metrics(tier: HeuristicTier, matched: Sequence[tuple[str, ...]], labels: Sequence[int], *, block_above: float) -> list[TierMetrics]:
    """Tier-alone precision / recall at 'decides alone' (score >= block_above) and 'any rule'."""
    ep = tier.ruleset.effective_precision
    by_id = {r.id: r for r in tier.ruleset.rules}
    scores = [max((ep(by_id[i]) for i in ids), default=0.0) for ids in matched]
    out = []
    for name, flag in ((f"blocks alone (score >= {block_above})", lambda s: s >= block_above), ("any rule matches (score > 0)", lambda s: s > 0)):
        tp = sum(1 for s, y in zip(scores, labels) if flag(s) and y == 1)
        fp = sum(1 for s, y in zip(scores, labels) if flag(s) and y == 0)
        out.append(TierMetrics(name=name, n=len(labels), positives=sum(labels), tp=tp, fp=fp))
    return out


def metrics_table(rows: Sequence[TierMetrics], *, split: str) -> str:
    lines = [f"| heuristic tier alone on {split} | n | positives | TP | FP | precision | recall | FPR |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in rows:
        lines.append(f"| {m.name} | {m.n} | {m.positives} | {m.tp} | {m.fp} | {m.precision:.3f} | {m.recall:.3f} | {m.fpr:.4f} |")
    return "\n".join(lines)


_ID_LINE = re.compile(r"^\s*-\s+id:\s*['\"]?([^'\"\s#]+)")
_FIELD_LINE = re.compile(r"^(\s+)(precision|support):.*$")
_MEASURED_LINE = re.compile(r"^measured_on:.*$")


def rewrite_measurements(text: str, stats: Sequence[RuleStats], *, measured_on: str | None) -> str:
    """Return the rules YAML ``text`` with each rule's ``precision`` / ``support`` lines replaced.

    Rules lacking those lines get them inserted right after their ``id`` line. Only those lines
    and the top-level ``measured_on`` line change.
    """
    by_id = {s.rule_id: s for s in stats}
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    current: str | None = None
    seen_fields: dict[str, set[str]] = {}
    id_line_index: dict[str, tuple[int, str]] = {}
    for line in lines:
        m = _ID_LINE.match(line)
        if m:
            current = m.group(1)
            seen_fields[current] = set()
            indent = " " * (len(line) - len(line.lstrip()) + 2)
            out.append(line)
            id_line_index[current] = (len(out) - 1, indent)
            continue
        f = _FIELD_LINE.match(line)
        if f and current in by_id and len(f.group(1)) >= 2:
            s = by_id[current]
            key = f.group(2)
            seen_fields[current].add(key)
            value = ("null" if s.precision is None else f"{s.precision:.4f}") if key == "precision" else str(s.matches)
            out.append(f"{f.group(1)}{key}: {value}\n")
            continue
        if _MEASURED_LINE.match(line) and measured_on is not None:
            out.append(f"measured_on: {yaml.safe_dump(measured_on, default_style=None).splitlines()[0]}\n")
            continue
        out.append(line)
    # insert missing fields (walk backwards so indices stay valid)
    for rid, (idx, indent) in sorted(id_line_index.items(), key=lambda kv: -kv[1][0]):
        if rid not in by_id:
            continue
        s = by_id[rid]
        missing = [k for k in ("precision", "support") if k not in seen_fields.get(rid, set())]
        ins = []
        for k in missing:
            value = ("null" if s.precision is None else f"{s.precision:.4f}") if k == "precision" else str(s.matches)
            ins.append(f"{indent}{k}: {value}\n")
        out[idx + 1 : idx + 1] = ins
    new = "".join(out)
    if measured_on is not None and not any(_MEASURED_LINE.match(x) for x in new.splitlines()):
        new = f"measured_on: {yaml.safe_dump(measured_on).splitlines()[0]}\n" + new
    return new


def write_measurements(path: Path, stats: Sequence[RuleStats], *, measured_on: str | None) -> None:
    """Rewrite ``path`` in place (atomically), after checking the result still validates."""
    text = path.read_text(encoding="utf-8")
    new = rewrite_measurements(text, stats, measured_on=measured_on)
    parsed = parse_rules(yaml.safe_load(new), path=str(path))
    got = {r.id: r.support for r in parsed.rules}
    for s in stats:
        if got.get(s.rule_id) != s.matches:
            raise RuntimeError(f"rewriting {path} lost the measurement of rule {s.rule_id}; file left unchanged")
    fd, tmp = tempfile.mkstemp(prefix=".heuristic_rules.", suffix=".yaml", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m safecascade.training.rule_precision", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", type=Path, default=None, help="rules YAML (default: the shipped models/heuristic_rules.yaml)")
    ap.add_argument("--benchmark", default="jailbreak")
    ap.add_argument("--split", default="train", help="split to measure precision on (default train)")
    ap.add_argument("--block-above", type=float, default=0.98, help="the heuristic tier's block_above band edge")
    ap.add_argument("--write", action="store_true", help="write precision/support into the rules file")
    ap.add_argument("--only-policy", default=None, help="measure / write only the rules of this policy (e.g. prompt_injection "
                                                        "with --benchmark policies; the other rules keep their measurements)")
    ap.add_argument("--evaluate", metavar="SPLIT", default=None, help="also report the tier alone on this split, scored with the new measurements")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    path = args.rules or default_rules_path()
    ruleset = load_rules(path)
    # check_gates: also run each rule where its keywords are absent, to prove they are a safe pre-filter
    scanner = RuleScanner(ruleset, check_gates=True)
    by_policy = None
    if args.benchmark == "policies":  # each rule against its own policy's labels (training/policy_data.py)
        # template paraphrases and documents' parts (train only) are derived from other rows: they would count one text twice
        ex = [e for e in load_policy_benchmark(args.split) if not e.source.startswith((PARAPHRASE, PART))]
        texts = [e.text for e in ex]
        by_policy = {p: example_labels(ex, p, first_policy=POLICIES[0]) for p in POLICIES}
        labels = [max(v) for v in zip(*by_policy.values())]
    else:
        data = load_split(args.benchmark, args.split)
        texts, labels = [t for t, _ in data], [y for _, y in data]
    matched = scan_all(scanner, texts, desc=f"{args.benchmark}/{args.split}")
    stats = measure(ruleset, matched, labels, by_policy)
    if args.only_policy:
        keep = {r.id for r in ruleset.rules if r.policy == args.only_policy}
        stats = [s for s in stats if s.rule_id in keep]
    print(f"Rule precision on {args.benchmark}/{args.split}: {len(texts)} texts, {sum(labels)} positive; "
          f"min_support={ruleset.min_support}, block_above={args.block_above}\n")
    print(markdown_table(ruleset, stats, block_above=args.block_above))
    if scanner.gate_misses:
        print(f"\nWARNING: keywords skipped real matches (fix the rules' keywords): {scanner.gate_misses}")
    else:
        print("\nkeyword pre-filters: 0 gate misses")
    measured_tier = HeuristicTier(name="heuristic", policies=ruleset.policies, ruleset=with_measurements(ruleset, stats))
    print()
    print(metrics_table(tier_metrics(measured_tier, matched, labels, block_above=args.block_above), split=f"{args.benchmark}/{args.split}"))
    if args.write:
        measured_on = f"{args.benchmark}/{args.split} ({len(texts)} texts, {sum(labels)} positive)"
        write_measurements(Path(path), stats, measured_on=None if args.only_policy else measured_on)
        print(f"\nwrote precision/support of {len(stats)} rules to {path}")
    if args.evaluate:
        ev = load_split(args.benchmark, args.evaluate)
        ev_texts, ev_labels = [t for t, _ in ev], [y for _, y in ev]
        ev_matched = scan_all(measured_tier, ev_texts, desc=f"{args.benchmark}/{args.evaluate}")
        print()
        print(metrics_table(tier_metrics(measured_tier, ev_matched, ev_labels, block_above=args.block_above), split=f"{args.benchmark}/{args.evaluate}"))
        ev_stats = measure(ruleset, ev_matched, ev_labels)
        print(f"\nPer-rule on {args.benchmark}/{args.evaluate} (decides alone = by the train measurement):\n")
        print(markdown_table(ruleset, ev_stats, block_above=args.block_above, alone_from=measured_tier.ruleset).replace(
            "| decides alone |", "| decides alone (train) |"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
