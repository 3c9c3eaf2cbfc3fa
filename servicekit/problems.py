"""One error shape for the HTTP services: RFC 9457 problem details.

Every 4xx/5xx answer of the gateway and of the aggregator's status API is
``application/problem+json``::

    {"type": "urn:msmtrec:problem:invalid-request", "title": "The request has an invalid field",
     "status": 422, "detail": "instances[0]: missing feature categorical_5",
     "field": "instances[0]"}

``type`` names the kind of problem (a URN: nothing to dereference, stable to match on),
``title`` is that kind's fixed summary, ``status`` the HTTP status, ``detail`` this
occurrence in words, and ``field`` (an extension member, when one input is to blame) the
offending field, as the ``detail`` starts with it. Other extension members carry what a
client can act on (``known`` scenarios of a 404, ``waiting_for`` of a 503 readiness).

:data:`PROBLEM_TYPES` is the one table of every kind either service answers with; the
framework's own errors (an unknown route, a wrong method, a path parameter that does not
parse, an unhandled exception) are mapped onto it by :func:`install_problem_handlers`, and
:func:`document_problems` makes the OpenAPI schema say so. The table is documented in
docs/GATEWAY.md ("Errors") and tested against it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("msmtrec.http")

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:msmtrec:problem:"


@dataclass(frozen=True)
class ProblemType:
    """One row of the exception table."""

    slug: str
    status: int
    title: str

    @property
    def uri(self) -> str:
        return TYPE_PREFIX + self.slug


PROBLEM_TYPES: dict[str, ProblemType] = {
    p.slug: p
    for p in (
        ProblemType("invalid-request", 422, "The request has an invalid field"),
        ProblemType("body-too-large", 413, "Request body too large"),
        ProblemType("head-too-large", 431, "Request header fields too large"),
        ProblemType("unknown-scenario", 404, "Unknown scenario"),
        ProblemType("rate-limited", 429, "Too many requests from this client"),
        ProblemType("model-not-loaded", 503, "No model loaded for this scenario yet"),
        ProblemType("not-found", 404, "Not found"),
        ProblemType("method-not-allowed", 405, "Method not allowed"),
        ProblemType("not-ready", 503, "Not ready"),
        ProblemType("internal-error", 500, "Internal error"),
    )
}
# framework errors by status → the row they become (any other status: "about:blank")
_BY_STATUS = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large",
              422: "invalid-request", 500: "internal-error"}  # fmt: skip

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details (servicekit/problems.py)",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "urn:msmtrec:problem:<kind>"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "field": {"type": "string", "description": "the offending input, when one is"},
    },
    "additionalProperties": True,
}


def problem_body(
    slug: str, detail: str, *, field: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The JSON object of one problem of kind ``slug`` (a key of :data:`PROBLEM_TYPES`)."""
    kind = PROBLEM_TYPES[slug]
    body: dict[str, Any] = {
        "type": kind.uri,
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
    }
    if field is not None:
        body["field"] = field
    body.update(extra)
    return body


def problem_response(
    slug: str,
    detail: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body = problem_body(slug, detail, field=field, **extra)
    return Response(
        json.dumps(body).encode(),
        status_code=body["status"],
        media_type=PROBLEM_JSON,
        headers=headers,
    )


class Problem(Exception):
    """Raise in a route to answer with a problem of kind ``slug``."""

    def __init__(
        self,
        slug: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.slug, self.detail, self.field = slug, detail, field
        self.headers, self.extra = headers, extra

    def response(self) -> Response:
        return problem_response(
            self.slug, self.detail, field=self.field, headers=self.headers, **self.extra
        )


def _validation_field(loc: tuple | list) -> str:
    """FastAPI's ``("path", "n")`` → ``"n"``; ``("body", "a", 0)`` → ``"a[0]"``."""
    parts = list(loc[1:] if loc and loc[0] in ("path", "query", "header", "body") else loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or (str(loc[0]) if loc else "request")


def _http_exception(request: Request, exc: StarletteHTTPException) -> Response:
    slug = _BY_STATUS.get(exc.status_code)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if slug is not None and PROBLEM_TYPES[slug].status == exc.status_code:
        if slug == "not-found" and detail == "Not Found":
            detail = f"no such resource: {request.url.path}"
        return problem_response(slug, detail, headers=getattr(exc, "headers", None))
    phrase = HTTPStatus(exc.status_code).phrase  # a status outside the table: RFC's default
    body = {"type": "about:blank", "title": phrase, "status": exc.status_code, "detail": detail}
    return Response(
        json.dumps(body).encode(), status_code=exc.status_code, media_type=PROBLEM_JSON,
        headers=getattr(exc, "headers", None),
    )  # fmt: skip


def _validation(_: Request, exc: RequestValidationError) -> Response:
    errors = [
        {"field": _validation_field(e.get("loc", ())), "message": str(e.get("msg", "invalid"))}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"field": "request", "message": "invalid"}
    return problem_response(
        "invalid-request",
        f"{first['field']}: {first['message']}",
        field=first["field"],
        errors=errors,
    )


def _unhandled(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response("internal-error", "internal error")


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` as problem details (see module doc)."""
    app.add_exception_handler(Problem, lambda _r, exc: exc.response())  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_exception)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unhandled)
    document_problems(app)


def document_problems(app: FastAPI) -> None:
    """Make ``app``'s OpenAPI say that every 4xx/5xx answer is ``application/problem+json``."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        ref = {"$ref": "#/components/schemas/Problem"}
        for path in schema.get("paths", {}).values():
            for op in path.values():
                for code, resp in op.get("responses", {}).items():
                    if code[:1] in ("4", "5"):
                        resp["content"] = {PROBLEM_JSON: {"schema": ref}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
