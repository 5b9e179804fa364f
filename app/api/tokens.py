"""``POST /v1/tokens``: a backend mints a subscriber token for one of its users."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from app.api.deps import authenticate_writer, write
from app.api.responses import ORJSONResponse
from app.api.routing import OrjsonRoute
from app.api.schemas import ERRORS, TokenOut
from app.db import auth_repository
from app.domain import tokens
from app.domain.commands import ULID_RE, UserId
from app.domain.errors import ValidationFailed
from app.domain.keys import Principal
from app.settings import Settings
from app.state import app_state

router = APIRouter(tags=["tokens"], route_class=OrjsonRoute)
MAX_JOB_IDS = 100
JobId = Annotated[str, Field(pattern=ULID_RE.pattern)]


class MintToken(BaseModel):
    """What a token may read: one user's jobs, or only some of them."""

    model_config = ConfigDict(extra="ignore")

    userId: UserId
    jobIds: list[JobId] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_JOB_IDS,
        description="Only these jobs (and their children); absent: every job of the user",
    )
    expiresIn: StrictInt | None = Field(
        default=None,
        ge=1,
        description="Lifetime in seconds, at most the server's SEENN_TOKEN_LIFETIME_SECONDS "
        "(its default)",
    )


class SigningKeys:
    """This replica's view of the signing keys in PostgreSQL.

    Lookups are cached for ``ttl`` seconds (``SEENN_AUTH_CACHE_SECONDS``), like API keys: a
    rotation or revocation made elsewhere applies here within that time.
    """

    def __init__(self, engine: Any, settings: Settings) -> None:
        self.engine = engine
        self.ttl = settings.auth_cache_seconds
        # A retired key verifies as long as a token it signed can live (plus the time a
        # replica may have kept signing with it from its cache).
        self.grace = timedelta(seconds=settings.token_lifetime_seconds + self.ttl)
        self._current: tuple[float, str, bytes] | None = None
        self._verifying: dict[str, tuple[float, bytes | None]] = {}

    async def current(self) -> tuple[str, bytes]:
        cached = self._current
        if cached is not None and cached[0] > time.monotonic():
            return cached[1], cached[2]
        async with self.engine.begin() as conn:
            kid, secret = await auth_repository.current_signing_key(conn)
        if self.ttl > 0:
            self._current = (time.monotonic() + self.ttl, kid, secret)
        return kid, secret

    async def secret_for(self, kid: str) -> bytes | None:
        hit = self._verifying.get(kid)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            secret = await auth_repository.verifying_secret(conn, kid, self.grace)
        if self.ttl > 0:
            if len(self._verifying) >= 1000:
                self._verifying.clear()
            self._verifying[kid] = (time.monotonic() + self.ttl, secret)
        return secret


@router.post("/tokens", response_model=TokenOut, responses=ERRORS)
async def mint_token(
    body: MintToken,
    request: Request,
    principal: Annotated[Principal, Depends(authenticate_writer)],
) -> Any:
    """Mint a subscriber token (secret key only) for the app to read one user's jobs."""
    settings: Settings = app_state(request).settings
    limit = settings.token_lifetime_seconds
    lifetime = body.expiresIn if body.expiresIn is not None else limit
    if lifetime > limit:
        raise ValidationFailed(f"expiresIn must be at most {limit} seconds", "expiresIn", max=limit)
    job_ids = list(dict.fromkeys(body.jobIds)) if body.jobIds is not None else None
    kid, secret = await app_state(request).signing_keys.current()

    async def mint(_: Any) -> dict[str, Any]:
        token, claims = tokens.mint(
            kid, secret, principal.app_id, principal.mode, body.userId, job_ids, lifetime
        )
        out: dict[str, Any] = {
            "token": token,
            "tokenType": "Bearer",
            "userId": claims.user_id,
            "expiresIn": lifetime,
            "expiresAt": datetime.fromtimestamp(claims.expires_at, UTC)
            .isoformat(timespec="seconds")
            .replace("+00:00", "Z"),
        }
        if claims.job_ids is not None:
            out["jobIds"] = list(claims.job_ids)
        return out

    # As every POST: with an Idempotency-Key, a retry gets the first response (the same token).
    return ORJSONResponse(await write(request, principal, mint))
