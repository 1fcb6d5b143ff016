"""The embedded default fast and static tiers: their recipe and :func:`ensure_default_models`,
which builds ``fast-default`` / ``static-default`` into the cache on first use (built in a temp
dir, then renamed) and reuses them after, unless they were built with another recipe."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from safecascade.paths import artifact_dir
from safecascade.tiers.onnx_encoder import CARD_NAME
from safecascade.training.fast_train import train_from_benchmark, training_data_hash
from safecascade.training.train_config import TrainConfig

log = logging.getLogger(__name__)

DEFAULT_FORMAT = {"fast": 2, "static": 1, "multilingual": 1}  # card format the embedded defaults are built with
# The recipe of the embedded defaults (and of `safecascade train fast|static` without flags): three
# policies (jailbreak, prompt_injection, harmful_request) on the multi-policy benchmark
# (training/policy_data.py); one head per policy on one encoder pass; the encoder fine-tuned for all
# three policies on the train split (pairs over four classes, benign and one per policy, texts drawn
# by row weight; up to 500 steps of 16 pairs within a 35-minute cap: the shipped encoder did 308 on a
# busy 2-core machine; on val it beat the jailbreak-only tuned encoder on every policy's ROC-AUC,
# harmful-request recall at 1% FPR 0.577 -> 0.615); heads fit on train so val stays out of sample for
# calibration, the lexical stack, the int8 gate and per-policy bands
# (experiments/tune_policy_bands.py); MLP heads (one hidden layer of 256, torch, 40 epochs: seconds
# per policy; on val they beat logistic heads, e.g. harmful-request ROC-AUC of the embedding head
# 0.934 -> 0.959); the weak harmful-request labels (BeaverTails, Safety-Tuned LLaMAs' rewritten
# red-team prompts) count 0.3x in the heads and the lexical block, the rows' other labels in full
# (on val, the harmful-request embedding head's recall on the strongly labelled violations at one
# benign real prompt flagged in 388 rose from 0.40 to 0.56). Measured in docs/policies.md.
POLICIES_RECIPE: dict[str, dict[str, Any]] = {
    "fast": {"benchmark": "policies", "policies": ("jailbreak", "prompt_injection", "harmful_request"), "fit_on": "train",
             "head": "mlp", "finetune": True, "finetune_benchmark": "", "finetune_pairs": 8000,
             "finetune_max_seconds": 2100.0, "int8": True, "weak_label_weight": 0.3},
    "static": {"benchmark": "policies", "policies": ("jailbreak", "prompt_injection", "harmful_request"), "fit_on": "train",
               "head": "mlp", "weak_label_weight": 0.3},
    # USE-multilingual v3 (tiers/multilingual.py) with the same heads, each text also read lower-cased
    # (the encoder reads case; docs/policies.md, "A second, multilingual encoder" and "Case")
    "multilingual": {"benchmark": "policies", "policies": ("jailbreak", "prompt_injection", "harmful_request"), "fit_on": "train",
                     "head": "mlp", "weak_label_weight": 0.3, "lowercase_copies": True},
}
DEFAULT_RECIPE: dict[str, dict[str, Any]] = POLICIES_RECIPE
# The jailbreak-only recipe the defaults shipped with before the three policies (kept to rebuild
# that set: `train_from_benchmark(TrainConfig(kind=kind, **JAILBREAK_RECIPE[kind]), out_dir=...)`).
JAILBREAK_RECIPE: dict[str, dict[str, Any]] = {
    "fast": {"finetune": True, "finetune_pairs": 8000, "finetune_max_seconds": 2400.0,  # 500 steps of 16 pairs
             "int8": True},  # model.int8.onnx too, kept only if it passes the val F1 gate
    "static": {},
}


def default_is_current(kind: str, d: Path) -> tuple[bool, str]:
    """Whether an artifact dir was built with the current default recipe on the current training
    data (and why not)."""
    try:
        card = json.loads((d / CARD_NAME).read_text(encoding="utf-8"))
        fmt = int(card.get("format", 1))
        cfg = dict(card.get("config") or {})
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        return False, f"unreadable card ({exc})"
    if fmt < DEFAULT_FORMAT[kind]:
        return False, f"card format {fmt} < {DEFAULT_FORMAT[kind]}"
    stale = {k: cfg.get(k) for k, v in DEFAULT_RECIPE[kind].items() if cfg.get(k) != json.loads(json.dumps(v))}
    if stale:
        return False, f"built with {stale}, the default recipe is {DEFAULT_RECIPE[kind]}"
    got = (card.get("training_data") or {}).get("hash")
    want = training_data_hash(TrainConfig(kind=kind, **DEFAULT_RECIPE[kind]))
    if got != want:
        return False, f"trained on data {got}, the default recipe's training data is now {want}"
    return True, "current"


def ensure_default_models(progress: bool = True, *, kinds: Sequence[str] = ("fast", "static", "multilingual"), force: bool = False) -> dict[str, Path]:
    """Build ``fast-default`` and ``static-default`` (jailbreak benchmark) into the cache if missing.

    Built in a temp dir next to the target and renamed into place, so a crash never leaves a
    half-written default. Returns ``{"fast": path, "static": path}``.
    """
    root = artifact_dir("models")
    out: dict[str, Path] = {}
    for kind in kinds:
        target = root / f"{kind}-default"
        if (target / CARD_NAME).is_file() and not force:
            current, why = default_is_current(kind, target)
            if current:
                out[kind] = target
                continue
            log.info("%s is out of date (%s): rebuilding", target, why)
        tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-default-", dir=root))
        try:
            t0 = time.perf_counter()
            # the test split is the eval harness's job: skipping it here saves a third of the embedding time
            train_from_benchmark(TrainConfig(kind=kind, **DEFAULT_RECIPE[kind]), out_dir=tmp, progress=progress, with_test=False)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
            log.info("built %s in %.0fs", target, time.perf_counter() - t0)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        out[kind] = target
    return out
