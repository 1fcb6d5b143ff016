"""Post-moderation: answer at once with the cheaper tiers' verdict, run the last tier later.

``PostModerator(router, callback=...)`` wraps a :class:`~safecascade.router.cascade.Router`.
``submit(text)`` walks the cheap tiers (everything but the last, expensive tier) in the caller's
thread and returns a Decision at once:

* a cheap tier (or an input rule, or the verdict cache) decided: that Decision is final
  (``decision.provisional`` is False); it goes to the router's sinks as usual; no callback.
* the text would escalate to the last tier: the Decision is **provisional** (reason
  ``provisional``, ``decision.provisional`` True; the most recent tier that scored decides at
  0.5, as for ``budget_exhausted``; the last tier's trace says ``skipped`` /
  ``post_moderation``). The text is queued; a worker thread runs the last tier and delivers the
  final Decision, with the full path, to the router's sinks (the verdict log, metrics, cache)
  and then to ``callback(PostModEvent)``. Exactly one callback per provisional Decision.

The provisional Decision goes to the router's sinks before ``submit`` returns
(``log_provisional=True``, the default), so a crash loses nothing that was acknowledged: the
verdict log holds the provisional row (reason ``provisional``) and, once the last tier ran,
the final row (same ``text_hash``). Metrics count a provisional decision by reason only; its
tiers are counted once, with the final decision.

Overflow policy (the queue holds at most ``max_queue`` texts):

* ``overflow="provisional"`` (default, never blocks): the provisional verdict stands as the
  final verdict, with reason ``postmod_overflow``; it is logged (sinks), counted
  (``stats()["overflowed"]``), and returned by ``submit`` as a final (non-provisional)
  Decision - no callback follows, the caller has the final verdict in hand. Nothing is lost.
* ``overflow="block"``: ``submit`` waits up to ``block_timeout_s`` for room (back-pressure
  on the caller), then falls back to the ``provisional`` policy.

``close(timeout)`` stops accepting texts, lets the workers drain the queue, and returns the
number of texts that were *not* judged by the last tier: when the timeout passes first, each
of them gets its final Decision at once (reason ``postmod_shutdown``, the provisional
verdict), delivered to the sinks and the callback, so a callback still comes for every
provisional Decision. The escalation budget applies to the background calls as to synchronous
ones (refused -> the last tier's ``on_budget_exhausted``, reason ``budget_exhausted``).

Budget deferral (``on_budget_exhausted: queue``): a PostModerator registers itself as
``router.post_moderator``; when the escalation budget refuses an uncertain text of a synchronous
``classify``, the router hands it to :meth:`PostModerator.defer`: the answer is the provisional
verdict (reason ``provisional``, the last tier's trace ``skipped`` / ``budget_exhausted``) and
the text is queued like a submitted one (counted in ``stats()["budget_queued"]``). In the
background such texts skip the budget (the workers and ``max_queue`` bound that work). When the
queue is full or the PostModerator is closed, ``defer`` returns None and the router blocks the
text (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Sequence

from safecascade.router.cascade import PendingText, Router
from safecascade.router.config import TierConfig
from safecascade.router.decision import Decision, TierTrace

log = logging.getLogger(__name__)

OVERFLOW_POLICIES = ("provisional", "block")


@dataclass(frozen=True, kw_only=True)
class PostModEvent:
    """What the callback receives for one provisional Decision.

    ``final`` is the final Decision (reason ``last_tier`` / ``budget_exhausted`` /
    ``fallback:...`` / ``postmod_shutdown``); ``provisional`` the Decision ``submit`` returned;
    ``changed`` is True when the action differs; ``context`` is what was passed to ``submit``;
    ``delay_ms`` the time from ``submit`` to the final Decision (queue wait + last tier).
    """

    final: Decision
    provisional: Decision
    context: Any
    delay_ms: float

    @property
    def changed(self) -> bool:
        return self.final.action != self.provisional.action


Callback = Callable[[PostModEvent], None]


@dataclass
class _Job:
    pending: PendingText  # the cheap tiers' state (path without the last tier)
    provisional: Decision
    context: Any
    submitted: float


class PostModerator:
    """Post-moderation around a Router (see the module docstring).

    ``callback``: called with a :class:`PostModEvent` for each provisional Decision, from a
    worker thread (or from ``close``); an exception in it is logged, never raised.
    ``max_queue``: texts waiting for the last tier. ``overflow``: ``provisional`` | ``block``.
    ``block_timeout_s``: how long ``block`` waits. ``workers``: threads running the last tier
    (llama.cpp serialises calls in process, so 1 is right there; more helps for an endpoint).
    ``batch_size``: queued texts a worker hands to the last tier at once.
    ``log_provisional``: give provisional Decisions to the router's sinks (durability).
    """

    def __init__(self, router: Router, *, callback: Callback | None = None, max_queue: int = 1000,
                 overflow: str = "provisional", block_timeout_s: float = 1.0, workers: int = 1,
                 batch_size: int = 8, log_provisional: bool = True):
        if len(router.tiers) < 2:
            raise ValueError("post-moderation needs at least two tiers (cheap tiers + a last tier)")
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}")
        for name, v in (("max_queue", max_queue), ("workers", workers), ("batch_size", batch_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(block_timeout_s, (int, float)) or isinstance(block_timeout_s, bool) or block_timeout_s < 0:
            raise ValueError(f"block_timeout_s must be a number >= 0, got {block_timeout_s!r}")
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable")
        self.router = router
        self.callback = callback
        self.max_queue = max_queue
        self.overflow = overflow
        self.block_timeout_s = float(block_timeout_s)
        self.batch_size = batch_size
        self.log_provisional = log_provisional
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._counts = {"submitted": 0, "final_now": 0, "provisional": 0, "queued": 0, "overflowed": 0,
                        "delivered": 0, "changed": 0, "shutdown": 0, "callback_errors": 0, "budget_queued": 0}
        self._outstanding = 0  # jobs queued or being judged, not yet delivered
        self._idle = threading.Condition(self._lock)
        self._workers = [threading.Thread(target=self._work, name=f"safecascade-postmod-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._workers:
            t.start()
        if getattr(router, "post_moderator", None) is None:
            router.post_moderator = self  # on_budget_exhausted: queue defers here

    # ------------------------------------------------------------------ submit
    def submit(self, text: str | bytes, *, context: Any = None) -> Decision:
        """Classify with the cheap tiers now; see the module docstring for what comes back.
        Raises ``TypeError`` for a non-text argument and ``RuntimeError`` after ``close``."""
        return self.submit_batch([text], contexts=[context])[0]

    async def asubmit(self, text: str | bytes, *, context: Any = None) -> Decision:
        """``submit`` without blocking the event loop (runs in a worker thread)."""
        return await asyncio.to_thread(self.submit, text, context=context)

    def submit_batch(self, texts: Iterable[str | bytes], *, contexts: Sequence[Any] | None = None,
                     client: str | None = None) -> list[Decision]:
        """``submit`` for many texts (the cheap tiers see them as one batch). ``client``: whose
        escalation budget pays for the last tier (see ``Router.classify_batch``)."""
        if self._closed:
            raise RuntimeError("PostModerator is closed")
        router = self.router
        pending = router.prepare(texts, client=client)
        if contexts is None:
            contexts = [None] * len(pending)
        elif len(contexts) != len(pending):
            raise ValueError(f"{len(contexts)} contexts for {len(pending)} texts")
        router.run_tiers(pending, stop=-1)
        last_tc = router.config.tiers[-1]
        now = time.perf_counter()
        out: list[Decision] = []
        emit_p: list[PendingText] = []
        emit_d: list[Decision] = []
        jobs: list[_Job] = []
        for p, ctx in zip(pending, contexts):
            if p.decision is not None:  # decided by a cheap tier, an input rule or the cache: final now
                out.append(p.decision)
                emit_p.append(p)
                emit_d.append(p.decision)
                continue
            view = PendingText(clean=p.clean, started=p.started, single=p.single,
                               path=[*p.path, TierTrace(tier=last_tc.name, outcome="skipped", error="post_moderation")])
            router.fast_verdict(view, last_tc, reason="provisional")
            prov = view.decision
            assert prov is not None
            job = _Job(pending=p, provisional=prov, context=ctx, submitted=now)
            if self._enqueue(job):
                jobs.append(job)
                out.append(prov)
                if self.log_provisional:
                    emit_p.append(view)
                    emit_d.append(prov)
            else:  # overflow: the provisional verdict stands as final
                final = replace(prov, reason="postmod_overflow")
                out.append(final)
                emit_p.append(view)
                emit_d.append(final)
        router.emit(emit_p, emit_d)
        with self._lock:
            self._counts["submitted"] += len(pending)
            self._counts["queued"] += len(jobs)
            self._counts["provisional"] += len(jobs)
            self._counts["final_now"] += sum(1 for d in out if d.reason != "provisional" and d.reason != "postmod_overflow")
            self._counts["overflowed"] += sum(1 for d in out if d.reason == "postmod_overflow")
        return out

    def defer(self, p: PendingText, tc: TierConfig) -> Decision | None:
        """Queue an uncertain text the escalation budget refused (``on_budget_exhausted:
        queue``) and return its provisional Decision (``p.path`` gets the ``skipped`` /
        ``budget_exhausted`` trace); None when closed or the queue is full (the caller then
        fails closed). The caller emits the provisional Decision to the sinks."""
        if self._closed:
            return None
        job_p = PendingText(clean=p.clean, started=p.started, path=list(p.path), single=p.single, client=p.client)
        p.path.append(TierTrace(tier=tc.name, outcome="skipped", error="budget_exhausted", info={"on_budget_exhausted": "queue"}))
        view = PendingText(clean=p.clean, started=p.started, path=list(p.path), single=p.single, client=p.client)
        self.router.fast_verdict(view, tc, reason="provisional")
        prov = view.decision
        assert prov is not None
        if not self._enqueue(_Job(pending=job_p, provisional=prov, context=None, submitted=time.perf_counter())):
            p.path.pop()
            return None
        with self._lock:
            self._counts["provisional"] += 1
            self._counts["queued"] += 1
            self._counts["budget_queued"] += 1
        return prov

    def _enqueue(self, job: _Job) -> bool:
        with self._lock:
            self._outstanding += 1
        try:
            if self.overflow == "block":
                self._queue.put(job, timeout=self.block_timeout_s)
            else:
                self._queue.put_nowait(job)
            return True
        except queue.Full:
            self._done(1)
            log.warning("post-moderation queue full (%d): provisional verdict stands (postmod_overflow)", self.max_queue)
            return False

    # ------------------------------------------------------------------ workers
    def _work(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            batch = [first]
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._finish(batch)
            except Exception:  # never lose a job to a bug: deliver the provisional verdict as final
                log.exception("post-moderation worker failed on %d texts", len(batch))
                try:
                    self._deliver_fallback(batch, reason="postmod_error")
                except Exception:  # e.g. the verdict log failed again: the worker must survive
                    log.exception("post-moderation fallback could not be logged for %d texts", len(batch))
                    with self._lock:
                        self._counts["fallback_errors"] = self._counts.get("fallback_errors", 0) + 1
            finally:
                for _ in batch:
                    self._queue.task_done()
                self._done(len(batch))

    def _done(self, n: int) -> None:
        with self._lock:
            self._outstanding -= n
            self._idle.notify_all()

    def _finish(self, batch: list[_Job]) -> None:
        router = self.router
        pending = [j.pending for j in batch]
        for p in pending:
            p.single = False  # latency = the tiers' own time, not the queue wait (that is delay_ms)
        router.run_tiers(pending, start=-1, background=True)
        finals = [p.decision for p in pending]
        router.emit(pending, finals)  # type: ignore[arg-type]
        self._deliver(batch, finals)  # type: ignore[arg-type]

    def _deliver(self, batch: list[_Job], finals: list[Decision]) -> None:
        now = time.perf_counter()
        for job, final in zip(batch, finals):
            event = PostModEvent(final=final, provisional=job.provisional, context=job.context,
                                 delay_ms=round((now - job.submitted) * 1000.0, 3))
            with self._lock:
                self._counts["delivered"] += 1
                self._counts["changed"] += int(event.changed)
            if self.callback is not None:
                try:
                    self.callback(event)
                except Exception:
                    log.exception("post-moderation callback failed")
                    with self._lock:
                        self._counts["callback_errors"] += 1

    def _deliver_fallback(self, batch: list[_Job], *, reason: str) -> None:
        """Final = the provisional verdict (reason ``reason``): logged and delivered."""
        finals = [replace(j.provisional, reason=reason) for j in batch]
        views = [PendingText(clean=j.pending.clean, started=j.pending.started, path=list(j.provisional.path),
                             single=False, decision=f) for j, f in zip(batch, finals)]
        try:
            self.router.emit(views, finals)
        finally:  # the callback gets the final verdict even when logging it failed
            self._deliver(batch, finals)

    # ------------------------------------------------------------------ lifecycle
    def pending(self) -> int:
        """Texts queued or being judged now."""
        with self._lock:
            return self._outstanding

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued text has its final Decision; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._outstanding > 0:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(0.05 if remaining is None else min(0.05, remaining))
        return True

    def close(self, timeout: float | None = 60.0) -> int:
        """Stop accepting texts, drain the queue (up to ``timeout`` s), stop the workers.

        Returns how many queued texts did not reach the last tier; each of them got its final
        Decision now (reason ``postmod_shutdown``), logged and delivered to the callback.
        Idempotent; does not close the router."""
        if self._closed:
            return 0
        self._closed = True
        if getattr(self.router, "post_moderator", None) is self:
            self.router.post_moderator = None
        self.drain(timeout)
        self._stop.set()
        left: list[_Job] = []
        while True:  # whatever the workers did not take
            try:
                left.append(self._queue.get_nowait())
                self._queue.task_done()
            except queue.Empty:
                break
        for t in self._workers:
            t.join(None if timeout is None else max(1.0, timeout))
        if left:
            log.warning("post-moderation closed with %d texts not judged by the last tier (postmod_shutdown)", len(left))
            self._deliver_fallback(left, reason="postmod_shutdown")
            with self._lock:
                self._counts["shutdown"] += len(left)
            self._done(len(left))
        return len(left)

    def __enter__(self) -> "PostModerator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Counters (for /healthz and the docs): submitted, final_now, provisional, queued,
        overflowed, delivered, changed, shutdown, callback_errors, plus queue depth."""
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            out["queue_depth"] = self._queue.qsize()
            out["outstanding"] = self._outstanding
        out["max_queue"] = self.max_queue
        out["overflow"] = self.overflow
        return out
