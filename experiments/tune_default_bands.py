"""Tune the shipped presets' bands out of sample: twin tiers fit on train only, stored as shipped.

The shipped static and fast tiers are refit on train + val, so their val scores are in-sample.
This script builds twins with the same recipe but heads fit on train only (the fine-tuned encoder
is reused from the cache: it is trained on train only), compacts them exactly as the shipped
files are (:func:`safecascade.training.ship_models.stage_served`), writes twin copies of
``models/default.yaml`` and ``models/with-safeguard.yaml`` that point at them, and runs
``safecascade tune`` on the val split for each:

* ``default`` (no LLM; the fast tier is the last tier): max F1 with at most ``--fast-share`` of
  texts reaching the fast tier, and the fast tier's threshold tuned too;
* ``with-safeguard``: ``target-escalation --safeguard-share`` (the safeguard's published
  confusion matrix assumed, as ``safecascade tune`` does without recorded verdicts).

Copy the chosen bands and threshold (not the model paths) into the shipped YAMLs.

    python -m experiments.tune_default_bands --work /tmp/twins
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import yaml

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]


def _sh(cmd: list[str]) -> None:
    log.info("$ %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def build_twins(work: Path, bits: int) -> dict[str, Path]:
    from safecascade.training.ship_models import stage_served

    out = {}
    for kind in ("static", "fast"):
        built, served = work / f"{kind}-train", work / f"{kind}-served"
        if not (built / "card.json").is_file():
            _sh([sys.executable, "-m", "safecascade.cli", "-v", "train", kind, "--fit-on", "train", "--out", str(built), "--no-mlflow"])
        if not (served / "card.json").is_file():
            stage_served(kind, built, served, bits)
        out[kind] = served
    return out


def twin_config(preset: str, twins: dict[str, Path], work: Path) -> Path:
    data = yaml.safe_load((ROOT / "models" / f"{preset}.yaml").read_text(encoding="utf-8"))
    for t in data["tiers"]:
        if t["type"] in twins:
            t["options"] = {**t.get("options", {}), "model": str(twins[t["type"]])}
    path = work / f"twin-{preset}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/safecascade-twins", help="where the twins and tuned YAMLs go")
    ap.add_argument("--fast-share", type=float, default=0.10, help="default preset: max share reaching the fast tier (0.10)")
    ap.add_argument("--safeguard-share", type=float, default=0.02, help="with-safeguard: target escalation share (0.02)")
    ap.add_argument("--bits", type=int, default=8, choices=(8, 16))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    twins = build_twins(work, args.bits)
    runs = {
        "default": ["--objective", "max-f1", str(args.fast_share), "--tune-final-threshold"],
        "with-safeguard": ["--objective", "target-escalation", str(args.safeguard_share)],
    }
    for preset, objective in runs.items():
        cfg = twin_config(preset, twins, work)
        _sh([sys.executable, "-m", "safecascade.cli", "-v", "tune", "--config", str(cfg), *objective,
             "--out", str(work / f"tuned-{preset}.yaml"), "--no-register", "--no-progress"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
