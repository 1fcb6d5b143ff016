"""Micro-batching: coalesce concurrent ``aclassify`` calls into ``classify_batch`` calls.

Under concurrency, many asyncio tasks each classifying one text pay per-call costs many
times: an ONNX session run per text, a verdict-log acknowledgement (fsync) per text, a thread
hop per text. :class:`MicroBatcher` collects the texts that arrive within ``max_wait_ms`` of
the first one (or until ``max_batch`` are waiting) and classifies them with one
``router.classify_batch`` call in a worker thread; each caller gets its own Decision.

    batcher = MicroBatcher(router, max_batch=32, max_wait_ms=2.0)
    decision = await batcher.aclassify(text)

The added latency is at most ``max_wait_ms`` when traffic is light; a batch's decisions carry
each text's share of the tiers' time as ``latency_ms`` (as in ``classify_batch``). Decisions
are the same as from ``router.classify`` up to float noise in the ONNX scores (a batch is
padded to its longest window). Non-text arguments raise ``TypeError`` at once, never failing
the batch they would have joined. One batcher serves one event loop.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import Any

from safecascade.router.cascade import Router
from safecascade.router.decision import Decision

log = logging.getLogger(__name__)


class MicroBatcher:
    """Coalesces concurrent ``aclassify`` calls (see the module docstring).

    ``max_batch``: texts per ``classify_batch`` call. ``max_wait_ms``: how long the first text
    of a batch waits for company. ``executor``: where batches run (default: the loop's default
    executor). Counters: ``batches``, ``texts`` (``texts / batches`` = mean batch size).
    """

    def __init__(self, router: Router, *, max_batch: int = 32, max_wait_ms: float = 2.0, executor: Executor | None = None):
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        if not isinstance(max_wait_ms, (int, float)) or isinstance(max_wait_ms, bool) or max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be a number >= 0, got {max_wait_ms!r}")
        self.router = router
        self.max_batch = max_batch
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.executor = executor
        self._waiting: list[tuple[str | bytes, asyncio.Future[Decision]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.batches = 0
        self.texts = 0

    async def aclassify(self, text: str | bytes) -> Decision:
        """Classify ``text`` as part of a micro-batch; raises ``TypeError`` for a non-text."""
        if not isinstance(text, (str, bytes)):
            raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Decision] = loop.create_future()
        self._waiting.append((text, fut))
        if len(self._waiting) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait_s, self._flush)
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch:]
        if self._waiting:  # more than one batch was waiting: the rest goes out on the next tick
            self._timer = asyncio.get_running_loop().call_later(0, self._flush)
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[str | bytes, asyncio.Future[Decision]]]) -> None:
        self.batches += 1
        self.texts += len(batch)
        try:
            decisions = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.router.classify_batch, [t for t, _ in batch])
        except BaseException as exc:  # every caller of the batch sees the failure
            log.exception("micro-batch of %d texts failed", len(batch))
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
            return
        for (_, fut), d in zip(batch, decisions):
            if not fut.done():  # a cancelled caller just does not get its decision
                fut.set_result(d)

    def stats(self) -> dict[str, float]:
        """Batches run, texts classified and the mean batch size."""
        return {"batches": self.batches, "texts": self.texts, "mean_batch": self.texts / self.batches if self.batches else 0.0}
