"""Idempotent POSTs over HTTP: the ``Idempotency-Key`` header read and checked, and a
replay answered with the stored response (the claim and the record, in the write's
transaction, are ``app/domain/idempotency.py``'s)."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from app.domain.errors import ValidationFailed
from app.domain.idempotency import IdempotentRequest, Replay
from app.state import app_state

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_KEY_RE = re.compile(r"[\x20-\x7e]{1,255}")

# For the OpenAPI document: the header every POST accepts, and the one a replay carries.
OPENAPI_PARAMETER: dict[str, Any] = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": "Makes a retried POST safe: the first response is replayed for 24 h.",
    # Printable ASCII; no spaces at the ends (HTTP strips them, which could leave nothing).
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": "^[!-~]([ -~]*[!-~])?$",
    },
}
OPENAPI_REPLAYED_HEADER: dict[str, Any] = {
    REPLAYED_HEADER: {
        "description": "Present (true) when the response is a stored replay",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def request_hash(method: str, path: str, body: bytes) -> bytes:
    """SHA-256 of method, path and the body as canonical JSON (sorted keys, no spaces)."""
    canonical = b""
    if body.strip():
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(b"\n".join((method.encode(), path.encode(), canonical))).digest()


async def from_request(request: Request) -> IdempotentRequest | None:
    """The request's idempotency key, if it sent one; 400 for a malformed key."""
    key = request.headers.get(HEADER)
    if key is None or request.method != "POST":
        return None
    if not _KEY_RE.fullmatch(key):
        raise ValidationFailed(f"{HEADER} must be 1 to 255 printable ASCII characters", HEADER)
    # The body was parsed by the route already, so it is valid JSON (or empty).
    digest = request_hash(request.method, request.url.path, await request.body())
    hours = app_state(request).settings.idempotency_retention_hours
    return IdempotentRequest(key, digest, timedelta(hours=hours))


async def _replay(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Replay)
    return Response(
        exc.body,
        status_code=exc.status_code,
        media_type="application/json",
        headers={REPLAYED_HEADER: "true"},
    )


def install(app: FastAPI) -> None:
    """Answer ``Replay`` with the stored response."""
    app.add_exception_handler(Replay, _replay)
