"""Subscriber tokens: short-lived JWTs (HS256) that read one user's jobs of one app and mode.

A backend mints one with its secret key (``POST /v1/tokens``) and hands it to its app; the
app reads with it where it would use a public key. The ``kid`` header names the signing
key, kept in PostgreSQL so every replica verifies every other's tokens.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import jwt
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import auth_repository

ALGORITHM = "HS256"
ISSUER = "seenn-server"
TOKEN_TYPE = "subscriber"
# Three base64url segments: what may be a JWT (an API key never has a dot).
SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_KID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


class TokenInvalid(Exception):
    """The token cannot be used; ``str()`` says why (for the 401 message)."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    app_id: str
    mode: str
    user_id: str
    job_ids: tuple[str, ...] | None
    issued_at: int
    expires_at: int


def mint(
    kid: str,
    secret: bytes,
    app_id: str,
    mode: str,
    user_id: str,
    job_ids: Iterable[str] | None,
    lifetime: int,
    now: float | None = None,
) -> tuple[str, TokenClaims]:
    """A signed token and what it carries."""
    issued = int(now if now is not None else time.time())
    claims = TokenClaims(
        app_id,
        mode,
        user_id,
        tuple(job_ids) if job_ids is not None else None,
        issued,
        issued + lifetime,
    )
    payload: dict[str, object] = {
        "iss": ISSUER,
        "typ": TOKEN_TYPE,
        "app": app_id,
        "mode": mode,
        "sub": user_id,
        "iat": claims.issued_at,
        "exp": claims.expires_at,
    }
    if claims.job_ids is not None:
        payload["jobs"] = list(claims.job_ids)
    return jwt.encode(payload, secret, algorithm=ALGORITHM, headers={"kid": kid}), claims


def key_id(token: str) -> str:
    """The ``kid`` header, read before the signature is checked (to find the key)."""
    if not SHAPE.fullmatch(token):
        raise TokenInvalid("Invalid token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise TokenInvalid("Invalid token") from exc
    kid = header.get("kid")
    if header.get("alg") != ALGORITHM or not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
        raise TokenInvalid("Invalid token")
    return kid


def verify(token: str, secret: bytes) -> TokenClaims:
    """The claims of a token signed with ``secret``; ``TokenInvalid`` otherwise."""
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "iss", "sub"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenInvalid("Token expired: mint a new one") from exc
    except jwt.InvalidTokenError as exc:
        raise TokenInvalid("Invalid token") from exc
    app_id, mode, user_id = payload.get("app"), payload.get("mode"), payload.get("sub")
    jobs = payload.get("jobs")
    jobs_ok = jobs is None or (isinstance(jobs, list) and all(isinstance(j, str) for j in jobs))
    if (
        payload.get("typ") != TOKEN_TYPE
        or not isinstance(app_id, str)
        or mode not in ("live", "test")
        or not isinstance(user_id, str)
        or not isinstance(payload["exp"], int)
        or not isinstance(payload["iat"], int)
        or not jobs_ok
    ):
        raise TokenInvalid("Invalid token")
    return TokenClaims(
        app_id,
        mode,
        user_id,
        tuple(jobs) if jobs is not None else None,
        payload["iat"],
        payload["exp"],
    )


class SigningKeys:
    """This replica's view of the signing keys in PostgreSQL.

    Lookups are cached for ``ttl`` seconds (``SEENN_AUTH_CACHE_SECONDS``), like API keys: a
    rotation or revocation made elsewhere applies here within that time.
    """

    def __init__(self, engine: AsyncEngine, ttl: float, token_lifetime_seconds: float) -> None:
        self.engine = engine
        self.ttl = ttl
        # A retired key verifies as long as a token it signed can live (plus the time a
        # replica may have kept signing with it from its cache).
        self.grace = timedelta(seconds=token_lifetime_seconds + self.ttl)
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
