"""The default models shipped inside the package (``models/fast-default``, ``models/static-default``).

Each shipped artifact directory has a ``provenance.json`` that lists every file with its size and
sha256, plus the recipe, training-data hashes, the training code's commit and val/test metrics
(written by ``python -m safecascade.training.ship_models``, ``make models``). ``model: default``
loads these files directly: no build step, no torch. :func:`verify_dir` checks a directory
against its provenance and raises :class:`ShippedModelError` naming the file and the reason, so a
missing, truncated or corrupt file fails at ``Router.load()`` instead of scoring garbage.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROVENANCE = "provenance.json"
SHIPPED_NAMES = {"fast": "fast-default", "static": "static-default"}
_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


class ShippedModelError(ValueError):
    """A shipped model file is missing, truncated or does not match its recorded sha256."""


def models_root() -> Path:
    """The installed ``safecascade.models`` package directory (``models/`` in a checkout)."""
    import safecascade.models as pkg

    return Path(pkg.__file__).resolve().parent


def shipped_dir(kind: str) -> Path:
    """The shipped artifact directory for ``fast`` or ``static``."""
    if kind not in SHIPPED_NAMES:
        raise ValueError(f"no shipped default model of kind {kind!r} (kinds: {', '.join(SHIPPED_NAMES)})")
    return models_root() / SHIPPED_NAMES[kind]


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        got = _VERIFIED.get(key) or file_sha256(p)
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


def add_arguments(parser: Any) -> None:
    sub = parser.add_subparsers(dest="models_cmd", required=True)
    v = sub.add_parser("verify", help="check the shipped default models against their provenance sha256s")
    v.add_argument("--root", default=None, help="models directory (default: the installed package's)")
    b = sub.add_parser("build", help="rebuild exactly the shipped set into models/ (needs the train extra; slow)")
    b.add_argument("--out", default=None, help="models directory to write (default: the installed package's)")
    b.add_argument("--note", default="", help="the changelog line's note")
    b.add_argument("--bits", type=int, default=8, choices=(8, 16), help="fast tier embedding table storage (8)")


def run(args: Any) -> int:
    if args.models_cmd == "verify":
        bad = 0
        for d, status in verify_all(args.root):
            print(f"{d}: {status}")
            bad += not status.startswith("ok")
        return 1 if bad else 0
    from safecascade.training.ship_models import ship

    ship(Path(args.out) if args.out else models_root(), bits=args.bits, note=args.note)
    return 0
