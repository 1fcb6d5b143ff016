"""Benchmarks built from the vendored public datasets in ``training/data`` (see its SOURCES.md).

Four benchmarks, each bound to one shipped policy:

* ``jailbreak`` (policy ``jailbreak``): positives are the JailbreakHub jailbreak prompts, **split
  by date** (train: dated up to 2023-04, plus the one undated row; val: 2023-05 and 2023-06;
  test: dated from 2023-07). Splitting by date keeps a template family from leaking backwards
  from the future into training and keeps val (the threshold-tuning split) next to test in
  time. Negatives are ToxicChat-train prompts not flagged as jailbreaking, awesome-chatgpt-
  prompts (benign role-play, hard negatives) and a sample of Alpaca instructions, assigned to
  splits by a seeded hash of their normalised text and sampled so that every split has
  JailbreakHub's published jailbreak prevalence of 9.3%.
* ``moderation`` (policy ``harmful_content``): the OpenAI moderation evaluation set, split
  60/20/20 by a seeded hash of the normalised text; per-category flags kept in
  :attr:`Example.categories`.
* ``xstest`` (policy ``harmful_content``): XSTest v2, test split only (label 1 = unsafe prompt,
  0 = safe prompt that resembles an unsafe one); :attr:`Example.categories` holds its ``type``.
* ``jailbreak-policy`` (policy ``jailbreak``): the ``jailbreak`` benchmark's texts and splits with
  the **policy's labels**. Every JailbreakHub positive and every ToxicChat / awesome-chatgpt-prompts
  negative was read against ``models/policies/jailbreak.md`` (``jailbreak_policy_verdicts.csv.gz``;
  method, reasons and agreement in ``experiments/exp_label_audit.py``): ``real`` is 1, ``not`` is 0
  and ``ambiguous`` texts are left out; Alpaca's unread instructions stay 0. A quarter of the test
  positives are benign texts posted in jailbreak communities, which the collection's labels count
  as jailbreaks.

Everything is deterministic (no RNG state, only hashes of the text with a fixed seed string)
and cached in process, so loading a split after the first takes microseconds.

Run ``python -m safecascade.training.datasets`` for a summary table.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import logging
from collections import Counter
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SEED = "safecascade-benchmark-v1"
JAILBREAK_PREVALENCE = 0.093  # JailbreakHub: 1,405 jailbreaks among 15,140 prompts (2023-12-25 snapshot)
MODERATION_FRACTIONS = (0.6, 0.2, 0.2)
# Date split of the JailbreakHub positives (dates are ISO "YYYY-MM-DD"; compared as strings).
JAILBREAK_TRAIN_UNTIL = "2023-04-31"  # train: date <= 2023-04 (and undated)
JAILBREAK_VAL_UNTIL = "2023-06-31"    # val: 2023-05 .. 2023-06; test: later
MODERATION_CATEGORIES = ("S", "H", "V", "HR", "SH", "S3", "H2", "V2")

_BENCHMARKS = {"jailbreak": "jailbreak", "jailbreak-policy": "jailbreak", "moderation": "harmful_content",
               "xstest": "harmful_content"}
POLICY_VERDICTS = "jailbreak_policy_verdicts.csv.gz"
POLICY_LABEL = {"real": 1, "not": 0, "ambiguous": None}  # None: left out of jailbreak-policy


@dataclass(frozen=True, kw_only=True)
class Example:
    """One labelled text: ``label`` 1 = violates the benchmark's policy, 0 = benign.

    ``source`` names the dataset it came from, ``id`` is stable across runs (source + row in the
    vendored file), ``date`` is set for JailbreakHub rows, ``categories`` holds the moderation
    categories flagged (``S``, ``H``, ...), the XSTest prompt type, or ``toxic`` for ToxicChat
    negatives whose toxicity flag is set.
    """

    text: str
    label: int
    source: str
    id: str
    date: str = ""
    categories: tuple[str, ...] = ()


def benchmark_names() -> list[str]:
    """Benchmarks :func:`load_benchmark` knows."""
    return list(_BENCHMARKS)


def benchmark_policy(name: str) -> str:
    """The policy name a benchmark's labels follow (``jailbreak`` or ``harmful_content``)."""
    _check_name(name)
    return _BENCHMARKS[name]


