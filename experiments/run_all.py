"""Run every experiment (``experiments/exp_*.py``) and rebuild ``experiments/results/README.md``.

    python -m experiments.run_all [--only NAME ...] [--skip NAME ...] [--quick]

Each experiment runs as its own process (``python -m experiments.exp_<name>``), so one failure is
reported and the others still run; ``--quick`` is passed through (smaller subsets, for smoke runs).
The exit status is non-zero if any experiment failed.
"""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

from experiments.common import ROOT, git_commit, markdown_table, results_dir

log = logging.getLogger("experiments")


def discover() -> list[str]:
    return sorted(p.stem[len("exp_"):] for p in (ROOT / "experiments").glob("exp_*.py"))


def pages(name: str) -> list[Path]:
    """An experiment's result pages: ``<name>.md``, then its variants' ``<name>_<variant>.md``."""
    res = results_dir()
    main = res / f"{name}.md"
    return ([main] if main.is_file() else []) + sorted(res.glob(f"{name}_*.md"))


def write_index(status: dict[str, dict]) -> None:
    res = results_dir()
    lines = ["# Experiment results\n",
             f"Rebuilt by `make experiments` (`python -m experiments.run_all`) at commit `{git_commit()}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Each page states the commit and parameters it "
             "was produced with; every run is also logged to MLflow (experiment `safecascade-experiments`).\n"]
    rows = []
    for name in discover():
        for md in pages(name) or [res / f"{name}.md"]:
            st = status.get(name, {}) if md.stem == name else {}  # run_all runs the main page's program only
            head = md.read_text(encoding="utf-8").splitlines()[2] if md.is_file() else ""
            m = re.match(r"Commit `([^`]+)`, written ([^,]+),", head)
            rows.append({"experiment": f"[{md.stem}]({md.name})" if md.is_file() else name,
                         "page written": f"{m.group(2)} at `{m.group(1)}`" if m else "–",
                         "this run": st.get("outcome", "not rerun"), "seconds": st.get("seconds")})
    lines.append(markdown_table(rows, ["experiment", "page written", "this run", "seconds"], digits=0))
    for name in discover():
        for md in pages(name):
            lines.append(f"\n---\n\n{md.read_text(encoding='utf-8')}")
    (res / "README.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--skip", nargs="*", default=[])
    ap.add_argument("--quick", action="store_true", help="pass --quick to every experiment (smoke run)")
    ap.add_argument("--index-only", action="store_true", help="only rebuild results/README.md from the existing pages")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.index_only:
        write_index({})
        return 0
    names = [n for n in discover() if (args.only is None or n in args.only) and n not in args.skip]
    status: dict[str, dict] = {}
    for name in names:
        cmd = [sys.executable, "-m", f"experiments.exp_{name}"] + (["--quick"] if args.quick else [])
        log.info("running %s", " ".join(cmd))
        t0 = time.time()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        status[name] = {"outcome": "ok" if rc == 0 else f"failed (rc {rc})", "seconds": round(time.time() - t0)}
        log.info("%s: %s in %d s", name, status[name]["outcome"], status[name]["seconds"])
    write_index(status)
    failed = [n for n, s in status.items() if s["outcome"] != "ok"]
    if failed:
        log.error("failed: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
