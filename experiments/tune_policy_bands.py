"""Tune the default router's bands and thresholds per policy, out of sample, for real traffic.

    python -m experiments.tune_policy_bands --work /tmp/twins [--models DIR] [--prevalence 0.03] [--write-presets models]

The shipped recipe fits its heads on **train only**, so the shipped models themselves are tuned on
(``--models DIR``, e.g. ``models``: ``DIR/static-default`` and ``DIR/fast-default``); without it,
twins with heads fit on train are built (the fine-tuned encoder and the embeddings come from the
cache) and stored exactly as shipped (:func:`safecascade.training.ship_models.stage_served`).
Every text of the multi-policy
benchmark's **val** split, and the val split's benign real user prompts (ToxicChat, neither toxic
nor a jailbreak), is scored by the heuristic, static and fast tiers. Then, per policy, on the texts
labelled for it, with positives re-weighted to a real-traffic prevalence (``--prevalence``, default
3%: a few percent of prompts violate, not the benchmark's 9-11%):

* the fast tier's threshold: the F1-best threshold at that prevalence among thresholds that flag
  at most ``--benign-budget`` of the benign real user prompts (per policy; default 0.1% jailbreak,
  0.26% prompt injection, 0.26% harmful request: on the val split's 388 such prompts, none, one
  and one), the share flagged estimated with a Gaussian kernel on the logit scale
  (``--benign-smoothing``, Silverman's bandwidth of those prompts' scores) rather than counted: a
  threshold set just above a cluster of benign scores flagged none of them on val and ~0.8% of the
  test split's (session 42);
* the static tier's block band: the lowest score at which its precision at that prevalence is at
  least ``--block-precision`` (0.99) and it flags no more benign real prompts than the budget;
* the static tier's allow band: the highest score below which at most ``--allow-miss`` (1%) of the
  positives that the fast tier blocks at its threshold fall (the recall the cheap path gives up
  against the fast tier deciding alone);
* with ``--combine`` (default, the shipped default's since session 52: ``prompt_injection`` on the
  fast and the multilingual tier's logits added, ``harmful_request`` on the fast, the static and the
  multilingual tier's; router/combine.py) the fast tier's scores above are the combined ones the
  router decides on, and each term's ``fill`` is chosen so that a text that tier did not judge whole
  is decided as the cascade without it decides it (with one term: at the threshold the fast tier
  alone would get; ``fill_none``: a text none of them judged, at that threshold). The multilingual
  tier (``DIR/multilingual-default``) is scored only when ``--combine`` names it, with
  ``--multilingual-options`` (default: the shipped default's, documents read per policy);
  ``--combine '{"harmful_request": {"static": 1.0}}'`` tunes session 47's presets, and
  ``--multilingual-options '{"parts": false}'`` session 51's whole-text reading
  (``experiments/configs/multilingual_combined.yaml``).
* the multilingual tier's block band, for the policies ``--multilingual-block`` names (default
  ``jailbreak``; session 56), tuned as the static tier's (:func:`block_band`) on its block score:
  with the default options' ``block_except_languages: [en]``, text identified as another language
  only (a jailbreak the English encoder cannot read); the cascade scored blocks there after the
  static tier and before the fast one.

Prints the chosen numbers and the val figures of the resulting cascade; paste them into
``models/default.yaml``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from string import Template
from typing import Any, Callable

import numpy as np

from safecascade.hashing import file_sha
from safecascade.router.combine import EPS, Term, combined, evidence_score, fill_for
from safecascade.router.decision import TierTrace
from safecascade.tiers.fast import FastTier
from safecascade.tiers.heuristic import HeuristicTier
from safecascade.tiers.heuristic_rules import default_rules_path
from safecascade.tiers.multilingual import MultilingualTier
from safecascade.tiers.base import TierResult
from safecascade.tiers.onnx_encoder import read_card
from safecascade.tiers.static import StaticTier
from safecascade.training.policy_data import POLICIES, real_user_benign, training_split
from safecascade.training.ship_models import stage_served
from safecascade.training.tuning.scores import dir_sha, short_hash
from safecascade.training.train_rows import example_labels, labelled

log = logging.getLogger("experiments.tune_policy_bands")


def build_twins(work: Path, bits: int = 8) -> dict[str, Path]:
    """Train-only twins of the shipped static, fast and multilingual tiers, stored as shipped."""
    out = {}
    for kind in ("static", "fast", "multilingual"):
        built, served = work / f"{kind}-train", work / f"{kind}-served"
        if not (built / "card.json").is_file():
            cmd = [sys.executable, "-m", "safecascade.cli", "-v", "train", kind, "--fit-on", "train", "--out", str(built), "--no-mlflow"]
            log.info("$ %s", " ".join(cmd))
            subprocess.run(cmd, check=True)
        if not (served / "card.json").is_file():
            stage_served(kind, built, served, bits)
        out[kind] = served
    return out


# the shipped default's combine and multilingual tier options (models/default.yaml; docs/policies.md,
# "Documents through the fast tier's evidence", session 52)
DEFAULT_COMBINE: dict[str, dict[str, float]] = {"prompt_injection": {"multilingual": 1.0},
                                                "harmful_request": {"static": 1.0, "multilingual": 1.0}}
DEFAULT_MULTILINGUAL_OPTIONS: dict[str, Any] = {"parts": False, "max_chars": 1000,
                                                "documents": {"prompt_injection": "skip", "harmful_request": "evidence"},
                                                "block_except_languages": ["en"]}
EARLIER = ("static", "multilingual")  # the tiers before the fast tier whose evidence ``combine`` may add


def score_all(tiers: dict[str, Any], texts: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """``{tier: {policy: scores}}`` for every text (a policy a tier does not score: 0). The static
    tier also gives ``static_allow``: the score its allow band is tested on (``TierResult.allow_score``:
    the highest of the text's and its parts' scores; inf where the band may not allow the text), and
    ``static_block``: the score its block band is tested on (``TierResult.block_score``: lower for a
    text mostly outside the Latin script, which it passes on), ``static_parts``: its score raised
    to its parts' highest (``info["part_scores"]``), what ``combine`` reads (router/combine.py), and
    ``static_skipped``: whether it read the text only in windows (``info["parts_skipped"]``) or not at
    all (a language it does not read, ``info["not_read"]``: combined at its fill), and
    ``static_evidence``: for those texts, its score of the piece the fast tier's score rests on
    (``TierResult.evidence``; nan where there is none), what the router combines them with. The
    multilingual tier gives the same ``_parts``, ``_skipped`` and ``_evidence`` arrays."""
    out: dict[str, dict[str, np.ndarray]] = {}
    results: dict[str, list[TierResult]] = {}
    for name, tier in tiers.items():
        res = []
        for s in range(0, len(texts), 256):
            res += tier.classify(texts[s:s + 256])
        results[name] = res
        out[name] = {p: np.array([r.scores.get(p, 0.0) for r in res]) for p in POLICIES}
        if name in EARLIER:  # tiers whose evidence the fast tier may combine (router/combine.py)
            out[f"{name}_parts"] = {p: np.array([max(r.scores.get(p, 0.0), (r.info.get("part_scores") or {}).get(p, 0.0)) for r in res])
                                    for p in POLICIES}
            out[f"{name}_skipped"] = {p: np.array([bool(r.info.get("parts_skipped") or r.info.get("not_read")) or p not in r.scores for r in res])
                                      for p in POLICIES}
        if name == "static":
            out["static_allow"] = {p: np.array([r.allow_score(p) if p in r.scores else 0.0 for r in res]) for p in POLICIES}
        if name in EARLIER:  # the score each tier's block band is tested on
            out[f"{name}_block"] = {p: np.array([r.block_score(p) if p in r.scores else 0.0 for r in res]) for p in POLICIES}
        log.info("scored %d texts with %s", len(texts), name)
    for name in (t for t in EARLIER if t in tiers and "fast" in tiers):
        out[f"{name}_evidence"] = {p: np.full(len(texts), np.nan) for p in POLICIES}
        asks = [(i, p, r.evidence[p]) for i, r in enumerate(results["fast"]) for p in POLICIES
                if results[name][i].info.get("parts_skipped") and p in results[name][i].scores and r.evidence.get(p)]
        pieces = list(dict.fromkeys(piece for _, _, piece in asks))
        got = dict(zip(pieces, [x for s in range(0, len(pieces), 256) for x in tiers[name].classify(pieces[s:s + 256])]))
        for i, p, piece in asks:
            v = evidence_score(got[piece], p)
            if v is not None:
                out[f"{name}_evidence"][p][i] = v
        log.info("scored %d pieces of long texts with %s (the fast tier's evidence)", len(pieces), name)
    return out


def weighted_f1(y: np.ndarray, pred: np.ndarray, w_pos: float) -> float:
    tp = w_pos * float((pred & (y == 1)).sum())
    fn = w_pos * float((~pred & (y == 1)).sum())
    fp = float((pred & (y == 0)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _logit(s: np.ndarray) -> np.ndarray:
    """``router.combine.logit`` over an array (the same clipping, so the tuner's scale is the router's)."""
    s = np.clip(np.asarray(s, dtype=float), EPS, 1 - EPS)
    return np.log(s / (1 - s))


def silverman_bandwidth(scores: np.ndarray) -> float:
    """Silverman's rule-of-thumb bandwidth of ``scores`` on the logit scale (0.0 for fewer than two
    scores or no spread)."""
    z = _logit(scores)
    if len(z) < 2:
        return 0.0
    q75, q25 = np.percentile(z, [75, 25])
    spread = min(float(z.std()), float(q75 - q25) / 1.34) or float(z.std())
    return 0.9 * spread * len(z) ** -0.2


def benign_rate(benign: np.ndarray, t: float, bandwidth: float = 0.0) -> float:
    """The share of benign prompts a threshold ``t`` flags: counted (``bandwidth`` 0), or smoothed
    with a Gaussian kernel of that bandwidth on the logit scale, so that prompts scored just under
    ``t`` count in part: a threshold set just above a cluster of benign scores is not read as flagging
    none of them."""
    if not len(benign):
        return 0.0
    if bandwidth <= 0:
        return float((benign >= t).mean())
    from scipy.stats import norm  # heavy; scipy comes with scikit-learn

    return float(norm.sf((_logit(np.array([t]))[0] - _logit(benign)) / bandwidth).mean())


def block_band(y: np.ndarray, s_block: np.ndarray, benign_block: np.ndarray, *, w_pos: float, block_precision: float,
               budget: float) -> float:
    """The lowest score at which a tier's block band (tested on ``s_block``, ``TierResult.block_score``)
    keeps its precision, positives weighted by ``w_pos``, at least ``block_precision`` and flags at
    most ``budget`` of the benign real prompts (``benign_block``, counted); 1.0 where no score does."""
    block = 1.0
    for t in np.unique(s_block)[::-1]:  # descending: keep lowering while the conditions hold
        if t <= 0.0:  # a text the band may not block (a language it does not act in)
            break
        pred = s_block >= t
        tp = w_pos * float((pred & (y == 1)).sum())
        fp = float((pred & (y == 0)).sum())
        if (tp and tp / (tp + fp) < block_precision) or (benign_block >= t).mean() > budget:
            break
        block = float(t)
    return block


def _w_pos(y: np.ndarray, prevalence: float) -> float:
    """The weight that re-weights ``y``'s positives to ``prevalence`` against its negatives."""
    return prevalence / (1 - prevalence) * int((y == 0).sum()) / max(1, int((y == 1).sum()))