def benchmark_splits(name: str) -> tuple[str, ...]:
    """Splits a benchmark has (``xstest`` is test only); ``all`` is always accepted too."""
    _check_name(name)
    return ("test",) if name == "xstest" else SPLITS


def normalise(text: str) -> str:
    """The near-duplicate key: lower-cased, whitespace collapsed, first 200 characters."""
    return " ".join(text.lower().split())[:200]


def split_hash(text: str, *, salt: str = "") -> float:
    """A uniform number in [0, 1) from the seeded hash of ``normalise(text)`` (stable everywhere)."""
    h = hashlib.sha256(f"{SEED}|{salt}|{normalise(text)}".encode("utf-8", errors="replace")).hexdigest()
    return int(h[:13], 16) / float(16**13)


def load_benchmark(name: str, split: str) -> list[Example]:
    """The examples of one benchmark split (``train``, ``val``, ``test`` or ``all``).

    The returned list is a fresh copy; its order is fixed (by text hash, so labels are mixed).
    """
    _check_name(name)
    if split != "all" and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of train, val, test, all")
    if split != "all" and split not in benchmark_splits(name):
        raise ValueError(f"benchmark {name!r} has only the split(s) {', '.join(benchmark_splits(name))} (or 'all')")
    splits = _build(name)
    if split == "all":
        return [ex for s in benchmark_splits(name) for ex in splits[s]]
    return list(splits[split])


# ---------------------------------------------------------------------------- internals
def _check_name(name: str) -> None:
    if name not in _BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(_BENCHMARKS)}")


def data_dir() -> Path:
    """Folder holding the vendored ``*.csv.gz`` files."""
    return Path(str(resources.files("safecascade.training").joinpath("data")))


@functools.lru_cache(maxsize=None)
def _rows(filename: str) -> tuple[dict[str, str], ...]:
    path = data_dir() / filename
    if not path.is_file():
        raise FileNotFoundError(f"vendored dataset missing: {path} (rebuild with training/data/build_vendored.py)")
    csv.field_size_limit(max(csv.field_size_limit(), 16 * 1024 * 1024))
    with gzip.open(path, "rb") as fh:
        text = fh.read().decode("utf-8")
    return tuple(csv.DictReader(io.StringIO(text, newline="")))


def read_vendored(filename: str) -> tuple[dict[str, str], ...]:
    """The rows of one vendored ``training/data/*.csv.gz`` file as dicts (cached; do not mutate)."""
    return _rows(filename)


def _order(examples: list[Example]) -> tuple[Example, ...]:
    return tuple(sorted(examples, key=lambda e: (split_hash(e.text, salt="order"), e.id)))


@functools.lru_cache(maxsize=None)
def _build(name: str) -> dict[str, tuple[Example, ...]]:
    if name == "jailbreak":
        return _build_jailbreak()
    if name == "jailbreak-policy":
        return _build_jailbreak_policy()
    if name == "moderation":
        return _build_moderation()
    return _build_xstest()


def _date_split(date: str) -> str:
    if not date or date <= JAILBREAK_TRAIN_UNTIL:
        return "train"
    if date <= JAILBREAK_VAL_UNTIL:
        return "val"
    return "test"


def _jailbreak_positives() -> list[tuple[str, Example]]:
    out = []
    for i, r in enumerate(_rows("jailbreakhub.csv.gz")):
        date = (r.get("date") or "").strip()
        out.append((_date_split(date), Example(text=r["text"], label=1, source="jailbreakhub", id=f"jailbreakhub-{i}", date=date)))
    return out


