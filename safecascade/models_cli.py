"""``safecascade models verify|build``: check the shipped default models, or rebuild them (CLI layer).

``verify`` checks every shipped file against its provenance sha256 (:mod:`safecascade.shipped`);
``build`` rebuilds exactly the shipped set (:func:`safecascade.training.ship_models.ship`, the
train extra: torch, sentence-transformers; slow).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safecascade.shipped import SHIPPED_NAMES, models_root, verify_all
from safecascade.training.ship_models import ship


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``safecascade models``."""
    sub = parser.add_subparsers(dest="models_cmd", required=True)
    v = sub.add_parser("verify", help="check the shipped default models against their provenance sha256s")
    v.add_argument("--root", default=None, help="models directory (default: the installed package's)")
    b = sub.add_parser("build", help="rebuild exactly the shipped set into models/ (needs the train extra; slow)")
    b.add_argument("--out", default=None, help="models directory to write (default: the installed package's)")
    b.add_argument("--note", default="", help="the changelog line's note")
    b.add_argument("--bits", type=int, default=8, choices=(8, 16), help="fast tier embedding table storage (8)")
    b.add_argument("--kinds", nargs="+", default=None, choices=sorted(SHIPPED_NAMES),
                   help="rebuild only these shipped models (default: all)")


def run(args: argparse.Namespace) -> int:
    """Run ``safecascade models verify`` (exit 1 when a model fails) or ``safecascade models build``."""
    if args.models_cmd == "verify":
        bad = 0
        for d, status in verify_all(args.root):
            print(f"{d}: {status}")
            bad += not status.startswith("ok")
        return 1 if bad else 0
    ship(Path(args.out) if args.out else models_root(), bits=args.bits, note=args.note,
         kinds=tuple(args.kinds) if args.kinds else tuple(SHIPPED_NAMES))
    return 0
