"""Idempotent POSTs: with ``Idempotency-Key``, a retried write returns its first response.

The key is claimed (a row in ``idempotency_keys``) at the start of the write's transaction
and the response is stored before commit, so a stored response exists exactly when the
write committed. A concurrent request with the same key blocks on that row until the first
commits, then replays; if the first rolls back (a 4xx domain error, a crash), nothing was
stored and the next request with the key runs the write itself.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from fastapi import FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import Response

from app.db.idempotency_repository import IdempotencyRepository, StoredResponse
from app.db.repository import Owner
from app.domain.errors import IdempotencyKeyInUse, IdempotencyKeyReused, ValidationFailed
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


class Replay(Exception):  # control flow, not an error
    """Raised inside the write's transaction (rolling it back) to answer with a stored response."""

    def __init__(self, stored: StoredResponse) -> None:
        super().__init__("idempotent replay")
        self.stored = stored


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    """A POST that carries a valid ``Idempotency-Key``."""

    key: str
    request_hash: bytes
    retention: timedelta

    async def claim(self, conn: AsyncConnection, owner: Owner, now: datetime) -> None:
        """Claim the key in this transaction, or raise ``Replay`` / a 409 if it was used."""
        stored = await IdempotencyRepository(conn).claim(
            owner, self.key, self.request_hash, now, now - self.retention
        )
        if stored is None:
            return
        if stored.request_hash != self.request_hash:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was already used for a different request",
                {"idempotencyKey": self.key},
            )
        if stored.status_code == 0:
            raise IdempotencyKeyInUse(
                "The first request with this Idempotency-Key has not finished",
                {"idempotencyKey": self.key},
            )
        raise Replay(stored)

    async def record(
        self, conn: AsyncConnection, owner: Owner, status_code: int, body: bytes
    ) -> None:
        await IdempotencyRepository(conn).record(owner, self.key, status_code, body)


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
        exc.stored.body,
        status_code=exc.stored.status_code,
        media_type="application/json",
        headers={REPLAYED_HEADER: "true"},
    )


def install(app: FastAPI) -> None:
    """Answer ``Replay`` with the stored response."""
    app.add_exception_handler(Replay, _replay)
