"""A disk cache around any tier, so experiments pay for slow tiers (the safeguard LLM) only once.

Registered as tier type ``cached`` when this module is imported::

    - name: safeguard
      type: cached
      options:
        inner: safeguard                 # the wrapped tier's type
        cache: experiments/results/_work/tier_cache.sqlite
        options: {backend: llama_cpp, model_path: stand-in, ...}   # the wrapped tier's options

Entries are keyed by (inner type, inner options, policy hashes, text hash), so a different model,
prompt, effort or policy text never reuses a stale verdict. The stored result keeps the latency and
token cost measured when it was computed (``info.cached`` is set on a hit), so cost figures stay
those of the real tier, and its allow and block scores and evidence (``TierResult.evidence``, the
pieces of a long text a combining tier has an earlier tier score), so a cached tier decides as the
live one does. Results with an ``error`` are not cached.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Sequence

from safecascade.hashing import text_hash
from safecascade.tiers.base import TierResult, TierSpec, create_tier, register_tier


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))


class CachedTier:
    """Wraps ``inner``; looks every text up in a SQLite table before calling it."""

    def __init__(self, *, inner: Any, fingerprint: str, path: str | Path):
        self.inner = inner
        self.name = inner.name
        self.policies = tuple(inner.policies)
        self.fingerprint = fingerprint
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_spec(cls, spec: TierSpec) -> "CachedTier":
        opts = dict(spec.options)
        inner_type = opts.get("inner")
        if not inner_type:
            raise ValueError(f"cached tier {spec.name!r}: options.inner (the wrapped tier type) is required")
        inner_opts = dict(opts.get("options") or {})
        cache = opts.get("cache") or "tier_cache.sqlite"
        path = Path(cache) if Path(cache).is_absolute() else spec.base_dir / cache
        inner = create_tier(TierSpec(name=spec.name, type=inner_type, options=inner_opts, policies=spec.policies,
                                     base_dir=spec.base_dir))
        fp = hashlib.sha256(json.dumps({"type": inner_type, "options": inner_opts,
                                        "policies": {k: getattr(v, "sha", str(v)) for k, v in spec.policies.items()}},
                                       sort_keys=True, default=str).encode()).hexdigest()[:16]
        return cls(inner=inner, fingerprint=fp, path=path)

    def _key(self, text: str) -> str:
        return f"{self.fingerprint}:{text_hash(text)}"

    def classify(self, texts: Sequence[str]) -> list[TierResult]:
        keys = [self._key(t) for t in texts]
        with self._lock:
            rows = dict(self._db.execute(
                f"SELECT key, value FROM results WHERE key IN ({','.join('?' * len(keys))})", keys).fetchall()) if keys else {}
        out: list[TierResult | None] = []
        todo = []
        for i, k in enumerate(keys):
            if k in rows:
                d = json.loads(rows[k])
                d["rule_ids"] = {p: tuple(v) for p, v in d.get("rule_ids", {}).items()}
                d["warnings"] = tuple(d.get("warnings", ()))
                d["info"] = {**d.get("info", {}), "cached": True}
                out.append(TierResult(**d))
                self.hits += 1
            else:
                out.append(None)
                todo.append(i)
        if todo:
            fresh = self.inner.classify([texts[i] for i in todo])
            self.misses += len(todo)
            new = []
            for i, r in zip(todo, fresh):
                out[i] = r
                if r.error is None:
                    new.append((keys[i], json.dumps({
                        "scores": dict(r.scores), "rule_ids": {p: list(v) for p, v in r.rule_ids.items()},
                        "warnings": list(r.warnings), "info": _jsonable(dict(r.info)), "cost": dict(r.cost),
                        "latency_ms": r.latency_ms, "allow_scores": dict(r.allow_scores), "block_scores": dict(r.block_scores),
                        "evidence": dict(r.evidence)})))
            with self._lock:
                self._db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?)", new)
                self._db.commit()
        return [r for r in out if r is not None]

    def close(self) -> None:
        closer = getattr(self.inner, "close", None)
        if callable(closer):
            closer()
        with self._lock:
            self._db.close()


register_tier("cached")(CachedTier.from_spec)
