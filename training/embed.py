"""Window embeddings for training, cached on disk by content hash.

Cache layout: ``<root>/<encoder_key>/<hh>/<sha>.npy`` where ``encoder_key`` hashes the encoder
id (file hash of its ONNX graph / weights) and the window config, and ``sha`` is the sha256 of
the text. Each file is that text's window-embedding matrix ``[n_windows, dim]`` (float32).
Re-training with the same encoder and window config re-embeds nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from safecascade.paths import artifact_dir
from safecascade.tiers.onnx_encoder import WindowConfig, Windower, make_session, run_windows
from safecascade.training.datasets import load_benchmark
from safecascade.training.encoder import encoder_dir, encoder_fingerprint, load_st
from safecascade.training.export_onnx import export_encoder

log = logging.getLogger(__name__)


def text_sha(text: str) -> str:
    """Full sha256 hex digest of a text (the cache file's name)."""
    return hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()


class WindowEmbedder:
    """Embeds texts' windows through an ONNX encoder graph (output ``embedding``), with a disk cache."""

    def __init__(self, *, onnx_path: str | Path, tokenizer_path: str | Path, window: WindowConfig,
                 encoder_id: str, cache_root: str | Path | None = None, threads: int = 2, batch_size: int = 32):
        self.window = window
        self.windower = Windower(tokenizer_path, window)
        self.onnx_path = Path(onnx_path)
        self._session: Any = None
        self.threads = threads
        self.batch_size = batch_size
        key = hashlib.sha256(f"{encoder_id}|{sorted(window.to_dict().items())}".encode()).hexdigest()[:16]
        self.encoder_key = key
        if cache_root is None:
            cache_root = artifact_dir("embeddings")
        self.cache = Path(cache_root) / key
        self.cache.mkdir(parents=True, exist_ok=True)

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = make_session(self.onnx_path, threads=self.threads)
        return self._session

    def _path(self, sha: str) -> Path:
        return self.cache / sha[:2] / f"{sha}.npy"

    def missing(self, texts: Sequence[str]) -> int:
        """How many of ``texts`` have no cached embedding yet."""
        return sum(not self._path(text_sha(t)).is_file() for t in set(texts))

    def embed(self, texts: Sequence[str], *, progress: bool = True, desc: str = "embedding") -> list[np.ndarray]:
        """Window embeddings of each text (``[n_windows, dim]``), from cache where present."""
        shas = [text_sha(t) for t in texts]
        out: list[np.ndarray | None] = [None] * len(texts)
        todo: dict[str, list[int]] = {}
        for i, s in enumerate(shas):
            p = self._path(s)
            if p.is_file():
                try:
                    out[i] = np.load(p)
                    continue
                except (OSError, ValueError):
                    log.warning("unreadable cache entry %s; re-embedding", p)
            todo.setdefault(s, []).append(i)
        if todo:
            first = [idx[0] for idx in todo.values()]
            log.info("embedding %d texts (%d cached)", len(first), len(texts) - sum(len(v) for v in todo.values()))
            wins = self.windower.windows([texts[i] for i in first])
            flat = [w for ws in wins for w in ws.ids]
            emb = run_windows(self.session, flat, batch_size=self.batch_size, output="embedding", progress=progress, desc=desc)
            k = 0
            for (sha, idxs), ws in zip(todo.items(), wins):
                m = emb[k : k + len(ws.ids)]
                k += len(ws.ids)
                self._save(sha, m)
                for i in idxs:
                    out[i] = m
        return [o for o in out if o is not None] if all(o is not None for o in out) else out  # type: ignore[return-value]

    def _save(self, sha: str, m: np.ndarray) -> None:
        p = self._path(sha)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, m.astype(np.float32))
            os.replace(tmp, p)
        except OSError:
            log.warning("cannot write embedding cache %s", p, exc_info=True)
            try:
                os.unlink(tmp)
            except OSError:
                pass


def benchmark_embeddings(benchmark: str = "jailbreak", splits: Sequence[str] = ("train", "val", "test"), *,
                         encoder: str = "default", window: WindowConfig | None = None,
                         cache_root: str | Path | None = None, threads: int = 2,
                         progress: bool = True) -> dict[str, tuple[list[Any], list[np.ndarray]]]:
    """``{split: (examples, window embeddings)}`` of a benchmark through the embedding cache.

    The encoder is exported to ONNX (torch) only when some text is not cached yet, so experiments
    that reuse a built tier's cache run in seconds. ``window`` defaults to the trainer's default.
    """
    window = window or WindowConfig()
    name, sha = encoder_fingerprint(encoder)
    enc_dir = encoder_dir(encoder)
    data = {s: load_benchmark(benchmark, s) for s in splits}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "encoder.onnx"
        emb = WindowEmbedder(onnx_path=onnx_path, tokenizer_path=enc_dir / "tokenizer.json", window=window,
                             encoder_id=f"{name}@{sha}", cache_root=cache_root, threads=threads)
        if emb.missing([e.text for ex in data.values() for e in ex]):
            export_encoder(load_st(encoder), onnx_path)
        return {s: (ex, emb.embed([e.text for e in ex], progress=progress, desc=f"embedding {s}")) for s, ex in data.items()}
