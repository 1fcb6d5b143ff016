"""Where built artifacts, caches and the local MLflow store live (never inside the git tree)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$SAFECASCADE_HOME`` or ``$XDG_CACHE_HOME/safecascade`` (default ``~/.cache/safecascade``)."""
    env = os.environ.get("SAFECASCADE_HOME")
    if env:
        root = Path(env)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "safecascade"
    root.mkdir(parents=True, exist_ok=True)
    return root


def artifact_dir(*parts: str) -> Path:
    """A sub-directory of :func:`cache_dir`, created on demand."""
    p = cache_dir().joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p
