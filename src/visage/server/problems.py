"""Every error as RFC 7807 ``application/problem+json``, mapped from the error tree in one table.

Visage's operational errors (:mod:`visage.errors`) and the server's own (below) become a
status, a ``type`` URI (``urn:visage:problem:<slug>``), a short ``title`` and the error's
message as ``detail``. Request validation errors, unknown routes and wrong methods get the same
shape; an unexpected exception is logged and answered with a problem too (status 500) — the
test suite and the fuzzer treat that as a bug.

    VisageError (visage.errors)
    ├── InputError
    │   ├── BodyTooLarge          413  the request body is over the limit
    │   ├── UnsupportedMediaType  415  a content type the route does not take
    │   └── TooManyFaces          422  a photo holds more faces than the limit (visage.errors)
    ├── Unauthorized              401  no key, or an unknown, revoked or expired one
    ├── Forbidden                 403  the key lacks the scope or the collection
    ├── RateLimited               429  the key's rate, or the client's failed authentications,
    │                                  is spent; ``Retry-After`` says how long
    └── NotReady                  503  the service is starting or its store is unreachable

A client that hangs up before its request body has arrived (starlette's ``ClientDisconnect``)
is nobody's error to answer: one line in the log, and a 400 that no one receives.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match

from ..errors import (
    AmbiguousFace,
    Conflict,
    ConsentError,
    ExtremeAspect,
    ImageTooLarge,
    InputError,
    InvalidImage,
    ModelError,
    NoFace,
    NotFound,
    StorageError,
    TooManyFaces,
    VisageError,
)
from ..gallery import PoorQuality

log = logging.getLogger(__name__)

PROBLEM_TYPE = "urn:visage:problem:"
PROBLEM_MEDIA_TYPE = "application/problem+json"


class BodyTooLarge(InputError):
    """The request body is larger than the configured limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"request body exceeds the limit of {limit:,} bytes")


class UnsupportedMediaType(InputError):
    """The request's content type is not one the route accepts."""

    def __init__(self, given: str, accepted: Sequence[str]) -> None:
        self.given = given
        super().__init__(
            f"content type {given or '(none)'!r} is not accepted here; send one of: "
            + ", ".join(accepted)
        )


class Unauthorized(VisageError):
    """No API key was sent, or it is malformed, unknown or revoked."""


