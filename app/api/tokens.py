"""``POST /v1/tokens``: a backend mints a subscriber token for one of its users."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from app.api.deps import Writer
from app.api.responses import ORJSONResponse
from app.api.routing import OrjsonRoute
from app.api.schemas import ERRORS, TokenOut
from app.domain import tokens
from app.domain.commands import ULID_RE, UserId
from app.domain.errors import ValidationFailed
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


@router.post("/tokens", response_model=TokenOut, responses=ERRORS)
async def mint_token(
    body: MintToken,
    request: Request,
    ops: Writer,
) -> Any:
    """Mint a subscriber token (secret key only) for the app to read one user's jobs."""
    settings: Settings = app_state(request).settings
    limit = settings.token_lifetime_seconds
    lifetime = body.expiresIn if body.expiresIn is not None else limit
    if lifetime > limit:
        raise ValidationFailed(f"expiresIn must be at most {limit} seconds", "expiresIn", max=limit)
    job_ids = list(dict.fromkeys(body.jobIds)) if body.jobIds is not None else None
    kid, secret = await app_state(request).signing_keys.current()
    principal = ops.principal

    def mint() -> dict[str, Any]:
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
    return ORJSONResponse(await ops.answer_once(mint))
