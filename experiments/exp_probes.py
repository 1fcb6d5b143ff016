"""Request probes: how many hand-written harmful requests the router blocks, and how many safe twins.

    python -m experiments.exp_probes [--config PATH]

Each probe in ``experiments/data/probes`` is a pair of files, ``<name>_harm.txt`` (harmful requests,
one per line) and ``<name>_safe.txt`` (safe prompts that look like them), or safe prompts alone
(``ml_safe.txt``: benign prompts in 16 languages, their language per line in ``ml_langs.txt``,
reported per language too); ``README.md`` there says
who wrote each and which rule passes were written from it (the figures of those passes are in sample
on it). The router classifies every line; the table gives the share blocked per file and, per probe,
how many harmful requests a heuristic rule named and which tier decided them. Writes
``experiments/results/probes.md`` and logs an MLflow run.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

from experiments.common import ROOT, ResultWriter
from safecascade.router.cascade import Router

log = logging.getLogger("experiments.exp_probes")
PROBES = ROOT / "experiments" / "data" / "probes"


def read_lines(path: Path) -> list[str]:
    """The non-empty lines of a probe file."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def probe_rows(router: Router, probes: Path = PROBES) -> list[dict[str, object]]:
    """One row per probe: harmful requests blocked, safe twins blocked, harmful requests a heuristic
    rule named, and the tiers that blocked them."""
    rows: list[dict[str, object]] = []
    names = sorted({f.name.rsplit("_", 1)[0] for pattern in ("*_harm.txt", "*_safe.txt") for f in probes.glob(pattern)})
    for name in names:
        harm = probes / f"{name}_harm.txt"
        texts = read_lines(harm) if harm.is_file() else []  # a probe may be safe prompts only
        decisions = router.classify_batch(texts)
        blocked = [d for d in decisions if d.action == "block"]
        named = sum(any(ids for t in d.path if t.tier == "heuristic" for ids in t.rule_ids.values()) for d in decisions)
        by_tier = Counter(d.tier for d in blocked)
        safe_path = probes / f"{name}_safe.txt"
        safe = read_lines(safe_path) if safe_path.is_file() else []
        safe_blocked = sum(d.action == "block" for d in router.classify_batch(safe)) if safe else 0
        rows.append({"probe": name, "harmful": len(texts), "blocked": len(blocked), "recall": len(blocked) / len(texts) if texts else None,
                     "named_by_a_rule": named, "blocked_by": ", ".join(f"{t} {n}" for t, n in sorted(by_tier.items())),
                     "safe": len(safe), "safe_blocked": safe_blocked})
    return rows


def language_rows(router: Router, probes: Path = PROBES, name: str = "ml") -> list[dict[str, object]]:
    """For a probe with a ``<name>_langs.txt`` (one language code per line of ``<name>_safe.txt``, and of
    ``<name>_harm.txt`` where the probe has one): per language, the safe prompts, how many the router
    blocks and by which policy, and (with harmful lines) the harmful prompts and how many it blocks."""
    safe_path, langs_path, harm_path = probes / f"{name}_safe.txt", probes / f"{name}_langs.txt", probes / f"{name}_harm.txt"
    if not (safe_path.is_file() and langs_path.is_file()):
        return []
    texts, langs = read_lines(safe_path), read_lines(langs_path)
    harm = read_lines(harm_path) if harm_path.is_file() else None
    for path, lines in ((safe_path, texts), (harm_path, harm)):
        if lines is not None and len(lines) != len(langs):
            raise ValueError(f"{langs_path} has {len(langs)} lines, {path} {len(lines)}")
    n: Counter[str] = Counter()
    blocked: Counter[str] = Counter()
    by_policy: dict[str, Counter[str]] = {}
    for lang, d in zip(langs, router.classify_batch(texts)):
        n[lang] += 1
        if d.action == "block":
            blocked[lang] += 1
            by_policy.setdefault(lang, Counter()).update(p for p, v in d.policies.items() if v.flagged)
    harm_blocked: Counter[str] = Counter()
    for lang, d in zip(langs, router.classify_batch(harm) if harm else []):
        harm_blocked[lang] += d.action == "block"
    return [{"language": lang, **({"harmful": n[lang], "harmful_blocked": harm_blocked[lang]} if harm is not None else {}),
             "safe": n[lang], "blocked": blocked[lang],
             "by_policy": ", ".join(f"{p} {k}" for p, k in sorted(by_policy.get(lang, Counter()).items()))} for lang in n]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="router config (default: the embedded default)")
    ap.add_argument("--quick", action="store_true", help="accepted for run_all; the probes are small")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    router = Router.load(args.config)
    with ResultWriter("probes", title="Request probes", params={"config": args.config or "default"}) as rw:
        rw.text(__doc__.split("\n\n", 2)[2] if __doc__ else "")
        rows = probe_rows(router)
        rw.table(rows)
        rw.metrics({f"{r['probe']}_recall": float(r["recall"]) for r in rows if r["harmful"]})  # type: ignore[arg-type]
        for name in sorted(p.name[:-len("_langs.txt")] for p in PROBES.glob("*_langs.txt")):  # every probe with its languages
            by_language = language_rows(router, name=name)
            if by_language:
                what = "harmful prompts and their safe look-alikes" if (PROBES / f"{name}_harm.txt").is_file() else "safe prompts"
                rw.text(f"Probe `{name}` per language: the {what} blocked (`{name}_*.txt`, the language of each line in "
                        f"`{name}_langs.txt`; `blocked`: safe ones):")
                rw.table(by_language)
        for r in rows:
            log.info("%s: %d/%d blocked, safe %d/%d", r["probe"], r["blocked"], r["harmful"], r["safe_blocked"], r["safe"])
    router.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
