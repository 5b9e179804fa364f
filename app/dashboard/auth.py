"""Dashboard sign-in: a server-side session behind an HttpOnly, SameSite=Strict cookie.

The cookie holds a random token; the database keeps only its SHA-256, the key it was
made from and a CSRF token. Every request reads the session (so a sign-out, an expiry
or a revoked key ends it at once, on every replica). Every state-changing request must
carry the session's CSRF token and, when the browser sends one, a same-origin ``Origin``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import Response

from app.db.dashboard_repository import DashboardRepository
from app.domain.clock import now_ms
from app.domain.errors import Forbidden
from app.domain.keys import Principal
from app.state import app_state

COOKIE = "seenn_dashboard"
COOKIE_PATH = "/dashboard"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True, slots=True)
class Session:
    principal: Principal
    csrf: str
    key_hint: str

    @property
    def can_write(self) -> bool:
        return self.principal.can_write


@asynccontextmanager
async def reading(request: Request) -> AsyncIterator[AsyncConnection]:
    """A pooled connection in autocommit, for reads (no BEGIN/ROLLBACK round trips)."""
    async with app_state(request).engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def start_session(request: Request, response: Response, principal: Principal) -> None:
    """Create a session for ``principal`` and set its cookie on ``response``."""
    token = secrets.token_urlsafe(32)
    now = now_ms()
    hours = app_state(request).settings.dashboard_session_hours
    async with app_state(request).engine.begin() as conn:
        repo = DashboardRepository(conn)
        await repo.delete_expired_sessions(now)
        await repo.create_session(
            {
                "token_hash": _digest(token),
                "key_id": principal.key_id,
                "csrf_token": secrets.token_urlsafe(32),
                "created_at": now,
                "expires_at": now + timedelta(hours=hours),
            }
        )
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(hours * 3600),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


async def current_session(request: Request) -> Session | None:
    """The request's live session, or None."""
    if hasattr(request.state, "dashboard_session"):
        return request.state.dashboard_session  # type: ignore[no-any-return]
    session = None
    token = request.cookies.get(COOKIE)
    if token and len(token) <= 100:
        async with reading(request) as conn:
            row = await DashboardRepository(conn).find_session(_digest(token), now_ms())
        if row is not None:
            principal = Principal(row["key_id"], row["app_id"], row["mode"], row["kind"])
            session = Session(principal, row["csrf_token"], row["key_hint"])
    request.state.dashboard_session = session
    return session


async def end_session(request: Request, response: Response) -> None:
    token = request.cookies.get(COOKIE)
    if token:
        async with app_state(request).engine.begin() as conn:
            await DashboardRepository(conn).delete_session(_digest(token))
    response.delete_cookie(COOKIE, path=COOKIE_PATH)


def check_origin(request: Request) -> None:
    """403 unless the browser's ``Origin`` (when sent) is this server's own."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    own = f"{request.url.scheme}://{request.url.netloc}"
    parts = urlsplit(origin)
    if origin == "null" or f"{parts.scheme}://{parts.netloc}" != own:
        raise Forbidden("Cross-site request refused", {"origin": origin[:200]})


def check_csrf(request: Request, session: Session, submitted: str | None) -> None:
    """403 unless the request carries the session's CSRF token and a same-site origin."""
    check_origin(request)
    token = submitted or request.headers.get(CSRF_HEADER) or ""
    if not hmac.compare_digest(token.encode(), session.csrf.encode()):
        raise Forbidden("Missing or invalid CSRF token: reload the page and try again")
