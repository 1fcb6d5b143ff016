"""The evasion suite on the default router: block rate per transform next to the plain rate.

    python -m experiments.exp_evasion [--config PATH] [--seeds 60]

Seeds are held-apart attacks: positives of the multi-policy benchmark's **test** split, per policy
(jailbreak, prompt_injection without BIPIA's already-embedded documents, harmful_request), a fixed
sample of ``--seeds`` each. Benign filler for padding and surrounding content: the test split's
Alpaca instructions that the router allows on their own (``filler_alone_blocked`` checks the
padding of each size alone). Each transform of
:mod:`safecascade.training.evasion` is applied to every seed and the router classifies the result;
the table gives the block rate per policy and overall, the gap to the plain rate, and the mean CPU
time per text. Writes ``experiments/results/evasion.md`` and logs an MLflow run.
"""

from __future__ import annotations

import argparse
import logging
import time

from experiments.common import ResultWriter
from safecascade.router.cascade import Router
from safecascade.training.datasets import split_hash
from safecascade.training.evasion import TRANSFORMS, apply
from safecascade.training.policy_data import POLICIES, load_policy_benchmark, real_user_benign

log = logging.getLogger("experiments.evasion")


def seeds_per_policy(n: int) -> dict[str, list[str]]:
    """``n`` test-split attacks per policy (fixed by a seeded hash; short enough to transform)."""
    test = load_policy_benchmark("test")
    out: dict[str, list[str]] = {}
    for pol in POLICIES:
        pos = [e for e in test if e.labels.get(pol) == 1 and e.source != "bipia" and len(e.text) <= 4000]
        pos.sort(key=lambda e: split_hash(e.text, salt="evasion-seeds"))
        out[pol] = [e.text for e in pos[:n]]
    return out


def filler_text(router: Router) -> str:
    """Benign filler: the test split's Alpaca instructions that the router allows on their own,
    joined by newlines (a filler the router blocks would make every padded text look caught)."""
    alpaca = [e.text for e in load_policy_benchmark("test") if e.source == "alpaca"][:1500]
    allowed = [t for t, d in zip(alpaca, router.classify_batch(alpaca)) if d.action == "allow"]
    return "\n".join(allowed)


def run(config: str | None, n: int, transforms: list[str]) -> list[dict[str, object]]:
    router = Router.load(config)
    seeds = seeds_per_policy(n)
    filler = filler_text(router)
    rows: list[dict[str, object]] = []
    plain: dict[str, float] = {}
    for name in transforms:
        row: dict[str, object] = {"transform": name}
        blocked_all, total = 0, 0
        t0 = time.process_time()
        for pol in POLICIES:
            texts = [apply(name, s, filler) for s in seeds[pol]]
            ds = router.classify_batch(texts)
            b = sum(d.action == "block" for d in ds)
            row[pol] = b / max(1, len(ds))
            blocked_all += b
            total += len(ds)
        row["all"] = blocked_all / max(1, total)
        row["cpu_ms_per_text"] = 1000 * (time.process_time() - t0) / max(1, total)
        if name.startswith("pad_"):  # control: the padding alone must be allowed, or the row means nothing
            row["filler_alone_blocked"] = float(router.classify(apply(name, "", filler)).action == "block")
        if name == "plain":
            plain = {k: float(row[k]) for k in (*POLICIES, "all")}  # type: ignore[arg-type]
        row["gap_points"] = 100 * (float(row["all"]) - plain.get("all", float(row["all"])))  # type: ignore[arg-type]
        rows.append(row)
        log.info("%-16s %s", name, {k: round(float(v), 3) for k, v in row.items() if k != "transform"})  # type: ignore[arg-type]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="router config (default: the embedded default)")
    ap.add_argument("--seeds", type=int, default=60, help="attacks per policy")
    ap.add_argument("--transforms", nargs="*", default=None, help=f"subset of: {', '.join(TRANSFORMS)}")
    ap.add_argument("--name", default="evasion", help="results page (experiments/results/NAME.md; a subset run may keep the full table)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = args.transforms or list(TRANSFORMS)
    if "plain" not in names:
        names = ["plain", *names]
    rows = run(args.config, args.seeds, names)
    with ResultWriter(args.name, title="Evasion", params={"seeds_per_policy": args.seeds, "config": args.config or "default"}) as rw:
        rw.text(__doc__.split("\n\n", 2)[2])
        rw.table(rows, columns=["transform", *POLICIES, "all", "gap_points", "filler_alone_blocked", "cpu_ms_per_text"])
        worst = min(rows, key=lambda r: float(r["gap_points"]))  # type: ignore[arg-type]
        rw.metrics({"plain_block_rate": float(rows[0]["all"]), "worst_gap_points": float(worst["gap_points"])})  # type: ignore[arg-type]
        rw.text(f"Worst transform: {worst['transform']} ({float(worst['gap_points']):+.1f} points against plain).")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
