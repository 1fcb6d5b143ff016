"""The llama.cpp worker process itself: ``python -m safecascade.tiers.safeguard.llama_worker_child
IN_FD OUT_FD``, started by :class:`~safecascade.tiers.safeguard.llama_worker.WorkerBackend` (the
parent side). It loads the model named by the first frame and answers one pickled request at a
time until the pipe closes. Nothing imports this module: it is only run (so ``-m`` never finds it
already imported).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from safecascade.tiers.safeguard.completion import BackendError
from safecascade.tiers.safeguard.llama_backend import LlamaCppBackend
from safecascade.tiers.safeguard.llama_worker import read_frame, write_frame

# the backend methods the worker answers
_METHODS = frozenset({"tokenize_prompt", "count_tokens", "split_tokens", "token_text", "stop_ids", "complete"})


def _serve(fd_in: int, fd_out: int) -> None:
    """The worker: load the model named by the first frame, then answer requests until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which closes us
    kwargs = read_frame(fd_in)
    try:
        backend = LlamaCppBackend(**kwargs)
    except Exception as exc:
        write_frame(fd_out, ("err", "load", str(exc)))
        return
    write_frame(fd_out, ("ready", {"pid": os.getpid(), "metadata": backend.metadata, "n_ctx": backend.n_ctx,
                                    "n_vocab": backend.n_vocab, "control_tokens": backend.control_tokens}))
    while True:
        try:
            method, args, kw = read_frame(fd_in)
        except EOFError:
            break
        if method == "exit":
            break
        try:
            if method not in _METHODS:
                raise BackendError("error", f"unknown worker method {method!r}")
            reply: tuple = ("ok", getattr(backend, method)(*args, **kw))
        except BackendError as exc:
            reply = ("err", exc.kind, str(exc).removeprefix(f"{exc.kind}: "))
        except Exception as exc:  # reported to the caller; the worker stays up
            reply = ("err", "error", f"{type(exc).__name__}: {exc}")
        write_frame(fd_out, reply)
    backend.close()


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - runs in the child
    """``python -m safecascade.tiers.safeguard.llama_worker_child IN_FD OUT_FD`` (started by
    :class:`~safecascade.tiers.safeguard.llama_worker.WorkerBackend`)."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        _serve(int(args[0]), int(args[1]))
    except (EOFError, BrokenPipeError):
        pass  # the parent went away


if __name__ == "__main__":  # pragma: no cover
    main()
