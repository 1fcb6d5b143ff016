"""The HTTP service (``safecascade serve``): an ASGI app (FastAPI) around a Router.

Endpoints::

    POST /v1/moderations   OpenAI moderation request/response shape (the official client works)
    POST /v1/classify      full Decision JSON for each input
    GET  /healthz          router config/hashes, cache, budget and verdict-log state (no auth)
    GET  /metrics          Prometheus text format

Request body (both POST endpoints): ``{"input": "text" | ["text", ...], "model": "..."}``;
list items may also be OpenAI multimodal text parts ``{"type": "text", "text": "..."}``
(image parts are refused). Moderation results carry ``flagged``, ``categories`` and
``category_scores`` keyed by the router's policies, plus the Decision summary under
``"safecascade"``. A policy the deciding tier gave no score (an input rule or a fallback decided)
reports score 0.0 and category false; ``flagged`` is always the Decision's action.

Errors use the OpenAI error shape ``{"error": {"message", "type", "param", "code"}}``:
401 (missing/wrong bearer token, when a token is configured), 413 (body over
``max_body_bytes``), 400 (malformed JSON, wrong types, too many inputs), 408 (the body did not
arrive within ``body_timeout_s``; the connection is closed), 429 (more than ``max_pending``
requests already being classified; ``Retry-After`` set), 503 (the verdict log could not
acknowledge a decision - no verdict is returned that the log did not record). A client that
disconnects is counted as status 499 in ``/metrics`` (no traceback is logged). The router runs
in a thread pool, never on the event loop.

``/v1/classify`` leaves the safeguard's model text out of ``path[].info`` (the keys in
:data:`REDACTED_INFO_KEYS`: rationales and label log-probs) unless ``expose_rationale`` is on
(``serve --expose-rationale``); the verdict log keeps them.

Post-moderation (``create_app(..., post_moderator=PostModerator(router))``, ``serve
--post-moderation``): ``POST /v1/moderations?mode=post`` and ``/v1/classify?mode=post`` answer
with the cheaper tiers' verdict (``reason: provisional`` for texts the last tier will judge);
the last tier runs in the background and its final decision goes to the verdict log and
metrics (see :mod:`safecascade.router.postmod`). Without a post-moderator, ``mode=post`` is 400.

Escalation budgets are per client when the router's budget is a
:class:`~safecascade.router.budget.ClientBudgets`: the client key is a hash of the bearer token
(when auth is on) and the ``X-Client-Id`` header (when sent), see :func:`request_client`.
"""


import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from safecascade.router.budget import DEFAULT_CHARS_PER_UNIT, DEFAULT_MAX_CLIENTS, client_key
from safecascade.router.cascade import Router
from safecascade.router.decision import Decision, json_default
from safecascade.router.metrics import CONTENT_TYPE, Metrics
from safecascade.router.verdict_log import VerdictLog
from safecascade.router.verdict_record import VerdictLogError

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 2 << 20
DEFAULT_MAX_INPUTS = 256
DEFAULT_MAX_PENDING = 64
DEFAULT_BODY_TIMEOUT_S = 10.0
DEFAULT_TOKEN_ENV = "SAFECASCADE_API_TOKEN"
STATUS_CLIENT_GONE = 499  # nginx's "client closed request": counted, never a 500
REDACTED_INFO_KEYS = frozenset({"rationale", "lp0", "lp1"})  # model text and log-probs: log only
CLIENT_ID_HEADER = "x-client-id"


def request_client(headers: Any, *, authenticated: bool) -> str:
    """The escalation-budget client key of a request: a hash of the bearer token (when the
    server checks one, so each token identity has its own budget) and of the ``X-Client-Id``
    header (a sub-client under that identity, e.g. set by a gateway); ``anonymous`` when
    neither. Without auth the header is self-asserted: the global cap and a fail-closed
    ``on_budget_exhausted`` remain the defence against a caller rotating ids."""
    token = headers.get("authorization", "").partition(" ")[2].strip() if authenticated else ""
    client_id = (headers.get(CLIENT_ID_HEADER) or "").strip()
    return client_key(f"token:{token}" if token else None, f"id:{client_id}" if client_id else None)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}


