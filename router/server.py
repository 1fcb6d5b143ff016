"""The HTTP service (``safecascade serve``): an ASGI app (FastAPI) around a Router.

Endpoints::

    POST /v1/moderations   OpenAI moderation request/response shape (the official client works)
    POST /v1/classify      full Decision JSON for each input
    GET  /healthz          router config/hashes, cache, budget and verdict-log state (no auth)
    GET  /metrics          Prometheus text format

Request body (both POST endpoints): ``{"input": "text" | ["text", ...], "model": "..."}``;
list items may also be OpenAI multimodal text parts ``{"type": "text", "text": "..."}``
(image parts are refused). Moderation results carry ``flagged``, ``categories`` and
``category_scores`` keyed by the router's policies (and, for a flagged policy, by the
sub-categories a tier found: ``"harmful_request/HR1.b"``, named under
``safecascade.sub_categories``), plus the Decision summary under ``"safecascade"``. A policy the
deciding tier gave no score (an input rule or a fallback decided) reports score 0.0 and category
false; ``flagged`` is always the Decision's action.

Errors use the OpenAI error shape ``{"error": {"message", "type", "param", "code"}}``:
401 (missing/wrong bearer token, when a token is configured), 413 (body over
``max_body_bytes``), 400 (malformed JSON, wrong types, too many inputs), 408 (the body did not
arrive within ``body_timeout_s``; the connection is closed), 429 (more than ``max_pending``
requests already being classified; ``Retry-After`` set), 503 (the verdict log could not
acknowledge a decision - no verdict is returned that the log did not record). A client that
disconnects is counted as status 499 in ``/metrics`` (no traceback is logged). The router runs
in a thread pool, never on the event loop.

``/v1/classify`` leaves the safeguard's model text out of ``path[].info`` (the keys in
:data:`~safecascade.router.http_api.REDACTED_INFO_KEYS`: rationales and label log-probs) unless
``expose_rationale`` is on (``serve --expose-rationale``); the verdict log keeps them.

Post-moderation (``create_app(..., post_moderator=PostModerator(router))``, ``serve
--post-moderation``): ``POST /v1/moderations?mode=post`` and ``/v1/classify?mode=post`` answer
with the cheaper tiers' verdict (``reason: provisional`` for texts the last tier will judge);
the last tier runs in the background and its final decision goes to the verdict log and
metrics (see :mod:`safecascade.router.postmod`). Without a post-moderator, ``mode=post`` is 400.

Escalation budgets are per client when the router's budget is a
:class:`~safecascade.router.budget.ClientBudgets`: the client key is a hash of the bearer token
(when auth is on) and the ``X-Client-Id`` header (when sent), see
:func:`~safecascade.router.http_api.request_client`.

The request and response shapes are in :mod:`safecascade.router.http_api`; the command line in
:mod:`safecascade.router.serve_cli`; :func:`~safecascade.router.serve_setup.build_router` attaches
the cache, budget and verdict log to the Router a server runs.
"""


# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at
# runtime, and ``Request`` / ``Response`` are imported inside create_app (fastapi is optional).
import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from safecascade.router.cascade import DecisionSinkError, Router
from safecascade.router.decision import Decision, json_default
from safecascade.router.http_api import HTTPError, moderation_result, parse_inputs, public_decision, request_client
from safecascade.router.metrics import CONTENT_TYPE, Metrics
from safecascade.router.verdict_log import VerdictLog
from safecascade.router.verdict_record import VerdictLogError

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 2 << 20
DEFAULT_MAX_INPUTS = 256
DEFAULT_MAX_PENDING = 64
DEFAULT_BODY_TIMEOUT_S = 10.0
STATUS_CLIENT_GONE = 499  # nginx's "client closed request": counted, never a 500


def _json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None):
    from fastapi.responses import Response  # heavy, optional

    body = json.dumps(obj, default=json_default, ensure_ascii=False).encode("utf-8")
    return Response(content=body, status_code=status, media_type="application/json", headers=headers)


def _error_response(err: HTTPError):
    return _json_response({"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}},
                          err.status, err.headers)


class _ClientGone(Exception):
    """The client disconnected before the response (recorded as 499)."""


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
    log-probs in ``/v1/classify`` responses (off: see :func:`~safecascade.router.http_api.public_decision`).
    """
    from fastapi import FastAPI, Request  # heavy, optional
    from fastapi.responses import Response  # heavy, optional
    from starlette.requests import ClientDisconnect  # heavy, optional

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
            raise HTTPError(401, "missing or invalid bearer token", type_="authentication_error",
                             code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def read_json(request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is not None:
            try:
                if int(length) > max_body_bytes:
                    raise HTTPError(413, f"request body is {int(length)} bytes; the limit is {max_body_bytes}",
                                     code="request_too_large")
            except ValueError:
                raise HTTPError(400, "invalid Content-Length header") from None
        chunks, size = [], 0

        async def read_body() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_body_bytes:
                    raise HTTPError(413, f"request body exceeds the limit of {max_body_bytes} bytes", code="request_too_large")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read_body(), body_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPError(408, f"the request body did not arrive within {body_timeout_s:g} s ({size} bytes read)",
                             code="request_timeout", headers={"Connection": "close"}) from None
        except ClientDisconnect:
            raise _ClientGone() from None
        body = b"".join(chunks)
        if not body.strip():
            raise HTTPError(400, "request body is empty; expected a JSON object with 'input'")
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting bombs
            raise HTTPError(400, f"request body is not valid JSON: {str(exc)[:200]}") from None

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
            raise HTTPError(400, f"mode must be 'sync' or 'post', got {mode[:40]!r}", param="mode")
        if mode == "post" and post_moderator is None:
            raise HTTPError(400, "post-moderation is not enabled on this server (serve --post-moderation)", param="mode")
        return mode

    async def classify(texts: list[str], mode: str = "sync", client: str | None = None) -> list[Decision]:
        if state["in_flight"] >= max_pending:
            raise HTTPError(429, f"overloaded: {max_pending} requests already in progress; retry later",
                             type_="rate_limit_error", code="overloaded", headers={"Retry-After": "1"})
        state["in_flight"] += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, classify_sync, texts, mode, client)
        except VerdictLogError as exc:
            log.error("verdict log refused a decision: %s", exc)
            raise HTTPError(503, "the verdict log could not record this decision; retry later",
                             type_="server_error", code="verdict_log_unavailable") from None
        except DecisionSinkError as exc:
            if any(isinstance(e, VerdictLogError) for _, e in exc.errors):
                raise HTTPError(503, "the verdict log could not record this decision; retry later",
                                 type_="server_error", code="verdict_log_unavailable") from None
            raise
        except TypeError as exc:
            raise HTTPError(400, str(exc)) from None
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
        except HTTPError as err:
            status = err.status
            return _error_response(err)
        except Exception:
            log.exception("unhandled error in %s", endpoint)
            return _error_response(HTTPError(500, "internal error", type_="server_error"))
        finally:
            metrics.observe_request(endpoint, status, time.perf_counter() - t0)

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> Response:
        def respond(decisions: list[Decision]) -> Response:
            return _json_response({"id": f"modr-{uuid.uuid4().hex}", "model": model_name,
                                   "results": [moderation_result(d, router.policies) for d in decisions]})

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
        except HTTPError as err:
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
        import uvicorn  # heavy, optional

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
