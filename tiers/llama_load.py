"""Loading a GGUF with llama-cpp-python without llama.cpp's extra CPU buffer types.

llama.cpp "repacks" weights into extra buffer types at load time (``use_extra_bufts``); on Intel
CPUs with AMX one of them is the AMX buffer, whose matmul segfaults on the first generation with
common quantisations (ggml-org/llama.cpp#20824; the AMX reports in ollama on AWS m7i and GCP C4).
A segfault ends the whole process, so safecascade loads models with ``use_extra_bufts = False``
unless the operator turns it back on (tier option ``extra_buffer_types: true``, or
``SAFECASCADE_LLAMA_EXTRA_BUFTS=1`` for ``python -m safecascade.tiers.llama_load`` servers). The
cost is the repacked kernels' speed on CPUs where they work; GPU offload is unaffected.

llama-cpp-python's ``Llama`` fills ``llama_model_params`` itself and exposes no argument for the
field, so :func:`load_llama` wraps ``llama_model_default_params`` for the duration of the
constructor (under a lock; the wrapper only flips that one field).

``python -m safecascade.tiers.llama_load --model ... --host ... --port ...`` runs
``llama_cpp.server`` (the OpenAI-compatible server) with the same setting.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Callable, Iterator

ENV_EXTRA_BUFTS = "SAFECASCADE_LLAMA_EXTRA_BUFTS"
_LOCK = threading.Lock()


def env_extra_buffer_types() -> bool:
    """``SAFECASCADE_LLAMA_EXTRA_BUFTS``: ``1/true/yes/on`` turns the extra buffer types on."""
    v = os.environ.get(ENV_EXTRA_BUFTS, "").strip().lower()
    if v in ("", "0", "false", "no", "off"):
        return False
    if v in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{ENV_EXTRA_BUFTS}={v!r}: expected 1/0, true/false, yes/no or on/off")


def _with_extra_bufts(original: Callable[[], Any], enabled: bool) -> Callable[[], Any]:
    def params() -> Any:
        p = original()
        if hasattr(p, "use_extra_bufts"):  # llama.cpp builds from mid-2025 on
            p.use_extra_bufts = bool(enabled)
        return p

    return params


@contextlib.contextmanager
def extra_buffer_types(enabled: bool) -> Iterator[None]:
    """While active, ``llama_model_default_params()`` returns params with ``use_extra_bufts = enabled``."""
    import llama_cpp.llama_cpp as lc  # heavy, optional: the [llm] extra

    with _LOCK:
        original = lc.llama_model_default_params
        lc.llama_model_default_params = _with_extra_bufts(original, enabled)
        try:
            yield
        finally:
            lc.llama_model_default_params = original


def load_llama(*, extra_bufts: bool = False, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(**kwargs)`` with llama.cpp's extra buffer types on or off (default off)."""
    import llama_cpp  # heavy, optional: the [llm] extra

    with extra_buffer_types(extra_bufts):
        return llama_cpp.Llama(**kwargs)


def main() -> None:  # pragma: no cover - exercised through a subprocess in the tests
    """``llama_cpp.server``'s command line, with the extra buffer types off unless the env var says on."""
    import llama_cpp.llama_cpp as lc  # heavy, optional: the [llm] extra
    from llama_cpp.server.__main__ import main as server_main  # heavy, optional: llama-cpp-python[server]

    # this process only serves the model: the setting holds for its lifetime
    lc.llama_model_default_params = _with_extra_bufts(lc.llama_model_default_params, env_extra_buffer_types())
    server_main()


if __name__ == "__main__":  # pragma: no cover
    main()