def _json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None):
    from fastapi.responses import Response

    body = json.dumps(obj, default=json_default, ensure_ascii=False).encode("utf-8")
    return Response(content=body, status_code=status, media_type="application/json", headers=headers)


def _error_response(err: _HTTPError):
    return _json_response({"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}},
                          err.status, err.headers)


def parse_inputs(payload: Any, *, max_inputs: int) -> list[str]:
    """Validate a request body (already JSON-decoded) and return its texts; raises a 400."""
    if not isinstance(payload, dict):
        raise _HTTPError(400, f"request body must be a JSON object, got {type(payload).__name__}")
    if "input" not in payload:
        raise _HTTPError(400, "'input' is required: a string or a list of strings", param="input")
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise _HTTPError(400, f"'model' must be a string, got {type(model).__name__}", param="model")
    raw = payload["input"]
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list):
        raise _HTTPError(400, f"'input' must be a string or a list of strings, got {type(raw).__name__}", param="input")
    if not raw:
        raise _HTTPError(400, "'input' is an empty list", param="input")
    if len(raw) > max_inputs:
        raise _HTTPError(400, f"'input' has {len(raw)} items; at most {max_inputs} per request", param="input")
    texts = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
            texts.append(item["text"])
        elif isinstance(item, dict) and item.get("type") in ("image_url", "image"):
            raise _HTTPError(400, f"input[{i}]: only text inputs are supported", param=f"input[{i}]")
        else:
            raise _HTTPError(400, f"input[{i}] must be a string or a {{'type': 'text', 'text': ...}} object, "
                                  f"got {type(item).__name__}", param=f"input[{i}]")
    return texts


class _ClientGone(Exception):
    """The client disconnected before the response (recorded as 499)."""


def _redact(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _redact(v) for k, v in obj.items() if k not in REDACTED_INFO_KEYS}
    if isinstance(obj, list):
        return [_redact(v) for v in obj]
    return obj


def public_decision(decision: Decision, *, expose_rationale: bool = False) -> dict[str, Any]:
    """``decision.to_dict()`` as ``/v1/classify`` returns it: without the keys in
    :data:`REDACTED_INFO_KEYS` (the safeguard's rationale, ``lp0`` / ``lp1``) anywhere in a
    tier's ``info``, unless ``expose_rationale``."""
    d = decision.to_dict()
    if not expose_rationale:
        d["path"] = [{**t, "info": _redact(t.get("info") or {})} for t in d["path"]]
    return d


def moderation_result(decision: Decision) -> dict[str, Any]:
    """One OpenAI-shaped moderation result for a Decision."""
    categories = {name: bool(v.flagged) for name, v in decision.policies.items()}
    scores = {name: (0.0 if v.score is None else float(v.score)) for name, v in decision.policies.items()}
    return {
        "flagged": decision.flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": {name: ["text"] for name in decision.policies},
        "safecascade": {
            "action": decision.action, "tier": decision.tier, "reason": decision.reason, "score": decision.score,
            "rule_ids": list(decision.rule_ids), "text_hash": decision.text_hash, "latency_ms": decision.latency_ms,
            "cache_hit": decision.cache_hit, "warnings": list(decision.warnings), "config_hash": decision.config_hash,
        },
    }


