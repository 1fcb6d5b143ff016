"""llama.cpp in a worker process: a crash, hang or OOM kill there is a recorded error, not the end of the service.

:class:`WorkerBackend` has the interface of
:class:`~safecascade.tiers.safeguard.llama_backend.LlamaCppBackend` (``tokenize_prompt``,
``count_tokens``, ``split_tokens``, ``token_text``, ``stop_ids``, ``complete``, ``describe``,
``close``, ``metadata``, ``n_ctx``, ``n_vocab``, ``control_tokens``) and runs a
``LlamaCppBackend`` in a child process (``python -m safecascade.tiers.safeguard.llama_worker_child``,
:mod:`~safecascade.tiers.safeguard.llama_worker_child`). Each call
is one pickled request over a private pipe, answered before a deadline:

- the child dies (segfault, ``SIGKILL``, OOM kill)  -> ``BackendError("crashed")``
- no answer by the deadline (hang, ``SIGSTOP``)     -> the child is killed, ``BackendError("timeout")``
- the child raises                                  -> ``BackendError`` with the child's kind
- the worker is not up (restarting, or closed)      -> ``BackendError("unavailable")`` at once

A supervisor thread restarts a dead worker after ``backoff_s * 2**(failures-1)`` seconds
(capped at ``backoff_max_s``; the count resets after a successful generation). Calls are
serialised (one request on the pipe at a time), as with the in-process lock; a caller waits
for the lock no longer than its own deadline. POSIX only (the pipes are passed as fds).
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from safecascade.tiers.safeguard.completion import BackendError

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">Q")
CHILD_MODULE = "safecascade.tiers.safeguard.llama_worker_child"  # run as python -m CHILD_MODULE IN_FD OUT_FD
TOKEN_CALL_S = 30.0  # answer deadline of tokeniser calls (milliseconds of work even for long texts)


def _error(kind: str, message: str) -> Exception:
    return BackendError(kind, message)


# --------------------------------------------------------------------------- framing
def write_frame(fd: int, obj: Any, deadline: float | None = None) -> None:
    """Send ``obj`` over the pipe as a length-prefixed pickle; with a deadline the fd is
    non-blocking and polled (a stopped reader cannot block us)."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    data = memoryview(_HEADER.pack(len(payload)) + payload)
    poller = None
    while data:
        if deadline is not None:
            if poller is None:
                poller = select.poll()
                poller.register(fd, select.POLLOUT)
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(max(0, int(left * 1000)) + 1):
                raise TimeoutError("write")
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            continue
        data = data[n:]


def _read_exact(fd: int, n: int, deadline: float | None, poller: Any) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(max(0, int(left * 1000)) + 1):
                raise TimeoutError("read")
        try:
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
        except BlockingIOError:
            continue
        if not chunk:
            raise EOFError("worker pipe closed")
        buf += chunk
    return bytes(buf)


def read_frame(fd: int, deadline: float | None = None) -> Any:
    """Receive one object sent by :func:`write_frame` (``TimeoutError`` past the deadline, ``EOFError`` at the end)."""
    poller = None
    if deadline is not None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline, poller))
    return pickle.loads(_read_exact(fd, size, deadline, poller))


# --------------------------------------------------------------------------- parent
def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class _LoadFailed(ValueError):
    """The child reported a load error (its message names the model)."""


