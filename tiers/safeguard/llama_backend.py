"""The safeguard tier's llama.cpp backend in this process (:class:`LlamaCppBackend`).

The default ``isolation: process`` runs it in a worker process instead
(:mod:`safecascade.tiers.safeguard.llama_worker`); ``isolation: none`` uses it directly, where a
llama.cpp crash ends the process.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from safecascade.tiers.llama_load import load_llama
from safecascade.tiers.safeguard.completion import BackendError, Completion
from safecascade.tiers.safeguard.parse import TokenLP
from safecascade.tiers.safeguard.prompt import RenderedPrompt, Segment


class LlamaCppBackend:
    """``llama_cpp.Llama`` in this process.

    One context, guarded by a re-entrant lock (llama.cpp contexts are not thread-safe): every
    generation and every tokeniser call (llama.cpp does not document tokenisation as
    thread-safe) runs under it, so a Router sharing this backend between threads serialises
    here. Use the ``openai`` backend (a server with parallel slots) for concurrency. With
    ``prefix_reuse`` (default) the KV state of the previous prompt is kept and llama.cpp's
    ``generate`` re-evaluates only the tokens after the longest common prefix - the system and
    developer messages are the same on every call, so only the content is evaluated. With
    ``prefix_reuse=False`` the context is reset before each call (cold; for measurement).
    Label log-probabilities are read from the logits of each sampled position (no
    ``logits_all`` needed).
    """

    name = "llama_cpp"

    def __init__(self, *, model_path: str | Path, n_ctx: int = 4096, n_threads: int | None = None,
                 n_gpu_layers: int = 0, seed: int = 0, n_batch: int = 512, prefix_reuse: bool = True,
                 flash_attn: bool = False, extra_buffer_types: bool = False):
        path = Path(model_path)
        if not path.is_file():
            raise ValueError(f"safeguard model not found: {path}")
        try:
            import llama_cpp  # heavy, optional: the [llm] extra
        except ImportError as exc:
            raise ValueError("backend llama_cpp needs llama-cpp-python: pip install 'safecascade[llm]'") from exc
        self._llama_cpp = llama_cpp
        try:
            self.llm = load_llama(extra_bufts=extra_buffer_types, model_path=str(path), n_ctx=int(n_ctx),
                                  n_threads=n_threads, n_threads_batch=n_threads, n_gpu_layers=int(n_gpu_layers),
                                  seed=int(seed), n_batch=int(n_batch), flash_attn=bool(flash_attn), verbose=False)
        except Exception as exc:
            raise ValueError(f"cannot load safeguard model {path}: {exc}") from exc
        self.model_path = str(path)
        self.prefix_reuse = prefix_reuse
        self.lock = threading.RLock()
        self.metadata = dict(self.llm.metadata)
        self.n_ctx = self.llm.n_ctx()
        self.n_vocab = self.llm.n_vocab()
        self._grammars: dict[str, Any] = {}
        self._label_ids = (self._variants("0"), self._variants("1"))
        self.control_tokens = self._control_tokens()

    # -- tokens
    def _variants(self, label: str) -> list[int]:
        ids = []
        for s in (label, " " + label):
            t = self.llm.tokenize(s.encode(), add_bos=False, special=False)
            if len(t) == 1:
                ids.append(t[0])
        return sorted(set(ids))

    def _control_tokens(self) -> tuple[str, ...]:
        """Texts of the model's control tokens found in the chat-template vocabulary."""
        out = []
        for name in ("<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>", "<|eot_id|>",
                     "<|start_header_id|>", "<|end_header_id|>"):
            t = self.llm.tokenize(name.encode(), add_bos=False, special=True)
            if len(t) == 1:
                out.append(name)
        return tuple(out)

    def token_text(self, token: int) -> str:
        with self.lock:
            self._check_open()
            return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def tokenize_prompt(self, prompt: RenderedPrompt) -> list[int]:
        toks: list[int] = []
        first = True
        with self.lock:
            self._check_open()
            for seg in (*prompt.segments, Segment(text=prompt.prefill)):
                if not seg.text:
                    continue
                toks += self.llm.tokenize(seg.text.encode("utf-8"), add_bos=first, special=seg.trusted)
                first = False
        return toks

    def count_tokens(self, text: str) -> int:
        with self.lock:
            self._check_open()
            return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def split_tokens(self, text: str, size: int, overlap: int) -> list[str]:
        with self.lock:
            self._check_open()
            toks = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            step = max(1, size - overlap)
            out = []
            for i in range(0, len(toks), step):
                out.append(self.llm.detokenize(toks[i:i + size]).decode("utf-8", errors="replace"))
                if i + size >= len(toks):
                    break
        return out

    def stop_ids(self, harmony: bool) -> set[int]:
        ids = {self.llm.token_eos()}
        names = ("<|return|>", "<|call|>") if harmony else ("<end_of_turn>", "<|im_end|>", "<|eot_id|>")
        for n in names:
            t = self.llm.tokenize(n.encode(), add_bos=False, special=True)
            if len(t) == 1:
                ids.add(t[0])
        return ids

    def _grammar(self, gbnf: str) -> Any:
        g = self._grammars.get(gbnf)
        if g is None:
            g = self._llama_cpp.LlamaGrammar.from_string(gbnf, verbose=False)
            self._grammars[gbnf] = g
        return g

    # -- generation
    def complete(self, prompt: RenderedPrompt, *, max_tokens: int, temperature: float = 0.0,
                 grammar: str | None = None, harmony: bool = True, timeout_s: float | None = None,
                 effort: str | None = None) -> Completion:
        llama_cpp = self._llama_cpp
        with self.lock:
            self._check_open()
            t0 = time.perf_counter()
            toks = self.tokenize_prompt(prompt)
            if len(toks) + max_tokens > self.n_ctx:
                raise BackendError("overflow", f"prompt {len(toks)} + max_tokens {max_tokens} tokens > n_ctx {self.n_ctx}")
            if not self.prefix_reuse:
                self.llm.reset()
            cached = 0
            for a, b in zip(self.llm._input_ids.tolist() if self.llm.n_tokens else (), toks):
                if a != b:
                    break
                cached += 1
            stops = self.stop_ids(harmony)
            g = self._grammar(grammar) if grammar else None
            if g is not None and hasattr(g, "reset"):
                g.reset()
            out: list[TokenLP] = []
            raw: list[int] = []
            finish = "length"
            ids0, ids1 = self._label_ids
            for tok in self.llm.generate(toks, temp=temperature, top_k=1 if temperature == 0 else 40,
                                         repeat_penalty=1.0, grammar=g):
                ptr = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
                logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
                m = float(logits.max())
                lse = m + math.log(float(np.exp(logits - m).sum()))
                lp0 = float(np.logaddexp.reduce(logits[ids0]) - lse) if ids0 else None
                lp1 = float(np.logaddexp.reduce(logits[ids1]) - lse) if ids1 else None
                if tok in stops:
                    finish = "stop"
                    break
                raw.append(tok)
                out.append(TokenLP(text=self.token_text(tok), lp0=lp0, lp1=lp1))
                if len(raw) >= max_tokens:
                    break
                if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
                    raise BackendError("timeout", f"generation exceeded {timeout_s}s after {len(raw)} tokens")
            text = self.llm.detokenize(raw, special=True).decode("utf-8", errors="replace")
            return Completion(text=text, tokens=tuple(out), prompt_tokens=len(toks), completion_tokens=len(raw) + (finish == "stop"),
                              cached_tokens=cached if self.prefix_reuse else 0, finish_reason=finish,
                              latency_ms=(time.perf_counter() - t0) * 1000.0)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": Path(self.model_path).name, "n_ctx": self.n_ctx,
                "architecture": self.metadata.get("general.architecture", "")}

    def health(self) -> dict[str, Any]:
        """In process: ``up`` until closed (a crash here ends the process, so nothing reports it)."""
        closed = getattr(self, "_closed", False)
        return {"backend": self.name, "isolation": "none", "state": "down" if closed else "up", "pid": os.getpid(),
                "alive": not closed, "restarts": 0, "last_error": "closed" if closed else None}

    def _check_open(self) -> None:
        if getattr(self, "_closed", False):
            raise BackendError("unavailable", "the llama.cpp backend is closed")

    def close(self) -> None:
        """Free the model; waits for a running generation (the lock) so it never frees a context in use.
        Later calls fail with ``BackendError('unavailable')`` instead of touching freed memory."""
        lock = getattr(self, "lock", None)
        with lock if lock is not None else contextlib.nullcontext():
            self._closed = True
            llm = getattr(self, "llm", None)
            if llm is not None and hasattr(llm, "close"):
                try:
                    llm.close()
                except Exception:  # pragma: no cover
                    pass
