"""``safecascade verdicts``: count the rows of a verdict log, or export a tier's logged scores as
the replay-tier CSV (command-line layer over :class:`~safecascade.router.verdict_reader.VerdictReader`).

    safecascade verdicts count verdicts.db [--tier safeguard]
    safecascade verdicts export verdicts.db out.csv [--tier safeguard] [--any]
"""

from __future__ import annotations

import argparse

from safecascade.router.verdict_reader import VerdictReader


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``safecascade verdicts``."""
    sub = parser.add_subparsers(dest="verdicts_cmd", required=True)
    c = sub.add_parser("count", help="rows in the log")
    c.add_argument("db")
    c.add_argument("--tier")
    e = sub.add_parser("export", help="write the replay-tier CSV of a tier's logged scores")
    e.add_argument("db")
    e.add_argument("out")
    e.add_argument("--tier", default="safeguard")
    e.add_argument("--any", action="store_true", help="rows where the tier scored, not only those it decided")


def run(args: argparse.Namespace) -> int:
    """Run ``safecascade verdicts``."""
    reader = VerdictReader(args.db)
    if args.verdicts_cmd == "count":
        print(reader.count(tier=args.tier))
    else:
        n = reader.export_replay_csv(args.out, tier=args.tier, decided_only=not args.any)
        print(f"{n} rows -> {args.out}")
    return 0