class _Worker:
    """One child process and its pipe ends."""

    def __init__(self, load_kwargs: dict[str, Any], load_timeout_s: float):
        p_in, c_out = os.pipe()  # child -> parent
        c_in, p_out = os.pipe()  # parent -> child
        self.stderr = tempfile.TemporaryFile(prefix="safecascade-llama-worker-")
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", CHILD_MODULE, str(c_in), str(c_out)],
                                         pass_fds=(c_in, c_out), stdin=subprocess.DEVNULL, stdout=self.stderr,
                                         stderr=self.stderr, close_fds=True)
        finally:
            os.close(c_in)
            os.close(c_out)
        self.fd_in, self.fd_out = p_in, p_out
        os.set_blocking(p_in, False)
        os.set_blocking(p_out, False)
        self.pid = self.proc.pid
        self.failure: str | None = None  # set by whoever first sees this worker fail
        self.mark = 0  # stderr offset: what came before is not about the current request
        deadline = time.monotonic() + load_timeout_s
        try:
            write_frame(self.fd_out, load_kwargs, deadline)
            reply = read_frame(self.fd_in, deadline)
        except TimeoutError:
            self.kill()
            raise ValueError(f"llama.cpp worker did not load the model within {load_timeout_s:g}s") from None
        except (EOFError, OSError):
            code = self.kill()
            raise ValueError(f"llama.cpp worker {_exit_text(code)} while loading the model{self.stderr_tail()}") from None
        if reply[0] != "ready":
            self.kill()
            raise _LoadFailed(reply[2])  # the child's own message names the model
        self.info: dict[str, Any] = reply[1]
        self.mark = self.stderr_size()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_size(self) -> int:
        try:
            return os.fstat(self.stderr.fileno()).st_size
        except (OSError, ValueError):
            return 0

    def stderr_tail(self, n: int = 600) -> str:
        """What the child wrote to stderr since the last request started (at most ``n`` bytes)."""
        try:
            size = self.stderr_size()
            start = max(self.mark, size - n)
            text = os.pread(self.stderr.fileno(), size - start, start).decode("utf-8", errors="replace").strip()
        except (OSError, ValueError):
            return ""
        return f"; worker stderr: {text}" if text else ""

    def kill(self, *, close_fds: bool = True) -> int | None:
        """SIGKILL (works on a stopped process too), reap, and (unless told not to: another
        thread may be reading them) close the pipes; returns the exit code."""
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:  # pragma: no cover
                pass
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - uninterruptible sleep
            code = None
        if close_fds:
            self.close_fds()
        return code

    def close_fds(self) -> None:
        for fd in (self.fd_in, self.fd_out):
            try:
                os.close(fd)
            except OSError:
                pass
        self.fd_in = self.fd_out = -1


