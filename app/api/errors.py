"""Every error a client can see, mapped to the specification's envelope."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.api.responses import error_response
from app.domain.errors import DomainError, JobNotFound
from app.domain.unit_of_work import database_unavailable

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RATE_LIMITED",
}


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[0] if loc else "")


async def _domain(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return error_response(exc.status, exc.code, exc.message, exc.details)


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    for e in exc.errors():
        # No job has a malformed id: answer as for any unknown job (the SDKs build their
        # NotFoundError from details.id, and polling clients stop on a 404).
        if tuple(e.get("loc", ())) == ("path", "job_id") and isinstance(e.get("input"), str):
            return _job_not_found(e["input"])
    media_type = _non_json_media_type(request)
    errors = []
    for e in exc.errors():
        if media_type is not None and tuple(e.get("loc", ())) == ("body",):
            # The body was not read as JSON at all: say which header is missing.
            message = (
                f"Request body must be JSON: send the header Content-Type: application/json "
                f"(got {media_type})"
            )
            errors.append({"field": "body", "message": message})
        elif e.get("type") == "json_invalid":
            reason = (e.get("ctx") or {}).get("error", "invalid JSON")
            errors.append({"field": "body", "message": f"Request body is not valid JSON: {reason}"})
        else:
            loc = tuple(e.get("loc", ()))
            errors.append({"field": _field(loc), "message": str(e.get("msg", "invalid"))})
    first = errors[0] if errors else {"field": "", "message": "invalid request"}
    message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    return error_response(400, "VALIDATION_ERROR", message, {"errors": errors})


def _non_json_media_type(request: Request) -> str | None:
    """What the request's Content-Type was when it does not name JSON (FastAPI then leaves
    the body unparsed), else None."""
    value = request.headers.get("content-type")
    if not value:
        return "no Content-Type"
    media_type = value.split(";", 1)[0].strip().lower()
    if media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        return None
    return repr(value[:100])


def _job_not_found(job_id: str) -> Response:
    error = JobNotFound(job_id[:200])
    return error_response(404, error.code, error.message, error.details)


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "ERROR")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ").lower()
    if exc.status_code == 404:
        message = f"No route for {request.method} {request.url.path}"
    return error_response(exc.status_code, code, message, headers=exc.headers)


# A pool wait that times out within this long of a failed database call is part of that
# outage; otherwise every connection was busy with healthy work.
OUTAGE_MEMORY_SECONDS = 30.0
_last_outage = -OUTAGE_MEMORY_SECONDS  # time.monotonic() of the last failed database call


def _unavailable() -> Response:
    return error_response(
        503,
        "SERVICE_UNAVAILABLE",
        "The database is unavailable; retry shortly",
        headers={"Retry-After": "1"},
    )


async def _pool_timeout(request: Request, exc: Exception) -> Response:
    """No pooled connection came free within ``db_pool_timeout_seconds``.

    During an outage the waiters time out behind connections that cannot connect: that is
    "unavailable". With a healthy database it means every connection was busy: a distinct
    "busy" 503, so that operators and clients can tell overload from an outage.
    """
    if time.monotonic() - _last_outage < OUTAGE_MEMORY_SECONDS:
        log.warning("database unavailable: no pooled connection came free")
        return _unavailable()
    log.warning("server busy: no pooled connection came free in time")
    return error_response(
        503,
        "SERVER_BUSY",
        "The server is busy: every database connection stayed in use; retry shortly",
        headers={"Retry-After": "1"},
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    global _last_outage
    if isinstance(exc, PoolTimeout):
        return await _pool_timeout(request, exc)
    if database_unavailable(exc):
        _last_outage = time.monotonic()
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return _unavailable()
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "INTERNAL_ERROR", "Internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception type to the envelope."""
    app.add_exception_handler(DomainError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    for kind in (DBAPIError, PoolTimeout, OSError):
        app.add_exception_handler(kind, _unexpected)
    app.add_exception_handler(Exception, _unexpected)
