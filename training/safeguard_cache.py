"""Cached safeguard judgements: the library's safeguard tier, with every output kept on disk.

Experiments and ``safecascade policy-test`` score the same texts under many policy variants,
efforts and modes; a safeguard call costs seconds (the stand-in GGUF on a CPU core) to minutes
(a large model), so every output is cached in a small SQLite file keyed by

* the model fingerprint (GGUF file name + size + sha256 marker, or endpoint URL + model name),
* the exact rendered prompt(s) the tier sends for the text (this covers the policy text, the
  joint/separate multi-policy layout, the prompt format and, for harmony models, the reasoning
  effort; a chat-template model never sees the effort, so its prompts do not change with it),
* the decoding options that change the output (max tokens, temperature, grammar, prefill,
  retries, hallucination penalty).

A rerun with the same inputs generates nothing (the model is still loaded, to render the
prompts that form the key). The cached latency and token counts are those of the run that
produced the output.

    judge = SafeguardJudge(backend_options={"model_path": "stand-in", "n_threads": 1},
                           cache_path=Path("cache.sqlite"))
    results = judge.judge({"jailbreak": policy}, ["some text"], options={"reasoning_effort": "low"})
    results[0].verdicts["jailbreak"].violation

The tier is built through :class:`safecascade.tiers.safeguard.SafeguardTier` and
:func:`safecascade.tiers.safeguard.backends.create_backend` - no llama.cpp calls here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from tqdm import tqdm

from safecascade.tiers.safeguard import SafeguardTier
from safecascade.tiers.safeguard.backends import create_backend
from safecascade.tiers.safeguard.stand_in import stand_in_path

log = logging.getLogger(__name__)

CACHE_VERSION = "sgcache-v1"
# Tier options that change what the model outputs or how it is scored (part of the cache key).
_KEY_OPTIONS = ("max_tokens", "temperature", "grammar", "prefill", "malformed_retries", "hallucination_penalty",
                "hallucination_factor", "multi_policy", "prompt_format", "seed", "on_overflow", "max_windows")


@dataclass(frozen=True, kw_only=True)
class PolicyVerdict:
    """One policy's verdict for one text, as the safeguard tier returned it."""

    violation: int
    probability: float
    rule_ids: tuple[str, ...] = ()        # cited ids that exist in the policy
    hallucinated: tuple[str, ...] = ()    # cited ids that do not
    confidence: str | None = None
    category: str = ""
    rationale: str = ""


@dataclass(frozen=True, kw_only=True)
class Judgement:
    """The safeguard tier's output for one text (``error`` set when the tier failed)."""

    verdicts: dict[str, PolicyVerdict] = field(default_factory=dict)
    error: str | None = None
    latency_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    calls: int = 0
    malformed: tuple[str, ...] = ()       # parse-failure reasons, retried ones included
    outputs: tuple[str, ...] = ()         # raw model completions (analysis channel included)
    from_cache: bool = False

    def prediction(self, policy: str) -> int | None:
        """0/1 for ``policy``, None when the tier failed or gave no verdict for it."""
        v = self.verdicts.get(policy)
        return None if v is None else int(v.violation)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("from_cache")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, from_cache: bool = False) -> "Judgement":
        verdicts = {k: PolicyVerdict(**{**v, "rule_ids": tuple(v.get("rule_ids", ())),
                                        "hallucinated": tuple(v.get("hallucinated", ()))})
                    for k, v in (d.get("verdicts") or {}).items()}
        return cls(verdicts=verdicts, error=d.get("error"), latency_ms=float(d.get("latency_ms", 0.0)),
                   prompt_tokens=int(d.get("prompt_tokens", 0)), completion_tokens=int(d.get("completion_tokens", 0)),
                   reasoning_tokens=int(d.get("reasoning_tokens", 0)), calls=int(d.get("calls", 0)),
                   malformed=tuple(d.get("malformed", ())), outputs=tuple(d.get("outputs", ())), from_cache=from_cache)


