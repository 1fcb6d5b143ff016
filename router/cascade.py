"""The cascade router: tiers cheapest first, each decides inside its band or passes the text on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, cast

from safecascade.mlflow_store import registered_router_config
from safecascade.router.budget import acquire_for, release_for
from safecascade.router.combine import combined, evidence_score, needs_evidence
from safecascade.router.config import RouterConfig, TierConfig, load_config
from safecascade.router.decision import Decision, Outcome, PolicyVerdict, TierTrace
from safecascade.router.inputs import CleanInput, clean_input
from safecascade.router.policy import Policy
from safecascade.tiers.base import Tier, TierResult, TierSpec, create_tier

log = logging.getLogger(__name__)


class DecisionCache(Protocol):
    """Exact-match verdict cache (see :meth:`Router.cache_key`)."""

    def get(self, key: str) -> Decision | None: ...

    def put(self, key: str, decision: Decision) -> None: ...


class EscalationBudget(Protocol):
    """Limits calls to the last (expensive) tier: ``acquire(n)`` grants up to ``n`` calls now.

    A budget may also offer ``acquire_texts(texts, client)`` / ``release_texts(n, client)`` to
    count work units per client (:class:`~safecascade.router.budget.TokenBucketBudget`,
    :class:`~safecascade.router.budget.ClientBudgets`); the router uses them when present."""

    def acquire(self, n: int) -> int: ...

    def release(self, n: int) -> None: ...


DecisionSink = Callable[[Decision, str], object]  # called with every decision and its cleaned text; result ignored

_STRICT = threading.local()  # ids of the routers inside strict_sinks() on this thread


class DecisionSinkError(RuntimeError):
    """A decision sink (the verdict log, metrics, ...) failed for a batch of decisions.

    ``errors``: ``(sink, exception)`` pairs (``sink`` is ``None`` when a batch acknowledgement
    failed, e.g. the verdict log's group fsync); ``decisions``: the batch's decisions (every
    sink was still offered every decision). Raised by :meth:`Router.classify` /
    :meth:`Router.classify_batch` unless ``router.on_sink_error`` is set."""

    def __init__(self, errors: Sequence[tuple[Any, BaseException]], decisions: Sequence[Decision]):
        first = errors[0][1]
        super().__init__(f"{len(errors)} decision sink failure(s) for a batch of {len(decisions)} decision(s); "
                         f"first: {type(first).__name__}: {first}")
        self.errors = list(errors)
        self.decisions = list(decisions)


@dataclass
class PendingText:
    """One text's state while it walks down the cascade (mutable): the cleaned input, the tiers'
    traces so far, and its Decision once a tier, an input rule or the cache decided (``None``
    while undecided). :meth:`Router.prepare` makes them; :meth:`Router.run_tiers` advances them.
    ``single``: the text was classified alone (its latency is wall time, not its share of a
    batch); ``started``: ``time.perf_counter()`` when its batch started."""

    clean: CleanInput
    started: float
    path: list[TierTrace]
    single: bool = True
    decision: Decision | None = None
    client: str | None = None  # the escalation budget's client key (None: anonymous)


class Router:
    """An ordered list of tiers with a band per tier and policy.

    For each tier in order, every policy gets a score ``s``: if any policy has
    ``s >= block_above`` the text is blocked (blocking on one policy is enough); if every
    policy has ``s <= allow_below`` it is allowed; otherwise it goes to the next tier. The last
    tier always decides (block when any policy's score ``>= threshold``). A tier that fails
    applies its ``on_error`` action, which is recorded on the Decision.

    Build one with :meth:`Router.load`. A Router is safe to share between threads; tiers that
    hold non-thread-safe state (llama.cpp contexts) serialise internally.

    Sinks (``router.sinks``: the verdict log, metrics, ...) see every decision. A sink failure
    is never silent: ``classify`` / ``classify_batch`` raise :class:`DecisionSinkError` (after
    every sink was offered every decision) unless ``on_sink_error`` is set, in which case it is
    called with that error and the decisions are returned (it may raise instead). Decisions
    emitted outside a ``classify`` call (post-moderation workers) call ``on_sink_error`` when set
    and are logged at ERROR either way; inside ``with router.strict_sinks():`` they raise too.

    :meth:`classify_batch` is three public steps, so post-moderation
    (:mod:`safecascade.router.postmod`) can split a walk between the cheap tiers and the last one:
    :meth:`prepare` (input rules, cache) -> :meth:`run_tiers` -> :meth:`emit` (cache, sinks);
    :meth:`fast_verdict` gives the provisional verdict of a text the last tier has not judged yet.
    """

    on_sink_error: Callable[[DecisionSinkError], None] | None = None
    post_moderator: Any = None  # a PostModerator registers itself: ``on_budget_exhausted: queue`` defers to it

    def __init__(self, *, config: RouterConfig, tiers: Sequence[Tier], policies: dict[str, Policy],
                 cache: DecisionCache | None = None, sinks: Sequence[DecisionSink] = (),
                 budget: EscalationBudget | None = None):
        if len(tiers) != len(config.tiers):
            raise ValueError("one tier instance per tier config is required")
        self.config = config
        self.tiers = list(tiers)
        self.policies = dict(policies)
        self.config_hash = config.sha
        self.policy_hashes = {name: p.sha for name, p in self.policies.items()}
        self._violating_ids = {name: frozenset(p.violating_rule_ids()) for name, p in self.policies.items()}
        self.cache = cache
        self.sinks = list(sinks)
        self.budget = budget
        # a heuristic tier's rule ids are the rules that matched (see _named)
        self._heuristic_tiers = frozenset(tc.name for tc in config.tiers if tc.type == "heuristic")

    @contextlib.contextmanager
    def strict_sinks(self):
        """Within the block, every sink failure of this thread raises :class:`DecisionSinkError`
        (unless ``on_sink_error`` is set), also for decisions emitted by other entry points
        (``PostModerator.submit``). The HTTP service runs each request inside it."""
        active = _STRICT.__dict__.setdefault("routers", set())
        outer = id(self) in active
        active.add(id(self))
        try:
            yield
        finally:
            if not outer:
                active.discard(id(self))

    def cache_key(self, text_hash: str) -> str:
        """Exact-match key: normalised text hash + config hash + policy hashes."""
        pol = ",".join(f"{k}={v}" for k, v in sorted(self.policy_hashes.items()))
        return f"{text_hash}|{self.config_hash}|{pol}"

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, source: str | Path | RouterConfig | None = None, *, safeguard: str | None = None) -> "Router":
        """Load a router.

        ``source``: ``None`` = the embedded default (heuristic -> static -> multilingual -> fast, the shipped
        models; or the ``with-safeguard`` preset when ``safeguard`` or ``$SAFECASCADE_SAFEGUARD``
        names a gpt-oss-safeguard GGUF path or an OpenAI-compatible URL), a YAML path,
        ``builtin:<name>``, a RouterConfig, or a ``models:/name@alias`` MLflow registry URI.
        """
        if isinstance(source, str) and source.startswith("models:/"):
            config = load_config(registered_router_config(source))  # downloads the registered router (needs mlflow)
        elif isinstance(source, RouterConfig):
            config = source
        else:
            config = load_config(source, safeguard=safeguard)
        policies = config.resolve_policies()
        tiers = []
        for tc in config.tiers:
            spec = TierSpec(name=tc.name, type=tc.type, options=tc.options, policies=policies, base_dir=Path(config.base_dir))
            tier = create_tier(spec)
            missing = [p for p in getattr(tier, "policies", ()) if p not in policies]
            if missing:
                raise ValueError(f"tier {tc.name!r} scores policies not in the config: {missing}")
            tiers.append(tier)
        sg = [t for t in config.tiers if t.type == "safeguard"]
        where = ", ".join(str(t.options.get("base_url") or t.options.get("model_path", "stand-in")) for t in sg)
        log.info("router %s (%s) loaded: %s; %s", config.name, config.sha, " -> ".join(t.name for t in config.tiers),
                 f"safeguard configured: {where}" if sg else "no safeguard configured (the last tier decides alone)")
        return cls(config=config, tiers=tiers, policies=policies)

    def close(self) -> None:
        for tier in self.tiers:
            closer = getattr(tier, "close", None)
            if callable(closer):
                closer()

    # ------------------------------------------------------------------ public API
    def classify(self, text: str | bytes) -> Decision:
        """Classify one text. Raises ``TypeError`` for a non-text argument; every other input
        gets a Decision (see :mod:`safecascade.router.inputs` for the rules)."""
        return self.classify_batch([text])[0]

    async def aclassify(self, text: str | bytes) -> Decision:
        """Classify without blocking the event loop (the tiers run in a worker thread)."""
        return await asyncio.to_thread(self.classify, text)

    async def aclassify_batch(self, texts: Sequence[str | bytes]) -> list[Decision]:
        return await asyncio.to_thread(self.classify_batch, texts)

    def classify_batch(self, texts: Iterable[str | bytes], *, client: str | None = None) -> list[Decision]:
        """Classify many texts; each tier sees the still-undecided texts as one batch.
        ``client``: whose escalation budget pays for the last tier (see
        :func:`safecascade.router.budget.client_key`; ``None`` = anonymous)."""
        pending = self.prepare(texts, client=client)
        self.run_tiers(pending)
        decisions: list[Decision] = [p.decision for p in pending]  # type: ignore[misc]
        self.emit(pending, decisions, strict=True)
        return decisions

    def prepare(self, texts: Iterable[str | bytes], *, client: str | None = None) -> list[PendingText]:
        """Step 1 of :meth:`classify_batch`: input checks and cache lookups, one :class:`PendingText`
        per text (already decided where an input rule or the cache decided). ``TypeError`` for a
        single text instead of a list, or for an item that is not text."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("classify_batch expects a list of texts, got a single text; use classify()")
        items = list(texts)
        started = time.perf_counter()
        pending: list[PendingText] = []
        for raw in items:
            clean = clean_input(raw, max_chars=self.config.input.max_chars, on_oversize=self.config.input.on_oversize)
            p = PendingText(clean=clean, started=started, path=[], single=len(items) == 1, client=client)
            if clean.rule == "empty_input":
                p.decision = self._input_decision(p, self.config.input.on_empty, "empty_input")
            elif clean.rule == "input_too_large":
                p.decision = self._input_decision(p, self.config.input.on_oversize, "input_too_large")
            elif self.cache is not None:
                hit = self.cache.get(self.cache_key(clean.text_hash))
                if hit is not None:
                    p.decision = replace(hit, cache_hit=True, latency_ms=round((time.perf_counter() - started) * 1000.0, 4))
            pending.append(p)
        return pending

    def run_tiers(self, pending: list[PendingText], *, start: int = 0, stop: int | None = None,
                  background: bool = False) -> None:
        """Step 2 of :meth:`classify_batch`: run ``tiers[start:stop]`` (default: all) over the
        still-undecided texts of ``pending``, each tier on them as one batch; a text gets its
        Decision from the tier that decides it (the last tier always decides). The escalation
        budget guards the last tier. Post-moderation walks the cheap tiers first
        (``stop=-1``) and the last tier later in the background (``start=-1``,
        ``background=True``: texts whose budget action is ``queue`` skip the budget there, the
        post-moderation workers being their limit)."""
        n_tiers = len(self.tiers)
        lo, hi, _ = slice(start, stop).indices(n_tiers)
        for idx in range(lo, hi):
            tier, tc = self.tiers[idx], self.config.tiers[idx]
            todo = [p for p in pending if p.decision is None]
            if not todo:
                break
            grants: list[tuple[str | None, int]] = []
            if idx == n_tiers - 1 and idx > 0 and self.budget is not None:
                todo, grants = self._apply_budget(todo, tc, background=background)
                if not todo:
                    break
            try:
                results, wall_ms = self._run_tier(tier, tc, [p.clean.text for p in todo])
                per_text_ms = wall_ms / len(todo)
                on_evidence, evidence_ms = self._evidence_scores(todo, results, tc) if tc.combine else ([None] * len(todo), [0.0] * len(todo))
                for p, res, ev, ev_ms in zip(todo, results, on_evidence, evidence_ms):
                    latency = (res.latency_ms if res.latency_ms > 0 else per_text_ms) + ev_ms
                    self._step(p, res, tc, latency, last=idx == n_tiers - 1, on_evidence=ev)
            finally:
                for client, n in grants:
                    release_for(self.budget, n, client)

    def emit(self, pending: list[PendingText], decisions: list[Decision], *, strict: bool = False) -> None:
        """Step 3 of :meth:`classify_batch`: cache fresh decisions and hand every decision, with its
        text (``pending[i]``'s cleaned text), to the sinks (verdict log, metrics).

        A sink failure does not stop the other sinks or decisions; afterwards it goes to
        ``on_sink_error`` when set, else raises :class:`DecisionSinkError` when ``strict`` (or
        inside :meth:`strict_sinks`), else is logged at ERROR."""
        for p, d in zip(pending, decisions):
            if self.cache is not None and not d.cache_hit and d.tier != "input" and not d.reason.startswith(("fallback", "budget", "provisional", "postmod")):
                self.cache.put(self.cache_key(d.text_hash), d)
        errors: list[tuple[Any, BaseException]] = []
        try:
            with ExitStack() as stack:
                # Sinks that can acknowledge a batch at once (the verdict log: one fsync per batch) do so.
                for sink in self.sinks:
                    deferred = getattr(sink, "deferred_ack", None)
                    if callable(deferred):
                        stack.enter_context(deferred())
                for p, d in zip(pending, decisions):
                    for sink in self.sinks:
                        try:
                            sink(d, p.clean.text)
                        except Exception as exc:  # the other sinks still see every decision
                            errors.append((sink, exc))
        except Exception as exc:  # a batch acknowledgement (group fsync) failed
            errors.append((None, exc))
        if errors:
            strict = strict or id(self) in _STRICT.__dict__.get("routers", ())
            self._sink_failed(DecisionSinkError(errors, decisions), strict=strict)

    def _sink_failed(self, err: DecisionSinkError, *, strict: bool) -> None:
        first = err.errors[0][1]
        if self.on_sink_error is not None:
            log.warning("%s (passed to on_sink_error)", err)
            self.on_sink_error(err)
        elif strict:
            log.warning("%s (raised)", err)
            raise err from first
        else:
            log.error("%s", err, exc_info=(type(first), first, first.__traceback__))

    def fast_verdict(self, p: PendingText, tc: TierConfig, *, reason: str = "fallback:fast-verdict") -> None:
        """Decide ``p`` by the most recent tier that scored, at 0.5: a failed or budget-refused
        tier ``tc`` with ``fast-verdict``, and post-moderation's provisional verdict
        (``reason="provisional"``). With no such tier, block (fail closed; reason
        ``<reason>-unavailable``). Sets ``p.decision``."""
        for trace in reversed(p.path):
            if trace.scores:
                action = "block" if any(s >= 0.5 for s in trace.scores.values()) else "allow"
                self._finish(p, action, tier=trace.tier, reason=reason, scores=trace.scores,
                             rule_ids=trace.rule_ids, threshold=0.5)
                return
        self._finish(p, "block", tier=tc.name, reason=f"{reason}-unavailable", scores={}, rule_ids={})

    def _apply_budget(self, todo: list[PendingText], tc: TierConfig, *, background: bool
                      ) -> tuple[list[PendingText], list[tuple[str | None, int]]]:
        """Ask the budget for ``todo`` (per client, in work units); refused texts get
        ``on_budget_exhausted``. Returns the texts to send and the ``(client, n)`` grants."""
        groups: dict[str | None, list[PendingText]] = {}
        keep: list[PendingText] = []
        for p in todo:
            if background and self._budget_plan(p, tc)[0] == "queue":
                keep.append(p)  # deferred by the budget already: the post-moderation workers are its limit
            else:
                groups.setdefault(p.client, []).append(p)
        grants: list[tuple[str | None, int]] = []
        for client, group in groups.items():
            n = acquire_for(self.budget, [p.clean.text for p in group], client)
            grants.append((client, n))
            keep.extend(group[:n])
            for p in group[n:]:
                self._budget_refusal(p, tc)
        return keep, grants

    def _budget_plan(self, p: PendingText, tc: TierConfig) -> tuple[str, dict[str, bool], set[str]]:
        """Combine the per-policy ``on_budget_exhausted`` actions for an uncertain text.

        Policies the last scoring tier already allowed (inside their allow band) stay allowed;
        each other policy is flagged by its action (``block``: yes, ``allow``: no,
        ``fast-verdict`` / ``queue``: the last score >= 0.5, or yes without a score). Returns
        ``("queue", flags, actions)`` when some uncertain policy says ``queue`` and none says
        ``block``, else ``("final", flags, actions)``."""
        prev = next((t for t in reversed(p.path) if t.scores), None)
        ptc = next((c for c in self.config.tiers if prev is not None and c.name == prev.tier), None)
        flags: dict[str, bool] = {}
        actions: set[str] = set()
        for pol in self.policies:
            score = prev.scores.get(pol) if prev is not None else None
            if score is not None and ptc is not None and ptc.band_for(pol).outcome(score) == "allow":
                flags[pol] = False
                continue
            action = tc.budget_action_for(pol)
            actions.add(action)
            flags[pol] = action == "block" or (action != "allow" and (score is None or score >= 0.5))
        kind = "queue" if "queue" in actions and "block" not in actions else "final"
        return kind, flags, actions

    def _budget_refusal(self, p: PendingText, tc: TierConfig) -> None:
        """The escalation budget is spent: the last tier's ``on_budget_exhausted`` applies
        (reason ``budget_exhausted``; ``queue``: a provisional verdict now, the last tier later
        through the router's post-moderator, or ``block`` without one)."""
        kind, flags, actions = self._budget_plan(p, tc)
        if kind == "queue":
            deferred = self.post_moderator.defer(p, tc) if self.post_moderator is not None else None
            if deferred is not None:
                p.decision = deferred
                return
            log.warning("on_budget_exhausted: queue, but no post-moderator has room: blocking (fail closed)")
            flags = {pol: True if tc.budget_action_for(pol) == "queue" else f for pol, f in flags.items()}
            actions = actions | {"queue-unavailable"}
        label = "|".join(sorted(actions)) or "allow"
        p.path.append(TierTrace(tier=tc.name, outcome="skipped", error="budget_exhausted", info={"on_budget_exhausted": label}))
        if actions == {"fast-verdict"}:
            self.fast_verdict(p, tc, reason="budget_exhausted")
            return
        prev = next((t for t in reversed(p.path) if t.scores), None)
        self._finish(p, "block" if any(flags.values()) else "allow", tier=tc.name, reason="budget_exhausted",
                     scores=dict(prev.scores) if prev else {}, rule_ids=dict(prev.rule_ids) if prev else {}, flags=flags)

    # ------------------------------------------------------------------ internals
    def _run_tier(self, tier: Tier, tc: TierConfig, texts: list[str]) -> tuple[list[TierResult], float]:
        t0 = time.perf_counter()
        try:
            results = tier.classify(texts)
            if len(results) != len(texts):
                raise RuntimeError(f"tier returned {len(results)} results for {len(texts)} texts")
        except Exception as exc:  # a tier crash must not lose the verdict: on_error applies
            log.exception("tier %s failed on a batch of %d", tc.name, len(texts))
            results = [TierResult(scores={}, error=f"{type(exc).__name__}: {exc}") for _ in texts]
        return results, (time.perf_counter() - t0) * 1000.0

    def _evidence_scores(self, todo: list[PendingText], results: list[TierResult],
                         tc: TierConfig) -> tuple[list[dict[str, dict[str, float]] | None], list[float]]:
        """For a tier that combines earlier tiers' evidence: per text, each earlier tier's scores of
        the pieces this tier's scores rest on (``TierResult.evidence``), where that earlier tier read
        the text only in windows (router/combine.py), each earlier tier scoring them in one batch;
        and the milliseconds that took per text."""
        out: list[dict[str, dict[str, float]] | None] = [None] * len(todo)
        ms = [0.0] * len(todo)
        asks: dict[str, list[tuple[int, str, str]]] = {}  # earlier tier -> (text index, policy, piece)
        for i, (p, res) in enumerate(zip(todo, results)):
            if res.error is not None or not res.evidence:
                continue
            for tier_name, pols in needs_evidence(p.path, tc.combine).items():
                asks.setdefault(tier_name, []).extend((i, pol, res.evidence[pol]) for pol in pols if res.evidence.get(pol))
        by_name = {c.name: (t, c) for t, c in zip(self.tiers, self.config.tiers)}
        for tier_name, items in asks.items():
            if not items:
                continue
            pieces = list(dict.fromkeys(piece for _, _, piece in items))
            got, wall_ms = self._run_tier(*by_name[tier_name], pieces)
            score_of = dict(zip(pieces, got))
            for i, pol, piece in items:
                s = evidence_score(score_of[piece], pol)
                if s is not None:
                    scored: dict[str, dict[str, float]] = out[i] or {}
                    scored.setdefault(tier_name, {})[pol] = s
                    out[i] = scored
                ms[i] += wall_ms / len(items)
        return out, ms

    def _step(self, p: PendingText, res: TierResult, tc: TierConfig, latency_ms: float, *, last: bool,
              on_evidence: dict[str, dict[str, float]] | None = None) -> None:
        if tc.combine:  # the earlier tiers' evidence this tier decides with (router/combine.py)
            res = combined(res, p.path, tc.combine, on_evidence)
        if res.error is None and not res.scores and res.info.get("not_read") and not last:
            # the tier passes on a text it does not read (the multilingual tier's documents): no verdict here
            p.path.append(self._trace(tc, res, "escalate", latency_ms))
            return
        if res.error is not None or not res.scores:
            error = res.error or "tier returned no scores"
            p.path.append(self._trace(tc, res, "error", latency_ms, error=error))
            action = tc.on_error
            if action == "next" and not last:
                return
            if action == "fast-verdict":
                self.fast_verdict(p, tc)
                return
            self._finish(p, action, tier=tc.name, reason=f"fallback:{action}", scores={}, rule_ids={}, error=error)
            return

        # the block band is tested on block_score: a tier may pass on a text it cannot read well enough to block
        blocks = {pol: tc.band_for(pol).outcome(res.block_score(pol)) == "block" for pol in res.scores}
        covered_all = all(pol in res.scores for pol in self.policies)
        flags: dict[str, bool] | None = None
        if last:
            # a policy a heuristic rule named (see _named_rules) is decided at its named_threshold; the
            # rules stay on the heuristic tier's trace (a verdict's rule_ids are the deciding tier's own)
            named = self._named_rules(p)
            threshold: Callable[[str], float] = lambda pol: tc.named_threshold_for(pol) if pol in named else tc.threshold_for(pol)
            action = "block" if any(s >= threshold(pol) for pol, s in res.scores.items()) else "allow"
            reason = "last_tier"
        elif any(blocks.values()):
            action, reason, flags = "block", "band", blocks
        elif covered_all and all(tc.band_for(pol).outcome(res.allow_score(pol)) == "allow" for pol in res.scores) \
                and not self._named_rules(p):
            action, reason = "allow", "band"
        else:
            p.path.append(self._trace(tc, res, "escalate", latency_ms))
            return
        p.path.append(self._trace(tc, res, action, latency_ms))
        self._finish(p, action, tier=tc.name, reason=reason, scores=res.scores, rule_ids=res.rule_ids,
                     threshold=threshold if last else None, tc=tc, flags=flags)

    def _sub_categories(self, p: PendingText, pol: str) -> tuple[str, ...]:
        """``pol``'s violating rule ids that the tiers on ``p``'s path found: a heuristic tier's
        ``info["cites"]`` (its matched rules' sub-categories) and rule ids a tier cited that the
        policy defines (the safeguard's)."""
        known = self._violating_ids.get(pol, frozenset())
        out: list[str] = []
        for t in p.path:
            cites = t.info.get("cites") if isinstance(t.info, Mapping) else None
            cited = cites.get(pol) if isinstance(cites, Mapping) else None
            found = [*t.rule_ids.get(pol, ()), *(cited if isinstance(cited, (list, tuple)) else ())]
            out.extend(r for r in found if isinstance(r, str) and r in known and r not in out)
        return tuple(out)

    def _named_rules(self, p: PendingText) -> dict[str, tuple[str, ...]]:
        """Policy -> the heuristic tiers' named rules that matched ``p`` on its way here without
        deciding (a rule measured too weakly to decide alone, an obfuscation detector). Such a text
        is never allowed by a later cheap tier's allow band, so the tiers after it see it; the last
        one decides it at its ``named_threshold`` for that policy (at most its threshold), and with
        a safeguard configured the uncertain band reaches it."""
        out: dict[str, tuple[str, ...]] = {}
        for t in p.path:
            if t.tier in self._heuristic_tiers:
                for pol, ids in t.rule_ids.items():
                    if ids:
                        out[pol] = tuple(dict.fromkeys((*out.get(pol, ()), *ids)))
        return out

    @staticmethod
    def _trace(tc: TierConfig, res: TierResult, outcome: str, latency_ms: float, *, error: str | None = None) -> TierTrace:
        return TierTrace(tier=tc.name, outcome=cast(Outcome, outcome), scores=dict(res.scores), rule_ids=dict(res.rule_ids),
                         latency_ms=round(latency_ms, 4), error=error, warnings=tuple(res.warnings),
                         info=dict(res.info), cost=dict(res.cost))

    def _input_decision(self, p: PendingText, action: str, reason: str) -> Decision:
        p.path.append(TierTrace(tier="input", outcome=cast(Outcome, action)))  # allow|block, checked at config load
        self._finish(p, action, tier="input", reason=reason, scores={}, rule_ids={})
        return p.decision  # type: ignore[return-value]

    def _finish(self, p: PendingText, action: str, *, tier: str, reason: str, scores: Mapping[str, float],
                rule_ids: Mapping[str, tuple[str, ...]],
                threshold: float | Callable[[str], float] | None = None, tc: TierConfig | None = None, error: str | None = None,
                flags: Mapping[str, bool] | None = None) -> None:
        verdicts: dict[str, PolicyVerdict] = {}
        for pol in self.policies:
            s = scores.get(pol)
            if flags is not None:
                flagged = bool(flags.get(pol, False))
            elif s is None:
                flagged = False
            elif threshold is not None:
                flagged = s >= (threshold(pol) if callable(threshold) else threshold)
            elif tc is not None:
                flagged = tc.band_for(pol).outcome(s) == "block"
            else:
                flagged = action == "block"
            verdicts[pol] = PolicyVerdict(score=None if s is None else float(s), flagged=flagged,
                                          rule_ids=tuple(rule_ids.get(pol, ())), sub_categories=self._sub_categories(p, pol))
        warnings = list(p.clean.warnings)
        for trace in p.path:
            warnings.extend(trace.warnings)
        if error:
            warnings.append(f"{tier}_error")
        p.decision = Decision(
            action=action,  # type: ignore[arg-type]
            tier=tier,
            reason=reason,
            score=float(max(scores.values())) if scores else (1.0 if action == "block" else 0.0),
            policies=verdicts,
            path=tuple(p.path),
            latency_ms=round(self._latency(p), 4),
            text_hash=p.clean.text_hash,
            config_name=self.config.name,
            config_hash=self.config_hash,
            policy_hashes=dict(self.policy_hashes),
            warnings=tuple(dict.fromkeys(warnings)),
        )

    @staticmethod
    def _latency(p: PendingText) -> float:
        """Wall time for a single text; in a batch, the text's share of each tier it went through
        (batch wall time would charge every text for the whole batch)."""
        if p.single:
            return (time.perf_counter() - p.started) * 1000.0
        return sum(t.latency_ms for t in p.path)

    def describe(self) -> dict[str, Any]:
        """Config, hashes and tier order (for /healthz and the CLI)."""
        return {"name": self.config.name, "config_hash": self.config_hash, "policies": self.policy_hashes,
                "tiers": [t.name for t in self.config.tiers]}

    def health(self) -> dict[str, Any]:
        """Tiers' health for /healthz: ``{"status": "ok" | "degraded", "tiers": {name: tier.health()}}``.

        Only tiers with a ``health()`` (the safeguard) are listed; ``degraded`` when any is not
        ``up`` (an isolated llama.cpp worker restarting or down: its calls fail with a recorded
        error and the tier's ``on_error`` applies meanwhile).
        """
        tiers: dict[str, Any] = {}
        for tier in self.tiers:
            probe = getattr(tier, "health", None)
            if callable(probe):
                try:
                    tiers[tier.name] = dict(probe())
                except Exception as exc:  # health must never take /healthz down
                    tiers[tier.name] = {"state": "unknown", "last_error": f"{type(exc).__name__}: {exc}"}
        bad = any(h.get("state") in ("restarting", "down") for h in tiers.values())
        return {"status": "degraded" if bad else "ok", "tiers": tiers}
