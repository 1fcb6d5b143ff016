"""Letter case and the multilingual tier's heads: each val text scored as written and lower-cased.

    python -m experiments.exp_multilingual_case [--model DIR ...] [--max-chars 1000] [--limit N]

The static and the fast tier read text lower-cased; the multilingual tier's encoder (USE-multilingual
v3) reads case. Per policy and per heads directory (default: the shipped ``models/multilingual-default``;
pass a checkout's directory to compare heads side by side in one run), on the val split's labelled
texts (their first ``--max-chars`` characters, as the default reads them): ROC-AUC of the heads'
score on the texts as written and lower-cased, and recall at the threshold that flags 1% of the
cased negatives (R@1%FPR), with the lower-cased negatives' flag rate at that threshold. Writes
``experiments/results/multilingual_case.md`` (docs/policies.md, "Letter case").
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from experiments.common import ROOT, ResultWriter
from safecascade.tiers.multilingual import MultilingualTier
from safecascade.training.metrics import roc_auc
from safecascade.training.policy_data import training_split

log = logging.getLogger(__name__)


def case_rows(model_dir: Path, texts: Sequence[str], labels: Sequence[dict[str, int]]) -> list[dict[str, Any]]:
    """One row per policy of the heads in ``model_dir`` (one whose labelled texts hold both classes):
    the figures above, on ``texts``."""
    tier = MultilingualTier(model_dir=model_dir, threads=2)
    cased = tier.encoder.embed(list(texts), progress=True)
    lower = tier.encoder.embed([t.lower() for t in texts], progress=True)
    rows: list[dict[str, Any]] = []
    for pol in tier.policies:
        idx = [i for i, lab in enumerate(labels) if pol in lab]
        y = np.array([labels[i][pol] for i in idx])
        if len(set(y.tolist())) < 2:  # no ranking to measure
            continue
        sc = np.clip(tier.heads[pol](cased[idx]), 0.0, 1.0)
        sl = np.clip(tier.heads[pol](lower[idx]), 0.0, 1.0)
        thr = float(np.quantile(sc[y == 0], 0.99))
        rows.append({"heads": str(model_dir), "policy": pol, "n": len(idx), "positives": int(y.sum()),
                     "auc_as_written": roc_auc(y, sc), "auc_lower_cased": roc_auc(y, sl),
                     "R@1%FPR_as_written": float((sc[y == 1] > thr).mean()),
                     "R@1%FPR_lower_cased": float((sl[y == 1] > thr).mean()),
                     "negatives_flagged_lower_cased": float((sl[y == 0] > thr).mean())})
        log.info("%s %s: %s", model_dir, pol, {k: v for k, v in rows[-1].items() if k not in ("heads", "policy")})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", type=Path, default=[ROOT / "models" / "multilingual-default"],
                    help="multilingual heads directories, measured side by side")
    ap.add_argument("--max-chars", type=int, default=1000)
    ap.add_argument("--limit", type=int, default=None, help="at most N val texts (quick runs)")
    ap.add_argument("--quick", action="store_true", help="the first 600 val texts (run_all's smoke run)")
    args = ap.parse_args(argv)
    if args.quick and args.limit is None:
        args.limit = 600
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    val = training_split("val")[: args.limit]
    texts = [e.text[: args.max_chars] for e in val]
    labels = [dict(e.labels) for e in val]
    rows = [r for d in args.model for r in case_rows(d, texts, labels)]
    with ResultWriter("multilingual_case", params={"models": ",".join(map(str, args.model)), "max_chars": args.max_chars,
                                                   "limit": args.limit}) as rw:
        rw.text(__doc__.split("\n\n", 2)[2])
        rw.table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