class _Recorder:
    """Wraps a backend and keeps the raw text of every completion (the tier does not return it)."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.outputs: list[str] = []

    def complete(self, prompt: Any, **kwargs: Any) -> Any:
        comp = self._inner.complete(prompt, **kwargs)
        text = comp.text if comp.reasoning is None else f"{comp.reasoning}\n{comp.text}"
        self.outputs.append(getattr(prompt, "prefill", "") + text)
        return comp

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Store:
    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS judgements (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL)")
            self._db.commit()

    def get(self, key: str) -> dict | None:
        if self._db is None:
            return None
        with self._lock:
            row = self._db.execute("SELECT value FROM judgements WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict) -> None:
        if self._db is None:
            return
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO judgements VALUES (?, ?, ?)", (key, json.dumps(value), time.time()))
            self._db.commit()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class SafeguardJudge:
    """Score texts with the safeguard tier under any set of policies, caching every output.

    ``backend_options`` are the tier's backend options (``model_path`` / ``n_threads`` /
    ``n_ctx`` for llama.cpp, ``backend: openai`` + ``base_url`` / ``model`` for an endpoint);
    the backend is created on the first cache miss. ``tier_options`` are defaults for every
    :meth:`judge` call (e.g. ``max_tokens``). ``cache_path=None`` disables the cache.
    """

    def __init__(self, *, backend_options: Mapping[str, Any], cache_path: str | Path | None,
                 tier_options: Mapping[str, Any] | None = None):
        self.backend_options = dict(backend_options)
        self.tier_options = dict(tier_options or {})
        self._store = _Store(Path(cache_path) if cache_path is not None else None)
        self._backend: _Recorder | None = None
        self._tiers: dict[str, Any] = {}
        self.stats = {"hits": 0, "misses": 0}

    # ------------------------------------------------------------------ backend
    @property
    def backend(self) -> _Recorder:
        if self._backend is None:
            t0 = time.perf_counter()
            self._backend = _Recorder(create_backend(dict(self.backend_options), Path.cwd()))
            log.info("safeguard backend %s loaded in %.1f s", self.fingerprint(), time.perf_counter() - t0)
        return self._backend

    def fingerprint(self) -> str:
        """A stable id of the model: GGUF name + size + sha256 marker, or endpoint URL + model."""
        o = self.backend_options
        if o.get("backend", "llama_cpp") == "openai":
            return f"openai:{o.get('base_url', '')}:{o.get('model', '')}:{o.get('endpoint', 'completions')}"
        mp = o.get("model_path", "stand-in")
        if mp in (None, "", "stand-in"):
            path = stand_in_path()
        else:
            path = Path(str(mp)).expanduser()
        marker = path.with_name(path.name + ".sha256")
        sha = marker.read_text(encoding="utf-8").strip()[:16] if marker.is_file() else f"mtime{int(path.stat().st_mtime)}"
        return f"gguf:{path.name}:{path.stat().st_size}:{sha}"

    def close(self) -> None:
        if self._backend is not None:
            closer = getattr(self._backend._inner, "close", None)
            if callable(closer):
                closer()
            self._backend = None
        self._tiers.clear()
        self._store.close()

    def __enter__(self) -> "SafeguardJudge":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ tiers
    def tier(self, policies: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> Any:
        """The (memoised) SafeguardTier for these policies and options."""
        opts = {**self.tier_options, **dict(options or {})}
        tkey = json.dumps({"p": {n: p.sha for n, p in policies.items()}, "o": opts}, sort_keys=True, default=str)
        t = self._tiers.get(tkey)
        if t is None:
            t = SafeguardTier(name="safeguard", policies=dict(policies), backend=self.backend, options=opts)
            self._tiers[tkey] = t
        return t

    def _key(self, tier: Any, text: str) -> str:
        prompts = [tier.render(g, text).text for g in tier.groups]
        opts = {k: tier.opts.get(k) for k in _KEY_OPTIONS}
        opts["use_grammar"] = tier.use_grammar
        if tier.harmony:
            opts["reasoning_effort"] = tier.opts["reasoning_effort"]
        blob = json.dumps({"v": CACHE_VERSION, "model": self.fingerprint(), "prompts": prompts, "opts": opts},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode("utf-8", errors="replace")).hexdigest()

    # ------------------------------------------------------------------ judging
    def judge(self, policies: Mapping[str, Any], texts: Sequence[str], *, options: Mapping[str, Any] | None = None,
              desc: str = "", progress: bool = True) -> list[Judgement]:
        """One :class:`Judgement` per text for ``policies`` (name -> Policy), cached on disk."""
        tier = self.tier(policies, options)
        out: list[Judgement] = []
        for text in tqdm(list(texts), desc=desc or "safeguard", disable=not progress, leave=False):
            key = self._key(tier, text)
            hit = self._store.get(key)
            if hit is not None:
                self.stats["hits"] += 1
                out.append(Judgement.from_dict(hit, from_cache=True))
                continue
            self.stats["misses"] += 1
            j = self._run(tier, text)
            self._store.put(key, j.to_dict())
            out.append(j)
        return out

    def _run(self, tier: Any, text: str) -> Judgement:
        rec = self.backend
        rec.outputs.clear()
        t0 = time.perf_counter()
        r = tier.classify([text])[0]
        latency = (time.perf_counter() - t0) * 1000.0
        info = r.info or {}
        cost = r.cost or {}
        verdicts: dict[str, PolicyVerdict] = {}
        for pol, d in (info.get("verdicts") or {}).items():
            verdicts[pol] = PolicyVerdict(violation=int(d["violation"]), probability=float(r.scores.get(pol, 0.0)),
                                          rule_ids=tuple(d.get("rule_ids") or ()),
                                          hallucinated=tuple(d.get("hallucinated_rule_ids") or ()),
                                          confidence=d.get("confidence"), category=str(d.get("policy_category") or ""),
                                          rationale=str(d.get("rationale") or ""))
        malformed = tuple(info.get("malformed_retried") or ()) + tuple(info.get("malformed") or ())
        return Judgement(verdicts=verdicts if r.error is None else {}, error=r.error, latency_ms=round(latency, 3),
                         prompt_tokens=int(cost.get("prompt_tokens", 0)), completion_tokens=int(cost.get("completion_tokens", 0)),
                         reasoning_tokens=int(cost.get("reasoning_tokens", 0)), calls=int(cost.get("calls", 0)),
                         malformed=malformed, outputs=tuple(rec.outputs))


# ---------------------------------------------------------------------------- CLI helpers
def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model-path`` / ``--base-url`` / ``--model`` / ... (shared by the experiments and policy-test)."""
    g = parser.add_argument_group("safeguard model")
    g.add_argument("--model-path", default="stand-in", help="GGUF to run in process with llama.cpp (default: the stand-in)")
    g.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint instead of a GGUF (e.g. http://127.0.0.1:8080/v1)")
    g.add_argument("--model", default="", help="model name at the endpoint (e.g. gpt-oss-safeguard-20b)")
    g.add_argument("--endpoint", choices=("completions", "chat"), default="completions", help="endpoint kind (with --base-url)")
    g.add_argument("--api-key-env", default=None, help="environment variable holding the endpoint's API key")
    g.add_argument("--threads", type=int, default=1,
                   help="llama.cpp threads (default 1: on shared, oversubscribed cores more threads are much slower)")
    g.add_argument("--n-ctx", type=int, default=4096, help="llama.cpp context size")
    g.add_argument("--gpu-layers", type=int, default=0, help="llama.cpp layers on the GPU (-1 = all)")
    g.add_argument("--max-tokens", type=int, default=None, help="completion budget per call (default: the tier's, 512)")


def backend_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Backend options for :class:`SafeguardJudge` from :func:`add_backend_arguments`' flags."""
    if args.base_url:
        opts: dict[str, Any] = {"backend": "openai", "base_url": args.base_url, "model": args.model,
                                "endpoint": args.endpoint, "timeout_s": 120, "context_tokens": max(args.n_ctx, 8192)}
        if args.api_key_env:
            opts["api_key_env"] = args.api_key_env
        return opts
    return {"backend": "llama_cpp", "model_path": args.model_path, "n_threads": args.threads, "n_ctx": args.n_ctx,
            "n_gpu_layers": args.gpu_layers}


def tier_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {} if args.max_tokens is None else {"max_tokens": int(args.max_tokens)}
