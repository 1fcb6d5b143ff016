"""``safecascade serve``: the command line of the HTTP service (arguments, the bearer token, the
exposure warning), running :func:`~safecascade.router.server.create_app` under uvicorn.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from typing import Any

from safecascade.router.budget import DEFAULT_CHARS_PER_UNIT, DEFAULT_MAX_CLIENTS
from safecascade.router.postmod import PostModerator
from safecascade.router.serve_setup import build_router, check_budget_action
from safecascade.router.server import (DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_INPUTS,
                                       DEFAULT_MAX_PENDING, create_app)

log = logging.getLogger(__name__)

DEFAULT_TOKEN_ENV = "SAFECASCADE_API_TOKEN"


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
    import uvicorn  # heavy, optional

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