class Forbidden(VisageError):
    """The key ``key_id`` is valid but lacks the scope or the collection the call needs."""

    def __init__(self, message: str, *, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(message)


class RateLimited(VisageError):
    """A rate is spent (``what``: a key's requests, or a client's failed authentications);
    ``retry_after`` is in seconds."""

    def __init__(self, what: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"{what}; retry in {retry_after:.2f} s")


class NotReady(VisageError):
    """The service is not ready to answer (starting, or its store is unreachable)."""


@dataclass(frozen=True)
class _Kind:
    status: int
    slug: str
    title: str


# Most specific first: the first class in an error's MRO found here decides.
_KINDS: dict[type[BaseException], _Kind] = {
    ImageTooLarge: _Kind(413, "image-too-large", "Image has too many pixels"),
    BodyTooLarge: _Kind(413, "body-too-large", "Request body too large"),
    InvalidImage: _Kind(400, "invalid-image", "Not a readable image"),
    ExtremeAspect: _Kind(422, "extreme-aspect-ratio", "Image sides too unequal"),
    UnsupportedMediaType: _Kind(415, "unsupported-media-type", "Unsupported content type"),
    NoFace: _Kind(422, "no-face", "No face found"),
    AmbiguousFace: _Kind(422, "ambiguous-face", "Several faces found"),
    PoorQuality: _Kind(422, "poor-quality", "Face refused by the quality gate"),
    TooManyFaces: _Kind(422, "too-many-faces", "Too many faces in one photo"),
    InputError: _Kind(422, "invalid-input", "Invalid input"),
    NotFound: _Kind(404, "not-found", "Not found"),
    ConsentError: _Kind(409, "no-consent", "No valid consent"),
    Conflict: _Kind(409, "conflict", "Conflict"),
    StorageError: _Kind(503, "storage-unavailable", "Gallery store unavailable"),
    ModelError: _Kind(503, "model-unavailable", "Face model unavailable"),
    Unauthorized: _Kind(401, "unauthorized", "Missing or invalid API key"),
    Forbidden: _Kind(403, "forbidden", "Not allowed for this API key"),
    RateLimited: _Kind(429, "rate-limited", "Too many requests"),
    NotReady: _Kind(503, "not-ready", "Service not ready"),
    VisageError: _Kind(500, "internal-error", "Internal error"),
}

_HTTP_SLUGS = {
    400: "bad-request",
    404: "no-such-route",
    405: "method-not-allowed",
    413: "body-too-large",
    415: "unsupported-media-type",
}


class Problem(BaseModel):
    """An RFC 7807 problem: what went wrong, for people (``detail``) and for code (``type``)."""

    type: str = Field(description="URI naming the kind of problem, e.g. urn:visage:problem:no-face")
    title: str = Field(description="Short summary of the kind of problem")
    status: int = Field(description="The HTTP status code")
    detail: str = Field(description="What went wrong with this request, and how to fix it")
    instance: str | None = Field(None, description="The request path")
    errors: list[dict[str, Any]] | None = Field(
        None, description="Validation errors: where (loc), what (msg) and the kind (type)"
    )
    reasons: list[str] | None = Field(None, description="Quality-gate reasons, for poor-quality")
    audit_seq: int | None = Field(None, description="The audit event recording this refusal")


def kind_of(exc: BaseException) -> tuple[int, str, str]:
    """``(status, slug, title)`` for an error, from the first of its classes in the table."""
    for cls in type(exc).__mro__:
        if cls in _KINDS:
            kind = _KINDS[cls]
            return kind.status, kind.slug, kind.title
    return 500, "internal-error", "Internal error"


def problem_body(exc: BaseException, instance: str | None = None) -> dict[str, Any]:
    """The problem document for ``exc`` as a plain dict (also used in per-item results)."""
    status, slug, title = kind_of(exc)
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + slug,
        "title": title,
        "status": status,
        "detail": str(exc),
    }
    if instance is not None:
        body["instance"] = instance
    if isinstance(exc, PoorQuality):
        body["reasons"] = list(exc.reasons)
    if isinstance(exc, VisageError) and exc.audit_seq is not None:
        body["audit_seq"] = exc.audit_seq
    return body


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str,
    request: Request,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A ``application/problem+json`` response."""
    body = {
        "type": PROBLEM_TYPE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


async def visage_error(request: Request, exc: Exception) -> JSONResponse:
    """The problem answer for a :class:`VisageError` (the app's handler for the whole tree)."""
    body = problem_body(exc, request.url.path)
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    elif isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="visage"'
    if body["status"] >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return JSONResponse(
        body, status_code=body["status"], headers=headers, media_type=PROBLEM_MEDIA_TYPE
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [str(p) for p in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in exc.errors()
    ]
    where = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
    return problem_response(
        422,
        "validation-error",
        "Request validation failed",
        where or "the request is not valid",
        request,
        errors=errors,
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path, found by asking the router about each one
    (FastAPI wraps included routers, so the routes' own ``methods`` are not reachable)."""
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.routes
            if isinstance(route, BaseRoute)
        )
    ]


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    slug = _HTTP_SLUGS.get(exc.status_code, f"http-{exc.status_code}")
    title = {404: "No such route", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
    detail = str(exc.detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.url.path}; see /docs for the API"
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_allowed_methods(request))
        detail = f"{request.method} is not served at {request.url.path}; use {headers['Allow']}"
    return problem_response(exc.status_code, slug, title, detail, request, headers=headers)


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    log.info("%s %s: the client disconnected before its request body arrived",
             request.method, request.url.path)  # fmt: skip
    return problem_response(
        400,
        "client-disconnected",
        "Client disconnected",
        "the connection closed before the request body arrived",
        request,
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return problem_response(
        500,
        "internal-error",
        "Internal error",
        "an unexpected error occurred; it has been logged",
        request,
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem response."""
    app.add_exception_handler(VisageError, visage_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)


_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_HEADERS = {
    401: {
        "WWW-Authenticate": {
            "description": "The authentication scheme",
            "schema": {"type": "string"},
        }
    },
    429: {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
}
_DESCRIPTIONS = {
    400: "Not a readable image, or a malformed request",
    401: "Missing, unknown, revoked or expired API key",
    403: "The key lacks the scope or the collection",
    404: "Unknown collection, person, face or route",
    409: "Conflicts with what is stored (a name taken, no valid consent)",
    413: "Request body or image over the limit",
    415: "Unsupported content type",
    422: "Valid syntax but unusable input (validation, no face, poor quality)",
    429: "Rate limit exceeded (the key's, or the client's failed authentications)",
    503: "Store or models unavailable",
}
AUTHED = (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
"""The problem statuses any authenticated route may answer."""


def problem_responses(statuses: Sequence[int] = AUTHED) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem answers with these statuses."""
    return {
        status: {
            "description": _DESCRIPTIONS.get(status, "Problem"),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_REF}},
            **({"headers": _HEADERS[status]} if status in _HEADERS else {}),
        }
        for status in statuses
    }


def add_problem_schema(openapi: dict[str, Any]) -> None:
    """Put the :class:`Problem` schema into ``components`` where the responses refer to it."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