def choose(y: np.ndarray, s_fast: np.ndarray, s_static: np.ndarray, benign_fast: np.ndarray, benign_static: np.ndarray,
           s_static_allow: np.ndarray | None = None, *, prevalence: float, budget: float, block_precision: float, allow_miss: float,
           smooth_benign: bool = False, threshold_rows: np.ndarray | None = None) -> dict[str, float]:
    """One policy's fast threshold and static band (see the module docstring). ``smooth_benign``: the
    fast threshold's benign-flag rate is the kernel-smoothed estimate (:func:`benign_rate`, Silverman's
    bandwidth of the benign scores) instead of the count. ``threshold_rows`` (a mask over ``y``): the
    rows the fast threshold's F1 is measured on (default all), positives re-weighted to the prevalence
    among them; the bands are chosen on all rows."""
    w_pos = _w_pos(y, prevalence)
    keep = np.ones(len(y), bool) if threshold_rows is None else threshold_rows
    w_thr = _w_pos(y[keep], prevalence)
    cands = np.unique(np.r_[s_fast, 0.5])
    bw = silverman_bandwidth(benign_fast) if smooth_benign else 0.0
    within = [float(t) for t in cands if benign_rate(benign_fast, float(t), bw) <= budget]
    if not within:  # no threshold within the budget: the strictest one (it flags fewest)
        log.warning("no threshold flags at most %.2f%% of the benign prompts: the strictest, %.6f", 100 * budget, cands[-1])
        within = [float(cands[-1])]
    best = max(((t, weighted_f1(y[keep], s_fast[keep] >= t, w_thr)) for t in within), key=lambda tf: tf[1])
    thr = best[0]
    block = block_band(y, s_static, benign_static, w_pos=w_pos, block_precision=block_precision, budget=budget)
    # allow below the score under which allow_miss of the violations the fast tier would block fall:
    # the recall the static tier's allow band costs, against the fast tier deciding alone
    caught = (y == 1) & (s_fast >= thr)
    s_allow = s_static if s_static_allow is None else s_static_allow  # what the allow band is tested on
    pos_scores = np.sort(s_allow[caught if caught.any() else y == 1])
    allow = float(pos_scores[int(np.floor(allow_miss * len(pos_scores)))]) if len(pos_scores) else 0.0
    allow = min(allow, block)
    fast_pos = np.sort(s_fast[y == 1])  # with a safeguard: the fast tier allows below this, escalates up to its threshold
    fast_allow = min(float(fast_pos[int(np.floor(allow_miss * len(fast_pos)))]) if len(fast_pos) else 0.0, thr)
    # six decimals, rounded down: the threshold is a val text's score, and 4 decimals could land
    # below a benign prompt's score near 1 (scores combined from two tiers crowd there)
    return {"fast_threshold": float(np.floor(thr * 1e6) / 1e6), "fast_allow_below": round(fast_allow * 0.999, 4),
            "static_block_above": round(block, 4), "static_allow_below": round(allow * 0.999, 4),
            "val_weighted_f1_fast": round(best[1], 4), "w_pos": round(w_pos, 4),
            "val_benign_rate_fast": round(benign_rate(benign_fast, thr, bw), 5), "benign_bandwidth": round(bw, 4)}


