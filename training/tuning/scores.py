"""Score once for threshold tuning: every tier of a router over labelled texts, cached on disk.

:func:`score_router` runs each non-final tier of a :class:`~safecascade.router.config.RouterConfig`
over **all** texts (not only those a given band would pass on: the sweep needs every score),
built exactly as :meth:`Router.load` builds them (:func:`safecascade.tiers.base.create_tier`),
on the texts the router would see (:func:`safecascade.router.inputs.clean_input`). Texts an input
rule decides (empty, oversize) are recorded as such and never scored.

Cache: one ``.npz`` per tier under ``<cache_dir>/tune/scores/``, keyed by the tier's
*fingerprint* (type, options, the policy hashes, and the content of what it loads: the model
directory of ``fast``/``static`` tiers - card and ONNX/embedding files -, the rules file of the
``heuristic`` tier, the verdict file of a ``replay`` tier) and by the hash of the cleaned texts.
A rerun over the same texts with the same tiers reads the scores back instead of re-scoring;
changing one tier re-scores only that tier. Latency is the one measured by the scoring pass that
filled the cache.

The final tier: when it is a ``safeguard`` tier (an LLM: too slow to score a split), its scores
come from recorded verdicts (``replay`` CSV, see :mod:`safecascade.tiers.replay`; an optional
``latency_ms`` column gives measured latency) and are ``NaN`` where none is recorded; the sweep
then applies an explicit assumption (:mod:`safecascade.training.tuning.sweep`). Any other final
tier type is scored like the others.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from safecascade.hashing import file_sha, text_hash
from safecascade.router.inputs import clean_input
from safecascade.tiers.base import TierResult, TierSpec, create_tier
from safecascade.tiers.replay import ReplayTier

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
INPUT_NONE, INPUT_ALLOW, INPUT_BLOCK = -1, 0, 1


@dataclass(frozen=True, kw_only=True)
class TierScores:
    """One tier's scores over the texts. ``scores`` is ``(n, len(policies))`` over the *router's*
    policies, ``NaN`` where the tier gave no score (error, policy not covered, input rule)."""

    name: str
    type: str
    fingerprint: str
    scores: np.ndarray
    error: np.ndarray  # (n,) bool: the tier failed on the text (its on_error applies)
    latency_ms: np.ndarray  # (n,) float: measured per-text latency (NaN = unknown)
    on_error: str = "next"
    source: str = "scored"
    cached: bool = False


@dataclass(frozen=True, kw_only=True)
class ScoreTable:
    """Everything the sweep needs: labels, input-rule outcomes, per-tier scores and latency."""

    text_hashes: tuple[str, ...]
    labels: np.ndarray  # (n,) int 0/1
    input_action: np.ndarray  # (n,) int8: -1 none, 0 allow, 1 block (input rules decided)
    policies: tuple[str, ...]
    tiers: tuple[TierScores, ...]  # the non-final tiers, in order
    final: TierScores  # the final tier (scores NaN where unknown)
    final_threshold: float
    texts_hash: str  # hash of the cleaned texts (the cache key's data part)
    data_hash: str  # hash of texts + labels
    score_seconds: float = 0.0

    @property
    def n(self) -> int:
        return len(self.text_hashes)


# ---------------------------------------------------------------------------- hashing
def dir_sha(path: str | Path) -> str:
    """sha256 over a directory's files (relative names and contents, sorted)."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(file_sha(f).encode())
    return h.hexdigest()


def tier_fingerprint(tier: Any, *, type_: str, options: Mapping[str, Any], policy_hashes: Mapping[str, str],
                     base_dir: Path) -> dict[str, Any]:
    """What a tier's scores depend on: type, options, policies, and the content it loaded."""
    fp: dict[str, Any] = {"format": CACHE_FORMAT, "type": type_, "options": json.loads(json.dumps(dict(options), sort_keys=True, default=str)),
                          "policies": dict(sorted(policy_hashes.items())),
                          "tier_policies": list(getattr(tier, "policies", ()))}
    model_dir = getattr(tier, "model_dir", None)
    if model_dir is not None:
        fp["model_sha"] = dir_sha(model_dir)
    ruleset = getattr(tier, "ruleset", None)
    if ruleset is not None and getattr(ruleset, "path", None):
        fp["rules_sha"] = file_sha(ruleset.path)
    if type_ == "replay" and options.get("path"):
        p = Path(str(options["path"]))
        fp["replay_sha"] = file_sha(p if p.is_absolute() else base_dir / p)
    return fp