def _jailbreak_negative_pool() -> tuple[list[Example], list[Example], dict[str, int]]:
    """(hard negatives, alpaca negatives, drop counts) after leakage and duplicate checks."""
    hard: list[Example] = []
    for i, r in enumerate(_rows("toxicchat_train.csv.gz")):
        if r["jailbreaking"] == "1":
            continue
        cats = ("toxic",) if r["label"] == "1" else ()
        hard.append(Example(text=r["text"], label=0, source="toxicchat", id=f"toxicchat-{i}", categories=cats))
    for i, r in enumerate(_rows("awesome_chatgpt_prompts.csv.gz")):
        if r["label"] != "0":  # the two rows relabelled as jailbreaks are kept out (see SOURCES.md)
            continue
        hard.append(Example(text=r["text"], label=0, source="awesome_chatgpt_prompts", id=f"awesome-{i}"))
    alpaca = [Example(text=r["text"], label=0, source="alpaca", id=f"alpaca-{i}")
              for i, r in enumerate(_rows("alpaca_sample.csv.gz"))]

    pos_keys = {normalise(r["text"]) for r in _rows("jailbreakhub.csv.gz")}
    seen: set[str] = set()
    drops = Counter()
    kept_hard, kept_alpaca = [], []
    for group, out in ((hard, kept_hard), (alpaca, kept_alpaca)):
        for ex in group:
            if normalise(ex.text) in pos_keys:
                drops["matches_positive"] += 1
                continue
            full = " ".join(ex.text.lower().split())
            if full in seen:
                drops["duplicate"] += 1
                continue
            seen.add(full)
            out.append(ex)
    return kept_hard, kept_alpaca, dict(drops)


@functools.lru_cache(maxsize=None)
def _undated_cuts() -> tuple[float, float]:
    n_pos = Counter(sp for sp, _ in _jailbreak_positives())
    total = sum(n_pos.values())
    return n_pos["train"] / total, (n_pos["train"] + n_pos["val"]) / total


def _undated_split(text: str) -> str:
    """The jailbreak benchmark's split for an undated text: a seeded hash, cut in proportion to
    the date-split positives (so each split can hold the published prevalence)."""
    cut_train, cut_val = _undated_cuts()
    u = split_hash(text)
    return "train" if u < cut_train else "val" if u < cut_val else "test"


def toxicchat_jailbreaks(split: str) -> list[Example]:
    """ToxicChat prompts its human annotators flagged as jailbreaking (label 1), for one split.

    The jailbreak benchmark leaves these out (its ToxicChat rows are all negatives); they are
    offered as extra training positives that follow a human reading of the prompt rather than the
    community it was posted in. They take the split an undated benchmark negative with the same
    text would take; duplicates, and texts whose near-duplicate key matches any benchmark text
    (of any split), are dropped, so none of them is a test text.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of train, val, test")
    taken = {normalise(e.text) for e in load_benchmark("jailbreak", "all")}
    out, seen = [], set()
    for i, r in enumerate(_rows("toxicchat_train.csv.gz")):
        key = normalise(r["text"])
        if r["jailbreaking"] != "1" or key in taken or key in seen:
            continue
        seen.add(key)
        if _undated_split(r["text"]) == split:
            out.append(Example(text=r["text"], label=1, source="toxicchat", id=f"toxicchat-{i}", categories=("jailbreaking",)))
    return out


def _build_jailbreak() -> dict[str, tuple[Example, ...]]:
    positives = _jailbreak_positives()
    pos = {s: [ex for sp, ex in positives if sp == s] for s in SPLITS}
    n_pos = {s: len(pos[s]) for s in SPLITS}
    # Negatives go to splits in proportion to the positives (_undated_split), so each split can hold 9.3%.

    hard, alpaca, drops = _jailbreak_negative_pool()
    if drops:
        log.info("jailbreak benchmark: negatives dropped: %s", drops)
    out: dict[str, tuple[Example, ...]] = {}
    for s in SPLITS:
        target = round(n_pos[s] * (1 - JAILBREAK_PREVALENCE) / JAILBREAK_PREVALENCE)
        h = [ex for ex in hard if _undated_split(ex.text) == s]
        a = sorted((ex for ex in alpaca if _undated_split(ex.text) == s), key=lambda e: (split_hash(e.text, salt="pick"), e.id))
        if len(h) >= target:  # not the case with the vendored data; kept for safety
            h = sorted(h, key=lambda e: (split_hash(e.text, salt="pick"), e.id))[:target]
            a = []
        else:
            if len(a) < target - len(h):
                log.warning("jailbreak/%s: only %d Alpaca negatives for %d needed; prevalence will be higher than %.3f",
                            s, len(a), target - len(h), JAILBREAK_PREVALENCE)
            a = a[: target - len(h)]
        out[s] = _order(pos[s] + h + a)
    return out


def write_csv_gz(rows: list[dict[str, str]], columns: list[str], path: Path) -> Path:
    """Write ``rows`` (only ``columns``) as the vendored files are written: UTF-8 CSV with ``\\n``
    line ends, deterministic gzip (mtime 0, level 9), so the same rows give the same bytes."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in columns})
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        gz.write(buf.getvalue().encode("utf-8"))
    return path