def cascade_eval(y: dict[str, np.ndarray], idx: dict[str, np.ndarray], sc: dict[str, dict[str, np.ndarray]],
                 chosen: dict[str, dict[str, float]], heuristic_block: dict[str, float],
                 named_threshold: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Block decisions, 'reached fast' flags and each policy's own flag of the tuned cascade for
    every scored text (a policy is flagged by the tier that decided). A text a heuristic rule
    matched without deciding (its heuristic score is above 0) is never allowed by the static tier,
    and the fast tier decides that policy at ``named_threshold`` (``default`` or per policy; at
    most the policy's threshold), as the router does. A policy with a ``multilingual_block_above``
    in ``chosen`` is blocked by the multilingual tier (after the static tier, before the fast one)
    where its block score (``multilingual_block``) reaches it."""
    h_pol = {p: sc["heuristic"][p] >= heuristic_block.get(p, 1.01) for p in POLICIES}
    named = {p: sc["heuristic"][p] > 0 for p in POLICIES}
    nt = named_threshold or {}
    s_pol = {p: sc.get("static_block", sc["static"])[p] >= chosen[p]["static_block_above"] for p in POLICIES}
    f_pol = {}
    for p in POLICIES:
        thr, low = chosen[p]["fast_threshold"], nt.get(p, nt.get("default"))
        f_pol[p] = sc["fast"][p] >= (thr if low is None else np.where(named[p], min(thr, low), thr))
    n = len(sc["fast"][POLICIES[0]])
    m_pol = {p: (sc["multilingual_block"][p] >= chosen[p]["multilingual_block_above"]) if "multilingual_block_above" in chosen[p]
             else np.zeros(n, dtype=bool) for p in POLICIES}
    h_block = np.any(list(h_pol.values()), axis=0)
    s_block = np.any(list(s_pol.values()), axis=0)
    s_allow = np.all([sc.get("static_allow", sc["static"])[p] <= chosen[p]["static_allow_below"] for p in POLICIES], axis=0)
    s_allow &= ~np.any(list(named.values()), axis=0)
    m_block = ~h_block & ~s_block & ~s_allow & np.any(list(m_pol.values()), axis=0)
    reached = ~h_block & ~s_block & ~s_allow & ~m_block
    flags = {p: np.where(h_block, h_pol[p], np.where(s_block, s_pol[p], np.where(m_block, m_pol[p], reached & f_pol[p])))
             for p in POLICIES}
    block = np.any(list(flags.values()), axis=0)
    return block, reached, flags


def allow_miss(spec: float | dict[str, float], policy: str) -> float:
    """``--allow-miss`` for ``policy``: one number for all, or a mapping (``default`` for the rest)."""
    if isinstance(spec, dict):
        return float(spec.get(policy, spec.get("default", 0.01)))
    return float(spec)


def miss_text(spec: float | dict[str, float]) -> str:
    """``--allow-miss`` in words for the presets' comments: ``1%`` or ``1% (jailbreak), 3% (harmful_request)``."""
    if not isinstance(spec, dict):
        return f"{float(spec):.0%}"
    return ", ".join(f"{allow_miss(spec, p):.0%} ({p})" for p in POLICIES)


PRESETS = Path(__file__).with_name("presets")  # the two presets, with ${...} where the tuned numbers go


def combine_scores(sc: dict[str, dict[str, np.ndarray]], combine: dict[str, dict[str, float]],
                   fills: dict[str, dict[str, float | None]] | None = None) -> dict[str, np.ndarray]:
    """The fast tier's scores as the router decides on them with ``combine``: each text's scores go
    through the router's own :func:`~safecascade.router.combine.combined`, with each earlier tier's
    trace rebuilt from :func:`score_all`'s arrays (its score raised to its parts' highest,
    ``<tier>_parts``; whether it read the text only in windows, ``<tier>_skipped``; then its score of
    the fast tier's evidence, ``<tier>_evidence``) and its ``fill`` (``fills[policy][tier]``; none:
    left out); other policies unchanged."""
    out = dict(sc["fast"])
    for p, weights in combine.items():
        terms = {p: {t: as_term(float(w), ((fills or {}).get(p) or {}).get(t)) for t, w in weights.items()}}
        col = []
        for i, own in enumerate(sc["fast"][p]):
            skipped = {t for t in weights if f"{t}_skipped" in sc and sc[f"{t}_skipped"][p][i]}
            path = [TierTrace(tier=t, outcome="escalate", scores={p: float(sc[t][p][i])} if t in skipped else {p: float(sc.get(f"{t}_parts", sc[t])[p][i])},
                              info={"parts_skipped": True} if t in skipped else {})
                    for t in weights]
            on_ev = {t: {p: float(sc[f"{t}_evidence"][p][i])} for t in skipped
                     if f"{t}_evidence" in sc and np.isfinite(sc[f"{t}_evidence"][p][i])}
            col.append(combined(TierResult(scores={p: float(own)}), path, terms, on_ev).scores[p])
        out[p] = np.array(col)
    return out


def as_term(weight: float, fill: "float | Term | None") -> Term:
    """A ``combine`` term from a tuned fill (a :class:`Term` with ``fill`` and ``fill_none``, or a
    bare fill score)."""
    if isinstance(fill, Term):
        return Term(weight, fill.fill, fill.fill_none)
    return Term(weight, fill)


def tune_fills(sc: dict[str, dict[str, np.ndarray]], combine: dict[str, dict[str, float]],
               pick: Callable[[str, np.ndarray], float], rounds: int = 4) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """The combined scores and each combined tier's ``fill``: the score with which a text that tier
    did not judge whole is decided as the same cascade without that tier decides it, at the
    threshold tuned for it (``pick(policy, scores)``; with one earlier tier: the fast tier's own
    threshold), found by a few rounds of fixed-point iteration (the combined threshold depends on
    the fills of the texts among the val texts that the tier did not judge). With several earlier
    tiers each also gets a ``fill_none``: an equal share of the shift that decides a text none of
    them judged (a long document in a language the static tier does not read) at the fast tier's
    own threshold. The fills are :class:`Term` objects (``fill``, ``fill_none``)."""
    fills: dict[str, dict[str, Any]] = {}
    own = {p: pick(p, sc["fast"][p]) for p in combine}
    without: dict[str, dict[str, float]] = {}  # policy -> tier -> threshold of the cascade without it
    for p, weights in combine.items():
        used = {t: float(w) for t, w in weights.items() if float(w) > 0}
        for t in used:
            rest = {u: w for u, w in used.items() if u != t}
            fewer = tune_fills(sc, {p: rest}, pick, rounds)[0][p] if rest else sc["fast"][p]
            without.setdefault(p, {})[t] = pick(p, fewer)
    comb = combine_scores(sc, combine, fills)
    for _ in range(rounds):
        for p, weights in combine.items():
            thr = pick(p, comb[p])
            n = sum(float(w) > 0 for w in weights.values())
            fills[p] = {t: Term(float(w), round(fill_for(without[p][t], thr, float(w)), 4),
                                round(fill_for(own[p], thr, float(w) * n), 4) if n > 1 else None)
                        for t, w in weights.items() if float(w) > 0}
        comb = combine_scores(sc, combine, fills)
    return comb, fills


def fills_json(fills: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The tuned fills for the report: ``{policy: {tier: fill}}``, or ``{fill, fill_none}`` where both are set."""
    def one(f: Any) -> Any:
        if not isinstance(f, Term):
            return f
        return f.fill if f.fill_none is None else {"fill": f.fill, "fill_none": f.fill_none}
    return {p: {t: one(f) for t, f in ts.items()} for p, ts in fills.items()}


def combine_text(combine: dict[str, dict[str, float]], fills: dict[str, dict[str, Any]] | None = None) -> str:
    """The ``combine`` lines of the fast tier in the presets ("" for none)."""
    if not combine:
        return ""
    def term(p: str, t: str, w: float) -> str:
        f = ((fills or {}).get(p) or {}).get(t)
        if isinstance(f, dict):  # fills_json's {fill, fill_none}
            return f"{t}: {{weight: {w}, fill: {f['fill']}, fill_none: {f['fill_none']}}}"
        return f"{t}: {w}" if f is None else f"{t}: {{weight: {w}, fill: {f}}}"
    body = ", ".join(f"{p}: {{{', '.join(term(p, t, w) for t, w in ws.items())}}}" for p, ws in combine.items())
    return ("    # these policies are decided on the fast tier's logit plus weight x each earlier tier's named here\n"
            "    # (router/combine.py; docs/policies.md, \"Two tiers' evidence\", \"A second, multilingual encoder\")\n"
            f"    combine: {{{body}}}\n")


def multilingual_tier(options: dict[str, Any], blocks: dict[str, float] | None = None) -> str:
    """The multilingual tier's entry in the presets (``options``: besides ``model: default``;
    ``blocks``: the policies it blocks from a band of its own, and where)."""
    extra = "".join(f", {k}: {json.dumps(v)}" for k, v in options.items())
    langs = ", ".join(options.get("block_except_languages") or []) or "no language"
    bands = "{" + ", ".join(["default: [null, null]"] + [f"{p}: [null, {b}]" for p, b in (blocks or {}).items()]) + "}"
    own = (f"    # and blocks {', '.join(blocks)} from a band of its own, tuned as the static tier's (precision >= the target\n"
           f"    # on val), on text identified as another language than {langs} only (block_except_languages;\n"
           "    # docs/policies.md, \"Jailbreaks in other languages\", session 56)\n"
           if blocks else "")
    return ("  - name: multilingual                  # USE-multilingual v3 + a head per policy (models/multilingual-default), 16 languages\n"
            "    type: multilingual\n"
            f"    # decides {'nothing else' if blocks else 'nothing'} alone (null bands{' elsewhere' if blocks else ''}): the fast tier adds its evidence to its own (combine below;\n"
            "    # docs/policies.md, \"A second, multilingual encoder\"); documents: how a text in several lines,\n"
            "    # markup or JSON (or one over max_chars) is read per policy: through the fast tier's evidence\n"
            "    # piece, or not at all (\"Documents through the fast tier's evidence\", session 52)\n"
            f"{own}"
            f"    options: {{model: default{extra}}}\n"
            f"    bands: {bands}\n"
            "    on_error: next\n")


def write_presets(report: dict[str, Any], d: Path, args: argparse.Namespace) -> None:
    """Rewrite ``d/default.yaml`` and the tiers above the safeguard in ``d/with-safeguard.yaml``
    from the templates in ``experiments/presets`` (the safeguard tier of the existing file is kept)."""
    c, v = report["chosen"], report["val"]
    vals = "; ".join(f"{p} P {v[p]['precision_at_prevalence']:.3f} R {v[p]['recall']:.3f} F1 {v[p]['f1_at_prevalence']:.3f}" for p in POLICIES)
    smoothing = (", that share estimated with a Gaussian kernel\n# (Silverman's bandwidth, logit scale) rather than counted"
                 if getattr(args, "benign_smoothing", "none") == "silverman" else "")
    how = (f"# Bands and thresholds were tuned per policy on the val split for real traffic with\n"
           f"# `python -m experiments.tune_policy_bands --models models --work /tmp/tune --write-presets models`\n"
           f"# (the shipped heads are fit on train only, so val is out of sample): positives re-weighted to\n"
           f"# {args.prevalence:.0%} prevalence; the fast threshold is the F1-best one that flags at most\n"
           f"# {', '.join(f'{b:.1%} ({p})' for p, b in args.benign_budget.items())} of the val split's\n"
           f"# benign real user prompts (ToxicChat, neither toxic nor a jailbreak){smoothing};\n"
           f"# the static tier blocks only at precision >= {args.block_precision} and allows below the score under\n"
           f"# which {miss_text(args.allow_miss)} of the violations the fast tier blocks fall. Expected on val, each policy's own flag\n"
           f"# (at {args.prevalence:.0%} prevalence): {vals};\n"
           f"# benign real prompts blocked {v['benign_real_flag_rate']:.2%} of {v['benign_real_n']}; "
           f"{v['reached_fast_benign_real']:.1%} of them reach the fast tier.\n")
    h = args.heuristic_block
    win = read_card(d / "static-default")["window"]  # the shipped static tier's window layout
    fill = {
        "how": how,
        "allow_miss": miss_text(args.allow_miss),
        "allow_max_windows": str(args.allow_max_windows),
        "allow_tokens": str(win["window_tokens"] + (args.allow_max_windows - 1) * win["stride"]),
        "static_languages": "[" + ", ".join(args.static_languages) + "]",
        "static_block_parts": ", block_parts: true" if args.static_block_parts else "",
        "static_languages_text": ", ".join(args.static_languages) or "every language",
        "rules": ", ".join(f"{p} >= {b}" for p, b in h.items()),
        "heuristic_bands": "{" + ", ".join([f"default: [null, {max(h.values())}]"] + [f"{p}: [null, {b}]" for p, b in h.items()]) + "}",
        "static_bands": "".join(f"      {p}: [{c[p]['static_allow_below']}, {c[p]['static_block_above']}]\n" for p in POLICIES),
        "fast_thresholds": "".join(f"      {p}: {c[p]['fast_threshold']}\n" for p in POLICIES),
        "named_threshold": "{" + ", ".join(f"{p}: {v}" for p, v in args.named_threshold.items()) + "}",
        "fast_bands": "".join(f"      {p}: [{c[p]['fast_allow_below']}, {c[p]['fast_threshold']}]\n" for p in POLICIES),
        "combine": combine_text(args.combine, report.get("fills")),
        "multilingual": (multilingual_tier(multilingual_options(args), {p: c[p]["multilingual_block_above"] for p in multilingual_block(args)})
                         if uses_multilingual(args) else ""),
    }
    old = (d / "with-safeguard.yaml").read_text(encoding="utf-8")
    safeguard = old[old.index("  - name: safeguard"):]
    for name, tail in (("default.yaml", ""), ("with-safeguard.yaml", safeguard)):
        text = Template((PRESETS / name).read_text(encoding="utf-8")).substitute(fill)
        (d / name).write_text(text + tail, encoding="utf-8")
    log.info("wrote %s and %s", d / "default.yaml", d / "with-safeguard.yaml")


def val_labels(val: list[Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per policy, the 0/1 labels of the val texts labelled for it and those texts' indices."""
    y, idx = {}, {}
    for p in POLICIES:
        lab = example_labels(val, p, first_policy=POLICIES[0])
        idx[p] = labelled(lab)
        y[p] = np.asarray(lab)[idx[p]]
    return y, idx


def out_of_sample(val: list[Any], y: dict[str, np.ndarray], idx: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per policy, the mask over its labelled val texts (``y``, ``idx``: :func:`val_labels`) that
    leaves out its violations whose attack train holds (``meta["attack_in_train"]``: BIPIA's train
    file is split by context, so its val rows plant train's attack strings, and the learned tiers
    score them as they score train; as negatives of another policy they stay). A threshold chosen on
    them reads indirect injection as solved (session 57: 0.931 -> 0.988 for a rebuild)."""
    return {p: np.array([not (yy == 1 and val[i].meta.get("attack_in_train") == "1") for i, yy in zip(idx[p], y[p])], bool)
            for p in idx}


def val_figures(y: dict[str, np.ndarray], idx: dict[str, np.ndarray], flags: dict[str, np.ndarray], nv: int,
                chosen: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per policy, the val figures of its own flag (:func:`cascade_eval`'s ``flags``, first ``nv``
    rows the labelled val texts; a block for another policy is not a false positive here): precision,
    recall, F1 as counted, and precision and F1 with positives re-weighted to the tuned prevalence."""
    out = {}
    for p in POLICIES:
        b, yy, w = flags[p][:nv][idx[p]], y[p], chosen[p]["w_pos"]
        tp, fp, fn = int((b & (yy == 1)).sum()), int((b & (yy == 0)).sum()), int((~b & (yy == 1)).sum())
        out[p] = {"n": int(len(idx[p])), "precision": tp / max(1, tp + fp), "recall": tp / max(1, tp + fn),
                  "f1": 2 * tp / max(1, 2 * tp + fp + fn),
                  "precision_at_prevalence": w * tp / max(1e-9, w * tp + fp), "f1_at_prevalence": weighted_f1(yy, b, w)}
    return out


def tune(sc: dict[str, dict[str, np.ndarray]], nv: int, y: dict[str, np.ndarray], idx: dict[str, np.ndarray],
         args: argparse.Namespace, threshold_rows: dict[str, np.ndarray] | None = None,
         ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Each policy's operating point (:func:`choose`), the ``combine`` fills, and the fast tier's
    scores as the router decides on them (combined), from :func:`score_all`'s arrays ``sc``, whose
    first ``nv`` rows are the labelled val texts (``y``, ``idx``: :func:`val_labels`) and whose rest
    are the benign real user prompts the benign budget is spent on. ``threshold_rows``: per policy,
    the mask over ``y[p]`` its fast threshold is chosen on (:func:`out_of_sample`; default all)."""
    def one(p: str, fast: np.ndarray, with_allow: bool = False) -> dict[str, float]:
        s_allow = sc["static_allow"][p][idx[p]] if with_allow and "static_allow" in sc else None
        return choose(y[p], fast[idx[p]], sc["static_block"][p][idx[p]], fast[nv:], sc["static_block"][p][nv:], s_allow,
                      prevalence=args.prevalence, budget=args.benign_budget[p], block_precision=args.block_precision,
                      allow_miss=allow_miss(args.allow_miss, p), smooth_benign=args.benign_smoothing == "silverman",
                      threshold_rows=None if threshold_rows is None else threshold_rows[p])

    comb, fills = tune_fills(sc, args.combine, lambda p, fast: one(p, fast)["fast_threshold"])
    chosen = {p: one(p, comb[p], with_allow=True) for p in POLICIES}
    for p in multilingual_block(args) if uses_multilingual(args) else ():  # the multilingual tier's block band, where it has one
        chosen[p]["multilingual_block_above"] = round(block_band(
            y[p], sc["multilingual_block"][p][idx[p]], sc["multilingual_block"][p][nv:], w_pos=chosen[p]["w_pos"],
            block_precision=args.block_precision, budget=args.benign_budget[p]), 4)
    return chosen, fills, comb


def build_parser() -> argparse.ArgumentParser:
    """The tuner's command line (also read by experiments.exp_benign_cv, which tunes the same way)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--models", type=Path, default=None, help="tune these models (DIR/static-default, DIR/fast-default; heads fit on train)")
    ap.add_argument("--prevalence", type=float, default=0.03)
    ap.add_argument("--benign-budget", type=json.loads, default={"jailbreak": 0.001, "prompt_injection": 0.0026, "harmful_request": 0.0026},
                    help="per policy (JSON), the most of the val split's benign real user prompts its fast threshold may flag "
                         "(on the val split's 388 benign real prompts the defaults allow none, one and one)")
    ap.add_argument("--benign-smoothing", choices=("silverman", "none"), default="silverman",
                    help="how the fast threshold's benign-flag rate is estimated on the val split's few hundred benign "
                         "real prompts: kernel-smoothed on the logit scale with Silverman's bandwidth (default: a "
                         "threshold just above a cluster of benign scores is not read as flagging none), or counted")
    ap.add_argument("--block-precision", type=float, default=0.99)
    ap.add_argument("--allow-miss", type=json.loads, default=0.01,
                    help="the share of the violations the fast tier blocks that the static allow band may give up: "
                         "a number, or per policy (JSON, with an optional 'default')")
    ap.add_argument("--allow-max-windows", type=int, default=2,
                    help="the static tier's allow_max_windows: the longest text (in windows) its allow band may allow; written "
                         "into the presets (2: on real user prompts 1.0 ms a text cheaper than 1, block rates of padded attacks unchanged)")
    ap.add_argument("--static-block-parts", action=argparse.BooleanOptionalAction, default=False,
                    help="the static tier's block_parts: its block band is also tested on a text's parts in the Latin "
                         "script (a request planted in a document blocks as it does alone); scored that way on val and "
                         "written into the presets (tried in session 55, not shipped: docs/policies.md)")
    ap.add_argument("--static-languages", type=lambda v: tuple(x for x in v.split(",") if x), default=("en",),
                    help="comma-separated languages the static tier decides on (py3langid codes; '' for every language): a "
                         "text in another language goes on to the fast tier; scored that way on val and written into the presets")
    ap.add_argument("--write-presets", type=Path, default=None, metavar="DIR",
                    help="rewrite DIR/default.yaml and the bands of DIR/with-safeguard.yaml with the chosen numbers")
    ap.add_argument("--named-threshold", type=json.loads, default={"default": 0.5, "harmful_request": 0.0},
                    help="the fast tier's threshold (JSON: default and/or per policy) for a policy a heuristic rule named "
                         "without deciding; written into the presets ({} for none). harmful_request 0.0: a harmful-request "
                         "rule's name blocks (every text those rules name without deciding, across the benchmark and the "
                         "probes, violates the policy; docs/policies.md, session 40)")
    ap.add_argument("--combine", type=json.loads, default=DEFAULT_COMBINE,
                    help="policy -> {earlier tier: weight} (JSON): the fast tier decides these policies on its logit plus "
                         "weight x the earlier tier's (router/combine.py); written into the presets ({} for none)")
    ap.add_argument("--multilingual-options", type=json.loads, default=DEFAULT_MULTILINGUAL_OPTIONS,
                    help="options of the multilingual tier (JSON, e.g. {\"max_chars\": 1000, \"parts\": false}): scored that way "
                         "on val and written into the presets (default: the shipped default's)")
    ap.add_argument("--multilingual-block", type=lambda v: tuple(x for x in v.split(",") if x), default=("jailbreak",),
                    help="comma-separated policies the multilingual tier blocks from a band of its own (tuned as the static "
                         "tier's: precision >= --block-precision, within the benign budget), tested on its block score: with "
                         "the default options' block_except_languages [en], text identified as another language only; '' for "
                         "none (null bands; session 56: docs/policies.md, \"Jailbreaks in other languages\")")
    ap.add_argument("--heuristic-block", type=json.loads, default={"jailbreak": 0.992, "prompt_injection": 0.99, "harmful_request": 0.99},
                    help="the heuristic tier's block_above per policy (JSON)")
    return ap


def models_to_tune(args: argparse.Namespace) -> dict[str, Path]:
    """The static and fast model dirs to tune: ``--models`` (checked to be fit on train only), or
    train-only twins built in ``--work``."""
    if args.models is None:
        return build_twins(args.work)
    kinds = ["static", "fast"] + (["multilingual"] if uses_multilingual(args) else [])
    for kind in kinds:
        card = json.loads((args.models / f"{kind}-default" / "card.json").read_text(encoding="utf-8"))
        if card.get("fit_on") != "train":
            raise SystemExit(f"{args.models}/{kind}-default was fit on {card.get('fit_on')}: its val scores are in sample")
    return {kind: args.models / f"{kind}-default" for kind in kinds}


def multilingual_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--multilingual-options`` ({} for a Namespace built by hand without it, as exp_benign_cv's tests do)."""
    return dict(getattr(args, "multilingual_options", {}) or {})


def multilingual_block(args: argparse.Namespace) -> tuple[str, ...]:
    """``--multilingual-block`` (none for a Namespace built by hand without it; the tier is in the
    presets, and scored, only where ``--combine`` names it)."""
    return tuple(getattr(args, "multilingual_block", ()) or ())


def uses_multilingual(args: argparse.Namespace) -> bool:
    """Whether ``--combine`` adds the multilingual tier's evidence (then it is scored and written into the presets)."""
    return any("multilingual" in terms for terms in args.combine.values())


def cached_scores(args: argparse.Namespace, twins: dict[str, Path], texts: list[str], cache: Path) -> dict[str, dict[str, np.ndarray]]:
    """:func:`score_all` of ``texts`` by the heuristic tier and the static and fast tiers of
    ``twins`` as ``args`` configure them, kept in (and read back from) the ``cache`` .npz."""
    keys = ["heuristic", "static", "fast", "static_allow", "static_block", "static_parts", "static_skipped", "static_evidence"]
    if "multilingual" in twins:
        keys += ["multilingual", "multilingual_parts", "multilingual_skipped", "multilingual_evidence", "multilingual_block"]
    key = scores_key(args, twins, texts)
    z = np.load(cache) if cache.is_file() else None
    if z is not None and all(f"{t}|{POLICIES[0]}" in z for t in keys) and "key" in z and str(z["key"]) == key:
        return {t: {p: z[f"{t}|{p}"] for p in POLICIES} for t in keys}
    # no cache, one written before a key was added, or one of other texts, models, rules or options
    tiers = {"heuristic": HeuristicTier.default(policies=POLICIES),
             "static": StaticTier(model_dir=twins["static"], allow_max_windows=args.allow_max_windows, languages=args.static_languages,
                                  block_parts=args.static_block_parts),
             "fast": FastTier(model_dir=twins["fast"], quantized=True)}
    if "multilingual" in twins:
        tiers = {**{k: v for k, v in tiers.items() if k != "fast"},
                 "multilingual": MultilingualTier(model_dir=twins["multilingual"], **multilingual_options(args)),
                 "fast": tiers["fast"]}
    sc = score_all(tiers, texts)
    np.savez(cache, key=np.array(key), **{f"{t}|{p}": v for t, d in sc.items() for p, v in d.items()})
    return sc


def scores_key(args: argparse.Namespace, twins: dict[str, Path], texts: list[str]) -> str:
    """What :func:`cached_scores`' cache depends on: the two model dirs' content, the shipped
    heuristic rules, the static options and the texts (the library tuner's hashing helpers). Keyed
    on the number of texts alone, the previous build's scores were read back after `make models`
    rebuilt the models in place, and the presets were tuned on stale scores."""
    return short_hash({"models": {k: dir_sha(d) for k, d in sorted(twins.items())}, "rules": file_sha(default_rules_path()),
                       "static": [args.allow_max_windows, list(args.static_languages), *(["block_parts"] if args.static_block_parts else [])],
                       "texts": texts,
                       **({"multilingual": multilingual_options(args)} if multilingual_options(args) else {})})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    twins = models_to_tune(args)
    # the val split the learned tiers calibrate on: the measure-only planted rows (92 lines of ours,
    # repeated) would move every policy's operating point for one narrow pattern
    val = training_split("val")
    benign = [e.text for e in real_user_benign("val")]
    texts = [e.text for e in val] + benign
    sc = cached_scores(args, twins, texts, args.work / f"val_scores_amw{args.allow_max_windows}_{'-'.join(args.static_languages) or 'all'}"
                                                      f"{'_bp' if args.static_block_parts else ''}.npz")
    nv = len(val)
    y, idx = val_labels(val)
    keep = out_of_sample(val, y, idx)
    for p in POLICIES:
        if not keep[p].all():
            log.info("%s: the fast threshold is chosen without %d val attacks that train holds", p, int((~keep[p]).sum()))
    chosen, fills, sc["fast"] = tune(sc, nv, y, idx, args, keep)
    block, reached, flags = cascade_eval(y, idx, sc, chosen, args.heuristic_block, args.named_threshold)
    report: dict[str, Any] = {"chosen": chosen, "fills": fills_json(fills), "val": val_figures(y, idx, flags, nv, chosen)}
    report["val"]["benign_real_flag_rate"] = float(block[nv:].mean())
    report["val"]["benign_real_n"] = int(len(benign))
    report["val"]["reached_fast"] = float(reached[:nv].mean())
    report["val"]["reached_fast_benign_real"] = float(reached[nv:].mean())
    print(json.dumps(report, indent=2))
    (args.work / "chosen.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    if args.write_presets is not None:
        write_presets(report, args.write_presets, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
