"""The default models shipped inside the package (``models/fast-default``, ``models/static-default``,
``models/multilingual-default``).

Each shipped artifact directory has a ``provenance.json`` that lists every file with its size and
sha256, plus the recipe, training-data hashes, the training code's commit and val/test metrics
(written by ``safecascade models build``, ``make models``: :mod:`safecascade.training.ship_models`). ``model: default``
loads these files directly: no build step, no torch. :func:`verify_dir` checks a directory
against its provenance and raises :class:`ShippedModelError` naming the file and the reason, so a
missing, truncated or corrupt file fails at ``Router.load()`` instead of scoring garbage.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import safecascade.models
from safecascade.hashing import file_sha

log = logging.getLogger(__name__)

PROVENANCE = "provenance.json"
SHIPPED_NAMES = {"fast": "fast-default", "static": "static-default", "multilingual": "multilingual-default"}
_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


class ShippedModelError(ValueError):
    """A shipped model file is missing, truncated or does not match its recorded sha256."""


def models_root() -> Path:
    """The installed ``safecascade.models`` package directory (``models/`` in a checkout)."""
    return Path(safecascade.models.__file__).resolve().parent


def shipped_dir(kind: str) -> Path:
    """The shipped artifact directory for ``fast``, ``static`` or ``multilingual``."""
    if kind not in SHIPPED_NAMES:
        raise ValueError(f"no shipped default model of kind {kind!r} (kinds: {', '.join(SHIPPED_NAMES)})")
    return models_root() / SHIPPED_NAMES[kind]


def read_provenance(d: str | Path) -> dict[str, Any]:
    """A shipped directory's provenance (raises :class:`ShippedModelError` when unreadable)."""
    p = Path(d) / PROVENANCE
    try:
        prov = json.loads(p.read_text(encoding="utf-8"))
        files = prov["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("'files' must be a non-empty object")
    except FileNotFoundError as exc:
        raise ShippedModelError(f"{p}: missing (the shipped model has no provenance; reinstall safecascade "
                                f"or rebuild with `make models`)") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ShippedModelError(f"{p}: unreadable provenance ({exc})") from exc
    return prov


def verify_dir(d: str | Path, *, full: bool = True) -> dict[str, Any]:
    """Check every file listed in ``d``'s provenance: present, the recorded size, the recorded sha256
    (``full``; hashes are remembered per process by size and mtime). Returns the provenance."""
    d = Path(d)
    prov = read_provenance(d)
    for name, meta in sorted(prov["files"].items()):
        p = d / name
        try:
            st = p.stat()
        except FileNotFoundError as exc:
            raise ShippedModelError(f"{p}: missing (listed in {d / PROVENANCE})") from exc
        size, want = int(meta["bytes"]), str(meta["sha256"])
        if st.st_size != size:
            raise ShippedModelError(f"{p}: {st.st_size} bytes, the provenance records {size} (truncated or replaced)")
        if not full:
            continue
        key = (str(p), st.st_size, st.st_mtime_ns)
        got = _VERIFIED.get(key) or file_sha(p)
        if got != want:
            raise ShippedModelError(f"{p}: sha256 {got[:16]}..., the provenance records {want[:16]}... (corrupt)")
        _VERIFIED[key] = got
    return prov


def verify_all(root: str | Path | None = None) -> list[tuple[str, str]]:
    """``(directory, 'ok' or the problem)`` for every shipped model under ``root`` (default: installed)."""
    base = Path(root) if root else models_root()
    out = []
    for name in sorted(SHIPPED_NAMES.values()):
        d = base / name
        try:
            prov = verify_dir(d)
            out.append((str(d), f"ok ({len(prov['files'])} files, {sum(int(m['bytes']) for m in prov['files'].values()) / 1e6:.1f} MB)"))
        except ShippedModelError as exc:
            out.append((str(d), f"FAILED: {exc}"))
    return out