def create_app(router: Router, *, token: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_inputs: int = DEFAULT_MAX_INPUTS, max_pending: int = DEFAULT_MAX_PENDING, workers: int = 4,
               model: str | None = None, metrics: Metrics | None = None, verdict_log: VerdictLog | None = None,
               post_moderator: Any = None, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
               expose_rationale: bool = False):
    """Build the FastAPI app for ``router``.

    ``token``: require ``Authorization: Bearer <token>`` on ``/v1/*`` and ``/metrics``.
    ``max_body_bytes``: larger bodies get 413. ``max_inputs``: texts per request.
    ``max_pending``: requests being classified at once before new ones get 429.
    ``workers``: threads running the router. ``model``: the ``model`` field of responses
    (default ``safecascade-<config name>``). ``metrics``: a :class:`Metrics` (created and added
    to ``router.sinks`` when absent). ``verdict_log``: found in ``router.sinks`` when not given;
    with one, responses wait until the log acknowledged their decisions. ``post_moderator``: a
    :class:`~safecascade.router.postmod.PostModerator` around ``router``, enabling ``?mode=post``.
    ``body_timeout_s``: the whole request body must arrive within this many seconds, else 408
    and the connection is closed. ``expose_rationale``: keep the safeguard's rationales and
    log-probs in ``/v1/classify`` responses (off: see :func:`public_decision`).
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from starlette.requests import ClientDisconnect

    from safecascade.router.cascade import DecisionSinkError

    if max_pending < 1 or workers < 1 or max_inputs < 1 or max_body_bytes < 1:
        raise ValueError("max_pending, workers, max_inputs and max_body_bytes must be positive")
    if not body_timeout_s > 0:
        raise ValueError(f"body_timeout_s must be positive, got {body_timeout_s!r}")
    if metrics is None:
        metrics = next((s for s in router.sinks if isinstance(s, Metrics)), None) or Metrics()
    if metrics not in router.sinks:
        router.sinks.append(metrics)
    if verdict_log is None:
        verdict_log = next((s for s in router.sinks if isinstance(s, VerdictLog)), None)
    model_name = model or f"safecascade-{router.config.name}"
    token_bytes = token.encode("utf-8") if token else None
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="safecascade-classify")
    state = {"in_flight": 0}

    _register_gauges(metrics, router, verdict_log, state)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        executor.shutdown(wait=True)

    app = FastAPI(title="safecascade", version="1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.router = router
    app.state.metrics = metrics
    app.state.verdict_log = verdict_log

    def check_auth(request: Request) -> None:
        if token_bytes is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode("utf-8"), token_bytes):
            raise _HTTPError(401, "missing or invalid bearer token", type_="authentication_error",
                             code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def read_json(request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is not None:
            try:
                if int(length) > max_body_bytes:
                    raise _HTTPError(413, f"request body is {int(length)} bytes; the limit is {max_body_bytes}",
                                     code="request_too_large")
            except ValueError:
                raise _HTTPError(400, "invalid Content-Length header") from None
        chunks, size = [], 0

        async def read_body() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_body_bytes:
                    raise _HTTPError(413, f"request body exceeds the limit of {max_body_bytes} bytes", code="request_too_large")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read_body(), body_timeout_s)
        except asyncio.TimeoutError:
            raise _HTTPError(408, f"the request body did not arrive within {body_timeout_s:g} s ({size} bytes read)",
                             code="request_timeout", headers={"Connection": "close"}) from None
        except ClientDisconnect:
            raise _ClientGone() from None
        body = b"".join(chunks)
        if not body.strip():
            raise _HTTPError(400, "request body is empty; expected a JSON object with 'input'")
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting bombs
            raise _HTTPError(400, f"request body is not valid JSON: {str(exc)[:200]}") from None

    def classify_sync(texts: list[str], mode: str = "sync", client: str | None = None) -> list[Decision]:
        run = post_moderator.submit_batch if mode == "post" else router.classify_batch
        with router.strict_sinks():  # a sink failure (the verdict log) fails the request, never silently
            if verdict_log is None:
                return run(texts, client=client)
            # one journal batch (one fsync) for the whole request, all of it or none; nothing unlogged is returned
            with verdict_log.deferred_ack():
                return run(texts, client=client)

    def request_mode(request: Request) -> str:
        mode = request.query_params.get("mode", "sync")
        if mode not in ("sync", "post"):
            raise _HTTPError(400, f"mode must be 'sync' or 'post', got {mode[:40]!r}", param="mode")
        if mode == "post" and post_moderator is None:
            raise _HTTPError(400, "post-moderation is not enabled on this server (serve --post-moderation)", param="mode")
        return mode

    async def classify(texts: list[str], mode: str = "sync", client: str | None = None) -> list[Decision]:
        if state["in_flight"] >= max_pending:
            raise _HTTPError(429, f"overloaded: {max_pending} requests already in progress; retry later",
                             type_="rate_limit_error", code="overloaded", headers={"Retry-After": "1"})
        state["in_flight"] += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, classify_sync, texts, mode, client)
        except VerdictLogError as exc:
            log.error("verdict log refused a decision: %s", exc)
            raise _HTTPError(503, "the verdict log could not record this decision; retry later",
                             type_="server_error", code="verdict_log_unavailable") from None
        except DecisionSinkError as exc:
            if any(isinstance(e, VerdictLogError) for _, e in exc.errors):
                raise _HTTPError(503, "the verdict log could not record this decision; retry later",
                                 type_="server_error", code="verdict_log_unavailable") from None
            raise
        except TypeError as exc:
            raise _HTTPError(400, str(exc)) from None
        finally:
            state["in_flight"] -= 1

    async def handle(request: Request, endpoint: str, respond) -> Response:
        t0 = time.perf_counter()
        status = 500
        try:
            check_auth(request)
            mode = request_mode(request)
            texts = parse_inputs(await read_json(request), max_inputs=max_inputs)
            decisions = await classify(texts, mode, request_client(request.headers, authenticated=token_bytes is not None))
            if await request.is_disconnected():
                raise _ClientGone()  # the decisions are logged (acknowledged); nobody reads the answer
            resp = respond(decisions)
            status = resp.status_code
            return resp
        except _ClientGone:
            status = STATUS_CLIENT_GONE
            log.info("%s: client disconnected before the response", endpoint)
            return Response(status_code=STATUS_CLIENT_GONE)
        except _HTTPError as err:
            status = err.status
            return _error_response(err)
        except Exception:
            log.exception("unhandled error in %s", endpoint)
            return _error_response(_HTTPError(500, "internal error", type_="server_error"))
        finally:
            metrics.observe_request(endpoint, status, time.perf_counter() - t0)

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> Response:
        def respond(decisions: list[Decision]) -> Response:
            return _json_response({"id": f"modr-{uuid.uuid4().hex}", "model": model_name,
                                   "results": [moderation_result(d) for d in decisions]})

        return await handle(request, "/v1/moderations", respond)

    @app.post("/v1/classify")
    async def classify_endpoint(request: Request) -> Response:
        def respond(decisions: list[Decision]) -> Response:
            return _json_response({"id": f"clf-{uuid.uuid4().hex}", "model": model_name,
                                   "results": [public_decision(d, expose_rationale=expose_rationale)
                                               for d in decisions]})

        return await handle(request, "/v1/classify", respond)

    @app.get("/healthz")
    async def healthz() -> Response:
        health = router.health()  # cheap: no call into a tier; "degraded" while the LLM worker restarts
        body: dict[str, Any] = {"status": health["status"], "model": model_name, "router": router.describe(),
                                "tiers_health": health["tiers"], "in_flight": state["in_flight"], "max_pending": max_pending}
        for key, obj in (("cache", router.cache), ("budget", router.budget), ("verdict_log", verdict_log),
                         ("post_moderation", post_moderator)):
            stats = getattr(obj, "stats", None)
            body[key] = stats() if callable(stats) else None
        return _json_response(body)

    @app.get("/metrics")
    async def metrics_endpoint(request: Request) -> Response:
        try:
            check_auth(request)
        except _HTTPError as err:
            return _error_response(err)
        return Response(content=metrics.render(), media_type=CONTENT_TYPE)

    return app


def _register_gauges(metrics: Metrics, router: Router, verdict_log: VerdictLog | None, state: dict) -> None:
    if getattr(metrics, "_server_gauges", False):
        return
    metrics._server_gauges = True  # type: ignore[attr-defined]
    metrics.add_gauge("in_flight_requests", "Requests being classified now.", lambda: state["in_flight"])

    def stat(obj_fn, key):
        def read():
            obj = obj_fn()
            stats = getattr(obj, "stats", None)
            return stats()[key] if callable(stats) else None
        return read

    metrics.add_gauge("cache_hit_rate", "Verdict cache hit rate since start.", stat(lambda: router.cache, "hit_rate"))
    metrics.add_gauge("cache_size", "Entries in the verdict cache.", stat(lambda: router.cache, "size"))
    metrics.add_gauge("budget_in_flight", "Escalations granted and not yet finished.", stat(lambda: router.budget, "in_flight"))
    metrics.add_gauge("budget_granted", "Escalations granted by the budget since start.", stat(lambda: router.budget, "granted"))
    metrics.add_gauge("verdict_log_acknowledged", "Verdict log records acknowledged since start.", stat(lambda: verdict_log, "acknowledged"))
    metrics.add_gauge("verdict_log_rows_written", "Verdict log rows committed to SQLite since start.", stat(lambda: verdict_log, "rows_written"))
    metrics.add_gauge("verdict_log_failed", "Verdict log records that could not be made durable.", stat(lambda: verdict_log, "failed"))


class BackgroundServer:
    """Run an ASGI app with uvicorn in a background thread (tests, load tests, embedding).

    ``with BackgroundServer(app) as srv: httpx.get(srv.url + "/healthz")``; ``port=0`` picks a
    free port (``srv.port`` after start).
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on")
        self.server = uvicorn.Server(self.config)
        self.host = host
        self.port = port
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self._thread = threading.Thread(target=self.server.run, name="safecascade-uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        sockets = [s for srv in (self.server.servers or []) for s in srv.sockets]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ---------------------------------------------------------------------- CLI
def build_router(config: str | None = None, *, log_path: str | None = None, store_text: bool = False,
                 cache_size: int = 10_000, cache_ttl_s: float = 3600.0, budget_rps: float | None = None,
                 budget_burst: float | None = None, budget_in_flight: int | None = None,
                 client_budget_rps: float | None = None, client_budget_burst: float | None = None,
                 client_budget_in_flight: int | None = None, max_clients: int = DEFAULT_MAX_CLIENTS,
                 budget_unit_chars: int = DEFAULT_CHARS_PER_UNIT,
                 on_budget_exhausted: str | None = None) -> tuple[Router, VerdictLog | None]:
    """A Router with the serving components attached (cache, budget, verdict log).

    An escalation budget (in work units, see :mod:`safecascade.router.budget`) is attached when
    ``budget_rps`` or ``budget_in_flight`` is given (either alone works: the global budget);
    ``client_budget_*`` add a bucket per client (at most ``max_clients``, LRU) under the global
    one. Values that limit nothing (0, negative, a burst without a rate) raise ``ValueError``
    before anything is loaded. ``on_budget_exhausted`` overrides the last tier's action for every
    policy (``block`` | ``allow`` | ``fast-verdict`` | ``queue``)."""
    from dataclasses import replace

    from safecascade.router.budget import ClientBudgets, TokenBucketBudget
    from safecascade.router.cache import LRUDecisionCache
    from safecascade.router.config import BUDGET_ACTIONS

    if on_budget_exhausted is not None and on_budget_exhausted not in BUDGET_ACTIONS:
        raise ValueError(f"on_budget_exhausted must be one of {'|'.join(BUDGET_ACTIONS)}, got {on_budget_exhausted!r}")
    budget = None
    if budget_rps is not None or budget_in_flight is not None or budget_burst is not None:
        budget = TokenBucketBudget(budget_rps, budget_burst, budget_in_flight, chars_per_unit=budget_unit_chars)  # validates
    if client_budget_rps is not None or client_budget_in_flight is not None or client_budget_burst is not None:
        budget = ClientBudgets(client_budget_rps, client_budget_burst, client_budget_in_flight, global_budget=budget,
                               max_clients=max_clients, chars_per_unit=budget_unit_chars)
    router = Router.load(config)
    if on_budget_exhausted is not None:
        last = router.config.tiers[-1]
        cfg = replace(router.config, tiers=(*router.config.tiers[:-1], replace(last, on_budget_exhausted={"default": on_budget_exhausted})))
        router.config, router.config_hash = cfg, cfg.sha
    if cache_size and cache_size > 0:
        router.cache = LRUDecisionCache(cache_size, cache_ttl_s if cache_ttl_s and cache_ttl_s > 0 else None)
    router.budget = budget
    vlog = None
    if log_path:
        try:
            vlog = VerdictLog(log_path, store_text=store_text)
        except BaseException:
            router.close()
            raise
        router.sinks.append(vlog)
    return router, vlog


def check_budget_action(router: Router, *, post_moderation: bool) -> None:
    """Refuse ``on_budget_exhausted: queue`` with a budget but without post-moderation (the
    router would block those texts instead); warn when an uncertain text can be allowed on a
    spent budget (``allow``, ``fast-verdict``): draining the budget then switches the last tier off."""
    if router.budget is None or len(router.tiers) < 2:
        return
    actions = set((router.config.tiers[-1].on_budget_exhausted or {"default": "block"}).values())
    if "queue" in actions and not post_moderation:
        raise ValueError("on_budget_exhausted: queue needs --post-moderation (the queue is the post-moderation queue)")
    if actions & {"allow", "fast-verdict"}:
        log.warning("on_budget_exhausted is %s: a caller who drains the escalation budget gets uncertain texts "
                    "past the last tier (block or queue fail closed; docs/serving.md)", "|".join(sorted(actions)))


def _positive(kind: type, *, minimum: float = 0.0, inclusive: bool = False):
    """An argparse type: a ``kind`` number above ``minimum`` (or at least it, ``inclusive``)."""
    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        ok = number >= minimum if inclusive else number > minimum
        if not ok or number != number or number in (float("inf"), float("-inf")):
            bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {value}")
        return number
    parse.__name__ = kind.__name__  # argparse's "invalid <name> value" message
    return parse


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


def resolve_token(token_env: str | None, environ: Any = None) -> str | None:
    """The bearer token for ``serve``. ``token_env`` names the variable (``--token-env``): it
    must be set and non-empty, else ``ValueError`` (refuse to start rather than serve without
    auth). Without ``--token-env``, ``SAFECASCADE_API_TOKEN`` is used when set; set but empty is
    refused too; unset means no auth."""
    environ = os.environ if environ is None else environ
    name = token_env if token_env is not None else DEFAULT_TOKEN_ENV
    if not name:
        raise ValueError("--token-env needs a variable name")
    value = environ.get(name)
    if value is None and token_env is None:
        return None
    if value is None or not value.strip():
        raise ValueError(f"--token-env {name}: the variable is {'unset' if value is None else 'empty'}; "
                         f"refusing to serve without the bearer token it should hold")
    return value.strip()  # the Authorization header's value is compared stripped too


def warn_if_exposed(host: str, token: str | None) -> bool:
    """Log a WARNING (and return True) when ``host`` is not loopback and there is no token."""
    if token or is_loopback(host):
        return False
    log.warning("serving on %s without authentication: anyone who can reach it can use it "
                "(set %s or --token-env NAME to require a bearer token)", host, DEFAULT_TOKEN_ENV)
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``safecascade serve``."""
    parser.add_argument("--config", default=None, help="router YAML or models:/name@alias (default: embedded)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log", default=None, metavar="DB", help="verdict log SQLite file (default: no log)")
    parser.add_argument("--store-text", action="store_true", help="store the text in the verdict log (off: hash only)")
    parser.add_argument("--cache-size", type=int, default=10_000, help="verdict cache entries (0 = no cache)")
    parser.add_argument("--cache-ttl", type=float, default=3600.0, help="verdict cache TTL in seconds (0 = none)")
    parser.add_argument("--budget-rps", type=_positive(float), default=None,
                        help="max last-tier (safeguard) calls per second (> 0)")
    parser.add_argument("--budget-burst", type=_positive(float, minimum=1, inclusive=True), default=None,
                        help="token-bucket burst (>= 1, default = rps; needs --budget-rps)")
    parser.add_argument("--budget-in-flight", type=_positive(int), default=None,
                        help="max last-tier calls in flight (>= 1; works alone or with --budget-rps)")
    parser.add_argument("--budget-unit-chars", type=_positive(int), default=DEFAULT_CHARS_PER_UNIT, metavar="CHARS",
                        help=f"one budget unit of safeguard work: a text costs ceil(chars / CHARS) units, at least 1 "
                             f"(default {DEFAULT_CHARS_PER_UNIT}, about 1,000 tokens)")
    parser.add_argument("--client-budget-rps", type=_positive(float), default=None,
                        help="per-client budget: last-tier units per second for each client (bearer token / X-Client-Id)")
    parser.add_argument("--client-budget-burst", type=_positive(float, minimum=1, inclusive=True), default=None,
                        help="per-client bucket size (>= 1; needs --client-budget-rps)")
    parser.add_argument("--client-budget-in-flight", type=_positive(int), default=None,
                        help="per-client last-tier calls in flight (>= 1)")
    parser.add_argument("--max-clients", type=_positive(int), default=DEFAULT_MAX_CLIENTS,
                        help=f"per-client buckets kept (least recently used dropped; default {DEFAULT_MAX_CLIENTS})")
    parser.add_argument("--on-budget-exhausted", choices=("block", "allow", "fast-verdict", "queue"), default=None,
                        help="what an uncertain text gets when the budget refuses the last tier (default: the config's "
                             "on_budget_exhausted, itself block by default; queue needs --post-moderation)")
    parser.add_argument("--token-env", default=None, metavar="NAME",
                        help=f"environment variable holding the bearer token; it must be set and non-empty "
                             f"(default: {DEFAULT_TOKEN_ENV} when set, else no auth)")
    parser.add_argument("--max-body-bytes", type=_positive(int), default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--max-inputs", type=_positive(int), default=DEFAULT_MAX_INPUTS)
    parser.add_argument("--max-pending", type=_positive(int), default=DEFAULT_MAX_PENDING,
                        help="in-progress requests before 429")
    parser.add_argument("--workers", type=_positive(int), default=4, help="router threads")
    parser.add_argument("--body-timeout", type=_positive(float), default=DEFAULT_BODY_TIMEOUT_S, metavar="SECONDS",
                        help=f"the request body must arrive within this time, else 408 (default {DEFAULT_BODY_TIMEOUT_S:g})")
    parser.add_argument("--expose-rationale", action="store_true",
                        help="return the safeguard's rationales and log-probs in /v1/classify (off: log only)")
    parser.add_argument("--post-moderation", action="store_true",
                        help="enable ?mode=post (provisional verdict now, last tier in the background)")
    parser.add_argument("--postmod-queue", type=int, default=1000, help="post-moderation queue size")
    parser.add_argument("--postmod-overflow", choices=("provisional", "block"), default="provisional",
                        help="when the post-moderation queue is full (see docs/serving.md)")


def run(args: argparse.Namespace) -> int:
    """Run ``safecascade serve`` (uvicorn, one process; the router is shared by its threads)."""
    import uvicorn

    token = resolve_token(args.token_env)
    if args.budget_burst is not None and args.budget_rps is None:
        raise ValueError("--budget-burst needs --budget-rps (the burst is the rate limit's bucket size)")
    if getattr(args, "client_budget_burst", None) is not None and getattr(args, "client_budget_rps", None) is None:
        raise ValueError("--client-budget-burst needs --client-budget-rps")
    warn_if_exposed(args.host, token)
    router, vlog = build_router(args.config, log_path=args.log, store_text=args.store_text, cache_size=args.cache_size,
                                cache_ttl_s=args.cache_ttl, budget_rps=args.budget_rps, budget_burst=args.budget_burst,
                                budget_in_flight=args.budget_in_flight, client_budget_rps=args.client_budget_rps,
                                client_budget_burst=args.client_budget_burst,
                                client_budget_in_flight=args.client_budget_in_flight, max_clients=args.max_clients,
                                budget_unit_chars=args.budget_unit_chars, on_budget_exhausted=args.on_budget_exhausted)
    postmod = None
    try:
        check_budget_action(router, post_moderation=bool(getattr(args, "post_moderation", False)))
        if getattr(args, "post_moderation", False):
            from safecascade.router.postmod import PostModerator

            postmod = PostModerator(router, max_queue=args.postmod_queue, overflow=args.postmod_overflow)
        app = create_app(router, token=token or None, max_body_bytes=args.max_body_bytes, max_inputs=args.max_inputs,
                         max_pending=args.max_pending, workers=args.workers, post_moderator=postmod,
                         body_timeout_s=args.body_timeout, expose_rationale=args.expose_rationale)
        print(f"safecascade serving {router.config.name} ({router.config_hash}) on http://{args.host}:{args.port}"
              f"{' with bearer auth' if token else ''}{f', log {args.log}' if vlog else ''}")
        uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                    access_log=bool(args.verbose))
    finally:
        if postmod is not None:
            postmod.close(timeout=60)  # drain: the final verdicts reach the log before it closes
        if vlog is not None:
            vlog.close()
        router.close()
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """CLI entry (``safecascade serve``)."""
    return run(args)


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - convenience
    from safecascade.cli import main as cli_main

    return cli_main(["serve", *(argv or [])])
