"""The HTTP API's request and response shapes (OpenAI moderation format): the texts of a request
body, the budget client of a request, a Decision as ``/v1/moderations`` and ``/v1/classify``
return it, and the error a request gets. No web framework here; the app is
:mod:`safecascade.router.server`.
"""

from __future__ import annotations

from typing import Any, Mapping

from safecascade.router.budget import client_key
from safecascade.router.decision import Decision
from safecascade.router.policy import Policy

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


class HTTPError(Exception):
    """A request the service answers with an error: ``status`` and OpenAI's error fields
    (``message``, ``type``, ``param``, ``code``), plus response ``headers``."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}


def parse_inputs(payload: Any, *, max_inputs: int) -> list[str]:
    """Validate a request body (already JSON-decoded) and return its texts; :class:`HTTPError` (400) if it is malformed."""
    if not isinstance(payload, dict):
        raise HTTPError(400, f"request body must be a JSON object, got {type(payload).__name__}")
    if "input" not in payload:
        raise HTTPError(400, "'input' is required: a string or a list of strings", param="input")
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise HTTPError(400, f"'model' must be a string, got {type(model).__name__}", param="model")
    raw = payload["input"]
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list):
        raise HTTPError(400, f"'input' must be a string or a list of strings, got {type(raw).__name__}", param="input")
    if not raw:
        raise HTTPError(400, "'input' is an empty list", param="input")
    if len(raw) > max_inputs:
        raise HTTPError(400, f"'input' has {len(raw)} items; at most {max_inputs} per request", param="input")
    texts = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
            texts.append(item["text"])
        elif isinstance(item, dict) and item.get("type") in ("image_url", "image"):
            raise HTTPError(400, f"input[{i}]: only text inputs are supported", param=f"input[{i}]")
        else:
            raise HTTPError(400, f"input[{i}] must be a string or a {{'type': 'text', 'text': ...}} object, "
                                  f"got {type(item).__name__}", param=f"input[{i}]")
    return texts


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


def moderation_result(decision: Decision, policies: Mapping[str, Policy] | None = None) -> dict[str, Any]:
    """One OpenAI-shaped moderation result for a Decision: a category per policy, and for a
    flagged policy one per sub-category a tier found (``"harmful_request/HR1.b"``, with the
    policy's score; :attr:`PolicyVerdict.sub_categories`). ``policies`` (the router's) give each
    sub-category's wording in ``safecascade.sub_categories``."""
    categories = {name: bool(v.flagged) for name, v in decision.policies.items()}
    scores = {name: (0.0 if v.score is None else float(v.score)) for name, v in decision.policies.items()}
    subs: dict[str, dict[str, str]] = {}
    for name, v in decision.policies.items():
        if not v.flagged or not v.sub_categories:
            continue
        pol = (policies or {}).get(name)
        subs[name] = {rid: pol.rule_text(rid) if pol is not None else "" for rid in v.sub_categories}
        for rid in v.sub_categories:
            categories[f"{name}/{rid}"] = True
            scores[f"{name}/{rid}"] = scores[name]
    return {
        "flagged": decision.flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": {name: ["text"] for name in categories},
        "safecascade": {
            "action": decision.action, "tier": decision.tier, "reason": decision.reason, "score": decision.score,
            "rule_ids": list(decision.rule_ids), "text_hash": decision.text_hash, "latency_ms": decision.latency_ms,
            "cache_hit": decision.cache_hit, "warnings": list(decision.warnings), "config_hash": decision.config_hash,
            "sub_categories": subs,
        },
    }
