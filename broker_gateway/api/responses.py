"""Response classes (orjson for plain JSON and problem+json) and the documented problems."""

from typing import Any

import orjson
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import Match, Route
from starlette.types import Scope


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ProblemJSON(JSON):
    media_type = "application/problem+json"


class Problem(BaseModel):
    """RFC 9457 problem details; `code` is stable and meant to be switched on."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["urn:broker-gateway:problem:topic_not_found"])
    title: str
    status: int
    detail: str
    code: str = Field(examples=["topic_not_found"])


_MEANINGS = {
    401: "No valid token (`unauthenticated`).",
    403: "The token lacks the tenant or scope (`forbidden`).",
    404: "The tenant, namespace, topic or subscription does not exist.",
    409: "A conflict: destructive changes without `allow_destructive`, or an "
    "Idempotency-Key whose earlier request may still be publishing "
    "(`idempotency_key_in_use`, see Retry-After).",
    413: "The body or the number of messages is over the limit (`payload_too_large`).",
    422: "The request is malformed (`invalid_request`, `invalid_manifest`, ...).",
    429: "Over a rate or stream limit (`rate_limited`); see Retry-After.",
    502: "Pulsar refused an operation (`broker_error`, `apply_failed`).",
    503: "Pulsar is unavailable (`broker_unavailable`), the replica is shutting down "
    "(`shutting_down`) or at its limit of requests in hand (`overloaded`); see Retry-After.",
    504: "Pulsar did not answer in time (`broker_timeout`).",
}
_SCHEMA = Problem.model_json_schema()


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these problem statuses, as application/problem+json."""
    return {
        status: {
            "description": _MEANINGS[status],
            "content": {"application/problem+json": {"schema": _SCHEMA}},
        }
        for status in statuses
    }


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its `$defs` inlined, for request bodies documented by
    hand (`openapi_extra`), where `#/$defs/...` would point nowhere in the document."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


# Every authenticated /v1 route can answer these.
V1_PROBLEMS = problems(401, 403, 413, 422, 429, 502, 503, 504)
TOPIC_PROBLEMS = {**V1_PROBLEMS, **problems(404)}


class FastRoute(Route):
    """A plain Starlette route that names itself in the scope, as FastAPI's routes do, so
    metrics and the access log see its template, not `unmatched`."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match != Match.NONE:
            child_scope["route"] = self
        return match, child_scope