class WorkerBackend:
    """The llama.cpp backend behind a process boundary (see the module docstring)."""

    name = "llama_cpp"
    isolation = "process"

    def __init__(self, *, model_path: str | Path, timeout_s: float = 600.0, grace_s: float = 5.0,
                 load_timeout_s: float = 600.0, backoff_s: float = 0.5, backoff_max_s: float = 30.0,
                 **load_kwargs: Any):
        path = Path(model_path)
        if not path.is_file():
            raise ValueError(f"safeguard model not found: {path}")
        for key, v in (("worker_timeout_s", timeout_s), ("worker_grace_s", grace_s), ("worker_load_timeout_s", load_timeout_s),
                       ("worker_backoff_s", backoff_s), ("worker_backoff_max_s", backoff_max_s)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (v == 0 and key != "worker_grace_s"):
                raise ValueError(f"safeguard option {key} must be a positive number of seconds, got {v!r}")
        self.model_path = str(path)
        self.prefix_reuse = bool(load_kwargs.get("prefix_reuse", True))
        self.timeout_s, self.grace_s, self.load_timeout_s = float(timeout_s), float(grace_s), float(load_timeout_s)
        self.backoff_s, self.backoff_max_s = float(backoff_s), float(backoff_max_s)
        self._load_kwargs = {"model_path": str(path), **load_kwargs}
        self.lock = threading.RLock()  # one request on the pipe at a time
        self._cv = threading.Condition()  # guards the state below
        self._stop = threading.Event()
        self._closed = False
        self._restarts = 0
        self._failures = 0  # consecutive; reset by a successful generation
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._next_attempt: float | None = None
        self._cache: dict[tuple, Any] = {}
        self._owner = os.getpid()  # a fork (gunicorn --preload) must not share the pipes
        self._counts: OrderedDict[str, int] = OrderedDict()
        try:
            self._worker: _Worker | None = _Worker(self._load_kwargs, self.load_timeout_s)
        except _LoadFailed as exc:
            raise ValueError(str(exc)) from None
        except ValueError as exc:
            raise ValueError(f"cannot load safeguard model {path}: {exc}") from None
        self._state = "up"
        info = self._worker.info
        self.metadata: dict[str, str] = dict(info["metadata"])
        self.n_ctx: int = info["n_ctx"]
        self.n_vocab: int = info["n_vocab"]
        self.control_tokens: tuple[str, ...] = tuple(info["control_tokens"])
        self._thread = threading.Thread(target=self._supervise, name=f"llama-worker-{path.name}", daemon=True)
        self._thread.start()
        log.info("llama.cpp worker pid %d loaded %s", self._worker.pid, path.name)

    # ------------------------------------------------------------------ supervision
    def _supervise(self) -> None:
        """Wait for the worker to exit; restart it with capped exponential backoff until closed."""
        worker = self._worker
        while worker is not None:
            worker.proc.wait()
            self._failed(worker, "crashed", f"llama.cpp worker pid {worker.pid} {_exit_text(worker.proc.returncode)}"
                         f"{self._hint(worker.proc.returncode)}{worker.stderr_tail()}")
            worker.kill(close_fds=False)
            with self.lock:  # a caller may still be reading this worker's pipes
                worker.close_fds()
            worker = None
            while worker is None:
                with self._cv:
                    delay = min(self.backoff_max_s, self.backoff_s * 2 ** max(0, self._failures - 1))
                    self._next_attempt = time.monotonic() + delay
                if self._stop.wait(delay):
                    return
                with self._cv:
                    self._state = "restarting"
                try:
                    worker = _Worker(self._load_kwargs, self.load_timeout_s)
                except Exception as exc:
                    msg = str(exc) if isinstance(exc, _LoadFailed) else f"cannot load safeguard model {self.model_path}: {exc}"
                    log.error("llama.cpp worker restart failed: %s", msg)
                    with self._cv:
                        self._failures += 1
                        self._last_error, self._last_error_at = f"load: {msg}", time.time()
                        self._state = "down"
                    continue
                with self._cv:
                    if self._closed:
                        worker.kill()
                        return
                    self._worker, self._state, self._next_attempt = worker, "up", None
                    self._restarts += 1
                log.warning("llama.cpp worker restarted (pid %d, restart %d)", worker.pid, self._restarts)

    def _hint(self, code: int | None) -> str:
        if code == -signal.SIGSEGV and self._load_kwargs.get("extra_buffer_types"):
            return (" (extra_buffer_types is on: llama.cpp's AMX matmul segfaults on some Intel CPUs,"
                    " llama.cpp#20824; set extra_buffer_types: false)")
        return ""

    def _failed(self, worker: _Worker, kind: str, message: str) -> None:
        """Record the first failure seen of ``worker``; the supervisor restarts it."""
        with self._cv:
            if worker.failure is not None or self._closed:
                return
            worker.failure = f"{kind}: {message}"
            self._failures += 1
            self._last_error, self._last_error_at = worker.failure, time.time()
            self._state = "restarting"
        log.error("safeguard %s", worker.failure)

    # ------------------------------------------------------------------ requests
    def _call(self, method: str, *args: Any, answer_s: float | None = None, **kw: Any) -> Any:
        """One request. Waits for the pipe (a running call) and then for the answer, each at most
        ``answer_s`` (default: ``timeout_s``; tokeniser calls: at most :data:`TOKEN_CALL_S`)."""
        if os.getpid() != self._owner:
            raise _error("unavailable", "this llama.cpp worker backend was created in another process (fork); "
                                        "create the Router after forking")
        budget = min(self.timeout_s, TOKEN_CALL_S) if answer_s is None else answer_s
        wait = self.timeout_s if answer_s is None else answer_s
        if not self.lock.acquire(timeout=wait):
            raise _error("timeout", f"{method}: waited {wait:g}s for the llama.cpp worker (another call is running)")
        try:
            with self._cv:
                worker, state = self._worker, self._state
            if self._closed:
                raise _error("unavailable", "the llama.cpp worker backend is closed")
            if state != "up" or worker is None or worker.failure is not None or not worker.alive():
                raise _error("unavailable", f"llama.cpp worker is {state if state != 'up' else 'restarting'} "
                                            f"(last error: {self._last_error})")
            deadline = time.monotonic() + budget
            worker.mark = worker.stderr_size()
            try:
                write_frame(worker.fd_out, (method, args, kw), deadline)
                reply = read_frame(worker.fd_in, deadline)
            except TimeoutError:
                msg = f"llama.cpp worker pid {worker.pid} did not answer {method} within {budget:g}s; killed, restarting"
                self._failed(worker, "timeout", msg)
                worker.proc.kill()
                raise _error("timeout", msg) from None
            except (EOFError, OSError):
                try:
                    code = worker.proc.wait(2)
                except subprocess.TimeoutExpired:
                    worker.proc.kill()
                    code = None
                if self._closed:
                    raise _error("unavailable", "the llama.cpp worker backend is closed") from None
                msg = (f"llama.cpp worker pid {worker.pid} {_exit_text(code)} during {method}; restarting"
                       f"{self._hint(code)}{worker.stderr_tail()}")
                self._failed(worker, "crashed", msg)
                raise _error("crashed", msg) from None
        finally:
            self.lock.release()
        if reply[0] == "ok":
            return reply[1]
        raise _error(reply[1], reply[2])

    # ------------------------------------------------------------------ backend interface
    def tokenize_prompt(self, prompt: Any) -> list[int]:
        return self._call("tokenize_prompt", prompt)

    def count_tokens(self, text: str) -> int:
        """Token count (the last 256 distinct texts under 16k chars are cached: the tier counts its empty prompt on every call)."""
        if len(text) > 16384:
            return self._call("count_tokens", text)
        with self._cv:
            n = self._counts.get(text)
            if n is not None:
                self._counts.move_to_end(text)
                return n
        n = self._call("count_tokens", text)
        with self._cv:
            self._counts[text] = n
            if len(self._counts) > 256:
                self._counts.popitem(last=False)
        return n

    def split_tokens(self, text: str, size: int, overlap: int) -> list[str]:
        return self._call("split_tokens", text, size, overlap)

    def token_text(self, token: int) -> str:
        key = ("token_text", token)
        if key not in self._cache:
            self._cache[key] = self._call("token_text", token)
        return self._cache[key]

    def stop_ids(self, harmony: bool) -> set[int]:
        key = ("stop_ids", bool(harmony))
        if key not in self._cache:
            self._cache[key] = self._call("stop_ids", bool(harmony))
        return set(self._cache[key])

    def complete(self, prompt: Any, *, max_tokens: int, temperature: float = 0.0, grammar: str | None = None,
                 harmony: bool = True, timeout_s: float | None = None, effort: str | None = None) -> Any:
        """Generate in the worker; the hard deadline is ``timeout_s + grace_s`` (else the worker timeout)."""
        deadline = self.timeout_s if timeout_s is None else float(timeout_s) + self.grace_s
        comp = self._call("complete", prompt, max_tokens=max_tokens, temperature=temperature, grammar=grammar,
                          harmony=harmony, timeout_s=timeout_s, effort=effort, answer_s=deadline)
        with self._cv:
            self._failures = 0
        return comp

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": Path(self.model_path).name, "n_ctx": self.n_ctx,
                "architecture": self.metadata.get("general.architecture", ""), "isolation": self.isolation}

    def health(self) -> dict[str, Any]:
        """``state`` (up | restarting | down), worker ``pid``, ``alive``, ``restarts``, ``last_error``."""
        with self._cv:
            w, state = self._worker, self._state
            nxt = self._next_attempt
            out = {"backend": self.name, "isolation": self.isolation, "state": "down" if self._closed else state,
                   "pid": w.pid if w is not None else None, "alive": bool(w is not None and w.alive() and w.failure is None),
                   "restarts": self._restarts, "consecutive_failures": self._failures, "last_error": self._last_error,
                   "last_error_at": self._last_error_at}
        if nxt is not None and state != "up" and not self._closed:
            out["next_restart_in_s"] = round(max(0.0, nxt - time.monotonic()), 3)
        return out

    def close(self) -> None:
        """Stop the worker (a running call fails with ``unavailable``) and the supervisor."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._state = "down"
            worker = self._worker
        self._stop.set()
        if worker is not None:
            if worker.alive() and self.lock.acquire(timeout=0):  # idle: ask politely first
                try:
                    write_frame(worker.fd_out, ("exit", (), {}), time.monotonic() + 1)
                    worker.proc.wait(5)
                except (OSError, TimeoutError, subprocess.TimeoutExpired):
                    pass
                finally:
                    self.lock.release()
            worker.kill(close_fds=False)
        self._thread.join(15)
        if worker is not None and not self._thread.is_alive():
            worker.close_fds()