def short_hash(obj: Any) -> str:
    """16 hex digits of the sha256 of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- scoring
def _clean(config: Any, texts: Sequence[str]) -> tuple[list[str], np.ndarray, list[str]]:
    """Cleaned texts, input-rule action per text, and text hashes (as the router computes them)."""
    cleaned, actions, hashes = [], np.full(len(texts), INPUT_NONE, dtype=np.int8), []
    for i, raw in enumerate(texts):
        c = clean_input(raw, max_chars=config.input.max_chars, on_oversize=config.input.on_oversize)
        cleaned.append(c.text)
        hashes.append(c.text_hash)
        if c.rule == "empty_input":
            actions[i] = INPUT_BLOCK if config.input.on_empty == "block" else INPUT_ALLOW
        elif c.rule == "input_too_large":
            actions[i] = INPUT_BLOCK if config.input.on_oversize == "block" else INPUT_ALLOW
    return cleaned, actions, hashes


def _run_tier(tier: Any, texts: Sequence[str], todo: np.ndarray, policies: Sequence[str], *, batch_size: int,
              progress: bool, desc: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score ``texts[todo]`` with ``tier`` in length-sorted batches; returns scores, error, latency."""
    n = len(texts)
    scores = np.full((n, len(policies)), np.nan)
    error = np.zeros(n, dtype=bool)
    latency = np.full(n, np.nan)
    order = sorted(np.flatnonzero(todo).tolist(), key=lambda i: (len(texts[i]), i))
    col = {p: j for j, p in enumerate(policies)}
    with tqdm(total=len(order), desc=desc, unit="text", disable=not progress) as bar:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            t0 = time.perf_counter()
            try:
                results = tier.classify([texts[i] for i in idx])
                if len(results) != len(idx):
                    raise RuntimeError(f"tier returned {len(results)} results for {len(idx)} texts")
            except Exception as exc:  # as the router does: a crash is an error result, on_error applies
                log.exception("tier %s failed on a batch of %d", desc, len(idx))
                results = [TierResult(scores={}, error=f"{type(exc).__name__}: {exc}") for _ in idx]
            per = (time.perf_counter() - t0) * 1000.0 / len(idx)
            for i, res in zip(idx, results):
                latency[i] = res.latency_ms if res.latency_ms > 0 else per
                if res.error is not None or not res.scores:
                    error[i] = True
                    continue
                for pol, v in res.scores.items():
                    if pol in col:
                        scores[i, col[pol]] = float(v)
            bar.update(len(idx))
    return scores, error, latency