def policy_verdicts() -> dict[str, str]:
    """``id -> verdict`` (``real``, ``ambiguous`` or ``not``) of every jailbreak-benchmark text read
    against the jailbreak policy (the vendored ``jailbreak_policy_verdicts.csv.gz``)."""
    out: dict[str, str] = {}
    for r in _rows(POLICY_VERDICTS):
        if r["verdict"] not in POLICY_LABEL or r["id"] in out:
            raise ValueError(f"{POLICY_VERDICTS}: bad or repeated row {r['id']!r}: {r['verdict']!r}")
        out[r["id"]] = r["verdict"]
    return out


def _build_jailbreak_policy() -> dict[str, tuple[Example, ...]]:
    verdicts = policy_verdicts()
    out: dict[str, tuple[Example, ...]] = {}
    for s, exs in _build("jailbreak").items():
        kept = []
        for ex in exs:
            v = verdicts.get(ex.id)
            if v is None:
                if ex.label == 1 or ex.source != "alpaca":
                    raise ValueError(f"{POLICY_VERDICTS} has no verdict for {ex.id} (label {ex.label})")
                kept.append(ex)
            elif POLICY_LABEL[v] is not None:
                kept.append(replace(ex, label=POLICY_LABEL[v]))
        out[s] = tuple(kept)
    return out


def _build_moderation() -> dict[str, tuple[Example, ...]]:
    cut_train, cut_val = MODERATION_FRACTIONS[0], MODERATION_FRACTIONS[0] + MODERATION_FRACTIONS[1]
    parts: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for i, r in enumerate(_rows("openai_moderation.csv.gz")):
        cats = tuple(c for c in MODERATION_CATEGORIES if r.get(c) == "1")
        ex = Example(text=r["text"], label=int(r["label"]), source="openai_moderation", id=f"moderation-{i}", categories=cats)
        u = split_hash(ex.text)
        parts["train" if u < cut_train else "val" if u < cut_val else "test"].append(ex)
    return {s: _order(v) for s, v in parts.items()}


def _build_xstest() -> dict[str, tuple[Example, ...]]:
    exs = [Example(text=r["text"], label=int(r["label"]), source="xstest", id=f"xstest-{r['xstest_id']}",
                   categories=(r["type"],) if r.get("type") else ())
           for r in _rows("xstest.csv.gz")]
    return {"train": (), "val": (), "test": _order(exs)}


# ---------------------------------------------------------------------------- summary
def summary_rows() -> list[dict[str, object]]:
    """One row per benchmark split: rows, positives, prevalence and examples per source."""
    out = []
    for name in benchmark_names():
        for s in benchmark_splits(name):
            exs = load_benchmark(name, s)
            n = len(exs)
            p = sum(e.label for e in exs)
            src = Counter(e.source for e in exs)
            out.append({"benchmark": name, "policy": benchmark_policy(name), "split": s, "rows": n, "positives": p,
                        "prevalence": p / n if n else 0.0, "sources": dict(sorted(src.items()))})
    return out


def summary_markdown() -> str:
    """The summary table as Markdown."""
    lines = ["| benchmark | policy | split | rows | positives | prevalence | sources |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in summary_rows():
        src = ", ".join(f"{k} {v}" for k, v in r["sources"].items())  # type: ignore[union-attr]
        lines.append(f"| {r['benchmark']} | {r['policy']} | {r['split']} | {r['rows']} | {r['positives']} | "
                     f"{r['prevalence']:.3f} | {src} |")
    return "\n".join(lines)


def main() -> int:
    """``python -m safecascade.training.datasets``: print the summary table."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(summary_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
