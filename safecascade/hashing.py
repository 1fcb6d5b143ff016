"""Hashes the project uses to name things: a text's hash and a file's hash (core layer, no imports
from the rest of the package)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def text_hash(text: str) -> str:
    """sha256 of the UTF-8 text (surrogates replaced), first 16 hex digits (the Decision's ``text_hash``)."""
    return hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()[:16]


def file_sha(path: str | Path, n: int | None = None) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks: the full hex digest, or its first ``n`` digits."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest() if n is None else h.hexdigest()[:n]
