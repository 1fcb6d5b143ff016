"""Shared plumbing for the experiment programs in ``experiments/`` (not part of the library).

Every experiment is a script ``experiments/exp_<name>.py`` with ``main(argv=None) -> int``. It calls
the library, logs one MLflow run in the ``safecascade-experiments`` experiment (the embedded SQLite
store unless ``MLFLOW_TRACKING_URI`` is set) and writes ``experiments/results/<name>.md`` plus its
plots next to it. ``experiments/run_all.py`` (``make experiments``) runs them all and rebuilds
``experiments/results/README.md``.

    from experiments.common import ResultWriter, results_dir

    with ResultWriter("reasoning_effort", params={"n": 200}) as rw:
        rw.table(rows, columns=[...])          # Markdown table (also logged as a CSV artifact)
        rw.figure(fig, "latency.png")          # matplotlib figure saved next to the Markdown
        rw.metrics({"f1_low": 0.71})
        rw.text("Notes ...")
"""

from __future__ import annotations

import csv
import io
import logging
import subprocess
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger("experiments")

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "safecascade-experiments"


def results_dir() -> Path:
    """``experiments/results`` (created on demand)."""
    p = ROOT / "experiments" / "results"
    p.mkdir(parents=True, exist_ok=True)
    return p


def work_dir(*parts: str) -> Path:
    """Scratch / score-cache space: ``experiments/results/_work/...`` (gitignored)."""
    p = results_dir().joinpath("_work", *parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


def git_commit() -> str:
    """The commit the results come from (``+dirty`` when the tree has uncommitted changes)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def fmt(v: Any, digits: int = 3) -> str:
    """Format a table cell: floats to ``digits`` places, None as ``–``."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n (scipy's ``binomtest``); (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """A GitHub Markdown table of ``rows`` (dicts); ``columns`` fixes order and selection."""
    if not rows:
        return "_(no rows)_\n"
    cols = list(columns or rows[0].keys())
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(fmt(r.get(c), digits) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


class ResultWriter(AbstractContextManager):
    """Collects one experiment's Markdown, tables, figures and metrics; logs an MLflow run on exit.

    The Markdown file starts with a title, the commit, the date and the parameters. MLflow logging
    is skipped (with a warning) if mlflow is not installed; the Markdown is always written.
    """

    def __init__(self, name: str, *, title: str | None = None, params: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.title = title or name.replace("_", " ").capitalize()
        self.params = dict(params or {})
        self.parts: list[str] = []
        self.tables: dict[str, str] = {}
        self.files: list[Path] = []
        self._metrics: dict[str, float] = {}
        self._t0 = time.time()

    # -- content ---------------------------------------------------------------------------------
    def text(self, md: str) -> None:
        self.parts.append(md.rstrip() + "\n")

    def table(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *, name: str = "table",
              caption: str | None = None, digits: int = 3) -> str:
        md = markdown_table(rows, columns, digits)
        if caption:
            self.parts.append(f"**{caption}**\n")
        self.parts.append(md)
        buf = io.StringIO()
        cols = list(columns or (rows[0].keys() if rows else []))
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        self.tables[name] = buf.getvalue()
        return md

    def figure(self, fig: Any, filename: str, *, caption: str = "") -> Path:
        path = results_dir() / f"{self.name}_{filename}" if not filename.startswith(self.name) else results_dir() / filename
        fig.savefig(path, dpi=110, bbox_inches="tight")
        try:
            import matplotlib.pyplot as plt

            plt.close(fig)
        except ImportError:  # pragma: no cover
            pass
        self.files.append(path)
        self.parts.append(f"![{caption or path.stem}]({path.name})\n")
        return path

    def metrics(self, values: Mapping[str, float]) -> None:
        self._metrics.update({k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and v == v})

    # -- output ----------------------------------------------------------------------------------
    @property
    def markdown_path(self) -> Path:
        return results_dir() / f"{self.name}.md"

    def render(self) -> str:
        head = [f"# {self.title}\n", f"Commit `{git_commit()}`, written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                f"{time.time() - self._t0:.0f} s.\n"]
        if self.params:
            head.append("Parameters: " + ", ".join(f"`{k}={v}`" for k, v in self.params.items()) + "\n")
        return "\n".join(head + self.parts)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            return False
        self.markdown_path.write_text(self.render(), encoding="utf-8")
        log.info("wrote %s", self.markdown_path)
        self._log_mlflow()
        return False

    def _log_mlflow(self) -> None:
        try:
            from safecascade.mlflow_store import configured_mlflow, experiment_id

            mlflow = configured_mlflow()
        except ImportError:
            log.warning("mlflow not installed: %s not logged to MLflow", self.name)
            return
        with mlflow.start_run(experiment_id=experiment_id(mlflow, EXPERIMENT), run_name=self.name):
            mlflow.log_params({k: str(v)[:500] for k, v in self.params.items()})
            mlflow.set_tag("git_commit", git_commit())
            if self._metrics:
                mlflow.log_metrics(self._metrics)
            mlflow.log_artifact(str(self.markdown_path))
            for p in self.files:
                mlflow.log_artifact(str(p))
            for tname, body in self.tables.items():
                mlflow.log_text(body, f"{self.name}_{tname}.csv")