def _cache_path(cache_dir: Path, name: str, fingerprint: str, texts_hash: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return cache_dir / f"{safe}-{fingerprint}-{texts_hash}.npz"


def _load_cached(path: Path, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if tuple(z["text_hashes"].tolist()) != tuple(hashes):
                log.warning("score cache %s is for other texts; re-scoring", path)
                return None
            return z["scores"].copy(), z["error"].copy(), z["latency_ms"].copy()
    except Exception as exc:  # a torn or foreign file: score again
        log.warning("unreadable score cache %s (%s); re-scoring", path, exc)
        return None


def _save_cached(path: Path, hashes: Sequence[str], scores: np.ndarray, error: np.ndarray, latency: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, text_hashes=np.array(hashes), scores=scores, error=error, latency_ms=latency)
    tmp.replace(path)


def _score_one(tc: Any, spec: Any, cleaned: list[str], todo: np.ndarray, hashes: list[str], texts_hash: str,
               policy_hashes: Mapping[str, str], policies: Sequence[str], *, cache_dir: Path | None,
               batch_size: int, progress: bool) -> TierScores:
    """Build one tier, then read its scores from the cache or score and cache them."""
    tier = create_tier(spec)
    try:
        fp = short_hash(tier_fingerprint(tier, type_=tc.type, options=tc.options, policy_hashes=policy_hashes,
                                         base_dir=spec.base_dir))
        path = _cache_path(cache_dir, tc.name, fp, texts_hash) if cache_dir is not None else None
        hit = _load_cached(path, hashes) if path is not None else None
        if hit is not None:
            log.info("tier %s: %d scores read from the cache %s", tc.name, int(todo.sum()), path)
            return TierScores(name=tc.name, type=tc.type, fingerprint=fp, scores=hit[0], error=hit[1],
                              latency_ms=hit[2], on_error=tc.on_error, cached=True)
        t0 = time.perf_counter()
        scores, error, latency = _run_tier(tier, cleaned, todo, policies, batch_size=batch_size, progress=progress,
                                           desc=f"score {tc.name}")
        log.info("tier %s: scored %d texts in %.1f s", tc.name, int(todo.sum()), time.perf_counter() - t0)
        if path is not None:
            _save_cached(path, hashes, scores, error, latency)
        return TierScores(name=tc.name, type=tc.type, fingerprint=fp, scores=scores, error=error,
                          latency_ms=latency, on_error=tc.on_error)
    finally:
        closer = getattr(tier, "close", None)
        if callable(closer):
            closer()


def read_replay(path: str | Path, cleaned: Sequence[str], todo: np.ndarray, policies: Sequence[str],
                *, name: str = "safeguard") -> TierScores:
    """Recorded final-tier verdicts (replay CSV) for the texts; ``NaN`` where none is recorded.
    An optional ``latency_ms`` column gives each verdict's measured latency."""
    tier = ReplayTier.from_csv(path, name=name, policies=list(policies), missing="error")
    n = len(cleaned)
    scores = np.full((n, len(policies)), np.nan)
    col = {p: j for j, p in enumerate(policies)}
    for i, res in enumerate(tier.classify(list(cleaned))):
        if todo[i] and res.error is None:
            for pol, v in res.scores.items():
                scores[i, col[pol]] = float(v)
    latency = np.full(n, np.nan)
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if "latency_ms" in (reader.fieldnames or ()):
            recorded = {(row.get("text_hash") or text_hash(row["text"])): row["latency_ms"] for row in reader}
            for i, t in enumerate(cleaned):
                raw = (recorded.get(text_hash(t)) or "").strip()
                if todo[i] and raw:
                    latency[i] = float(raw)
    fp = short_hash({"replay_sha": file_sha(path), "policies": list(policies)})
    log.info("final tier %s: recorded verdicts for %d of %d texts from %s", name,
             int((~np.isnan(scores).all(axis=1) & todo).sum()), int(todo.sum()), path)
    return TierScores(name=name, type="replay", fingerprint=fp, scores=scores, error=np.isnan(scores).all(axis=1),
                      latency_ms=latency, source=f"replay:{Path(path).name}")


def score_router(config: Any, texts: Sequence[str], labels: Sequence[int], *, replay: str | Path | None = None,
                 cache_dir: str | Path | None = None, batch_size: int = 32, progress: bool = True) -> ScoreTable:
    """Score ``texts`` with every tier of ``config`` once (cached) and return a :class:`ScoreTable`.

    ``replay``: recorded verdicts for the final tier (else a ``safeguard`` final tier has no
    scores and the sweep uses its assumption; a ``replay`` final tier reads its own file; other
    final tiers are scored). ``cache_dir=None`` disables the cache.
    """
    if len(config.tiers) < 2:
        raise ValueError(f"router {config.name!r} has a single tier: there is no band to tune")
    ys = np.asarray([int(y) for y in labels], dtype=np.int64)
    if len(ys) != len(texts) or not len(ys):
        raise ValueError(f"need one 0/1 label per text (got {len(texts)} texts, {len(ys)} labels)")
    if not set(np.unique(ys).tolist()) <= {0, 1}:
        raise ValueError("labels must be 0 or 1")
    t0 = time.perf_counter()
    cleaned, actions, hashes = _clean(config, texts)
    todo = actions == INPUT_NONE
    texts_hash = short_hash(hashes)
    data_hash = short_hash([hashes, ys.tolist()])
    policies_obj = config.resolve_policies()
    policy_hashes = {k: p.sha for k, p in policies_obj.items()}
    policies = tuple(config.policies)
    cdir = Path(cache_dir) if cache_dir is not None else None
    out: list[TierScores] = []
    final_tc = config.tiers[-1]
    for tc in config.tiers:
        is_final = tc is final_tc
        if is_final and (replay is not None or tc.type == "safeguard"):
            continue
        spec = TierSpec(name=tc.name, type=tc.type, options=tc.options, policies=policies_obj, base_dir=Path(config.base_dir))
        out.append(_score_one(tc, spec, cleaned, todo, hashes, texts_hash, policy_hashes, policies, cache_dir=cdir,
                              batch_size=batch_size, progress=progress))
    if replay is not None:
        final = read_replay(replay, cleaned, todo, policies, name=final_tc.name)
    elif final_tc.type == "safeguard":
        n = len(cleaned)
        final = TierScores(name=final_tc.name, type=final_tc.type, fingerprint="assumed",
                           scores=np.full((n, len(policies)), np.nan), error=np.ones(n, dtype=bool),
                           latency_ms=np.full(n, np.nan), source="none")
    else:
        final = out.pop()
    return ScoreTable(text_hashes=tuple(hashes), labels=ys, input_action=actions, policies=policies,
                      tiers=tuple(out), final=final, final_threshold=float(final_tc.threshold),
                      texts_hash=texts_hash, data_hash=data_hash, score_seconds=round(time.perf_counter() - t0, 3))
