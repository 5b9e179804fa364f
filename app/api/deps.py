"""Request plumbing shared by the routers: authentication and the unit of work."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from sqlalchemy.exc import DBAPIError
from starlette.responses import Response

from app.api import idempotency, ratelimit
from app.db import auth_repository
from app.db.failures import is_retryable, stale_connection
from app.db.repository import Owner, Repository, Row
from app.domain import tokens
from app.domain.errors import Forbidden, JobNotFound, NotFound, Unauthorized
from app.domain.keys import KEY_RE, Principal, hash_key
from app.domain.service import JobService, NeedsLocks, WriteConflict
from app.state import app_state

T = TypeVar("T")
_ATTEMPTS = 3
_OPTIMISTIC_ATTEMPTS = 3


class KeyCache:
    """A short-lived cache of key lookups, so most requests skip one database round trip."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[float, Principal | None]] = {}

    def get(self, key_hash: bytes) -> tuple[bool, Principal | None]:
        hit = self._entries.get(key_hash)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def put(self, key_hash: bytes, principal: Principal | None) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key_hash] = (time.monotonic() + self.ttl, principal)


def bearer_key(request: Request) -> str:
    """The key from ``Authorization: Bearer``; 401 when missing or malformed."""
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("Missing API key: send Authorization: Bearer <key>")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("Malformed Authorization header: expected Bearer <key>")
    return key.strip()


async def principal_for_key(request: Request, key: str) -> Principal:
    """Resolve a key or subscriber token to its app and mode.

    401 for unknown, malformed or revoked keys and for invalid or expired tokens; 403 for a
    public key of an app whose public keys are token-only.
    """
    if not KEY_RE.fullmatch(key):
        if tokens.SHAPE.fullmatch(key):
            return await principal_for_token(request, key)
        raise Unauthorized("Invalid API key")
    digest = hash_key(key)
    cache: KeyCache = app_state(request).key_cache
    hit, principal = cache.get(digest)
    if not hit:
        async with app_state(request).engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            row = await auth_repository.find_key(conn, digest)
        principal = None
        if row is not None and row["revoked_at"] is None:
            principal = Principal(
                row["id"], row["app_id"], row["mode"], row["kind"], token_only=row["token_only"]
            )
        cache.put(digest, principal)
    if principal is None:
        raise Unauthorized("Invalid API key")
    if principal.token_only and principal.kind == "public":
        raise Forbidden(
            f"App {principal.app_id!r} reads only with subscriber tokens: its backend mints "
            "one per user with POST /v1/tokens (secret key)"
        )
    # In memory, no round trip; the decision also feeds the X-RateLimit-* headers.
    ratelimit.enforce(request.state, app_state(request).rate_limiter, budget_of(request, principal))
    return principal


async def principal_for_token(request: Request, token: str) -> Principal:
    """A subscriber token's scope, once its signature (by a known key) and expiry check."""
    try:
        secret = await app_state(request).signing_keys.secret_for(tokens.key_id(token))
        if secret is None:
            raise tokens.TokenInvalid("Invalid token")
        claims = tokens.verify(token, secret)
    except tokens.TokenInvalid as exc:
        raise Unauthorized(str(exc)) from None
    # One rate-limit bucket and SSE cap per user: one user cannot use up the app's.
    principal = Principal(
        f"token:{claims.app_id}:{claims.mode}:{claims.user_id}",
        claims.app_id,
        claims.mode,
        "token",
        user_id=claims.user_id,
        job_ids=frozenset(claims.job_ids) if claims.job_ids is not None else None,
        expires_at=float(claims.expires_at),
    )
    ratelimit.enforce(request.state, app_state(request).rate_limiter, principal.key_id)
    return principal


def budget_of(request: Request, principal: Principal) -> str:
    """Whose rate-limit bucket a request draws on.

    A secret key is one server: one budget per key. A public key is shared by every install
    of an app, so it is budgeted per install: per ``userId`` when the request names one (the
    SSE stream, job lists), else per client address (a job poll), as seen after the trusted
    proxies (``SEENN_FORWARDED_ALLOW_IPS``).
    """
    if principal.kind != "public":  # a secret key, or a token (already one user's)
        return principal.key_id
    user_id = request.query_params.get("userId")
    if user_id and len(user_id) <= 255:
        return f"{principal.key_id}\x00u\x00{user_id}"
    host = request.client.host if request.client else ""
    return f"{principal.key_id}\x00a\x00{host}"


async def authenticate(request: Request) -> Principal:
    """Dependency: the caller, from the Bearer key."""
    principal = await principal_for_key(request, bearer_key(request))
    request.state.principal = principal
    return principal


async def authenticate_writer(request: Request) -> Principal:
    """Dependency: the caller, who must hold a secret (``sk_``) key."""
    principal = await authenticate(request)
    if not principal.can_write:
        raise Forbidden(
            "Public (pk_) keys and subscriber tokens are read-only; use a secret (sk_) key to write"
        )
    return principal


def owner_of(principal: Principal) -> Owner:
    return Owner(principal.app_id, principal.mode)


def require_user(principal: Principal, user_id: str) -> None:
    """404 unless the caller may read ``user_id``'s jobs (a token reads only its user's)."""
    if not principal.sees_user(user_id):
        raise NotFound(f"No user {user_id!r} in this token's scope", {"userId": user_id})


def require_job_id(principal: Principal, user_id: str, job_id: str) -> None:
    """404 unless the caller may name ``user_id``'s job ``job_id`` (a token limited to
    some jobs names only those)."""
    require_user(principal, user_id)
    if principal.job_ids is not None and job_id not in principal.job_ids:
        raise JobNotFound(job_id)


def require_job(principal: Principal, job: dict[str, Any]) -> None:
    """404 (as for a missing job) unless the caller may read the job row ``job``."""
    if not principal.sees_job(job["user_id"], job["id"], job["parent_job_id"]):
        raise JobNotFound(job["id"])


async def read(
    request: Request, principal: Principal, action: Callable[[JobService], Awaitable[T]]
) -> T:
    """Run a read on a pooled connection in autocommit (no BEGIN/ROLLBACK round trips).

    A read that finds its pooled connection dead (the database restarted) is retried once
    on a fresh connection: reads are idempotent, and the pool has been invalidated.
    """
    for attempt in range(2):
        try:
            async with app_state(request).engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                return await action(JobService(Repository(conn), owner_of(principal)))
        except DBAPIError as exc:
            if attempt or not stale_connection(exc):
                raise
    raise AssertionError("unreachable")


async def write(
    request: Request, principal: Principal, action: Callable[[JobService], Awaitable[T]]
) -> T:
    """Run ``action`` in one transaction (events included), retrying deadlocks; notify after.

    With an ``Idempotency-Key`` the key is claimed first and the response (``action``'s
    result as JSON) stored before commit, in the same transaction; a retry is answered
    from the stored response.
    """
    result, _ = await _write(request, principal, action, lambda _, value: orjson.dumps(value))
    return result


async def write_job(
    request: Request, principal: Principal, action: Callable[[JobService], Awaitable[Row]]
) -> Response:
    """:func:`write` for the routes that answer with the job the write leaves, with the
    route's status code. The job view is rendered once: the event carries it, and the
    idempotency record and the response are the same bytes."""
    _, body = await _write(request, principal, action, _job_body)
    return Response(body, status_code=_route_status(request), media_type="application/json")


def _job_body(service: JobService, row: Row) -> bytes:
    return orjson.dumps(service.view(row))


def _route_status(request: Request) -> int:
    status = getattr(request.scope.get("route"), "status_code", None)
    return status if isinstance(status, int) else 200


async def _write(
    request: Request,
    principal: Principal,
    action: Callable[[JobService], Awaitable[T]],
    render: Callable[[JobService, T], bytes],
) -> tuple[T, bytes]:
    """The transaction of :func:`write`; ``render`` makes the body stored and sent.

    A write without an ``Idempotency-Key`` is first tried optimistically (see
    :func:`_write_unlocked`); the writes that need row locks run in a transaction.
    """
    idem = await idempotency.from_request(request)
    if idem is None:
        done = await _write_unlocked(request, principal, action, render)
        if done is not None:
            return done
    for attempt in range(_ATTEMPTS):
        committing = False
        try:
            async with app_state(request).engine.begin() as conn:
                service = JobService(Repository(conn), owner_of(principal))
                if idem is not None:
                    await idem.claim(conn, service.owner, service.now)
                result = await action(service)
                await service.flush_events()
                body = render(service, result)
                if idem is not None:
                    await idem.record(conn, service.owner, _route_status(request), body)
                committing = True
            break
        except DBAPIError as exc:
            # A connection found dead before COMMIT was sent committed nothing: retry once.
            stale = not committing and attempt == 0 and stale_connection(exc)
            if not stale and (not is_retryable(exc) or attempt == _ATTEMPTS - 1):
                raise
    return result, _committed(request, service, body)


def _committed(request: Request, service: JobService, body: bytes) -> bytes:
    """Count the write's events and announce them, once it has committed."""
    if service.appended:
        app_state(request).metrics.events_written.inc(service.appended)
    app_state(request).notifier.notify(service.touched_streams)
    if service.sampled:
        app_state(request).background.eta_compactor.poke(service.sampled)
    return body


async def _write_unlocked(
    request: Request,
    principal: Principal,
    action: Callable[[JobService], Awaitable[T]],
    render: Callable[[JobService, T], bytes],
) -> tuple[T, bytes] | None:
    """The write as one statement outside a transaction, or None to take the locked path.

    The job is read without a lock; the write's single statement applies only to the row
    version read, appends the events with it and commits as it ends, so no lock is held
    while this process computes or while its event loop runs other work. A write that
    lost a race is recomputed from a fresh read; one the service cannot do this way
    (anything but a job's progress) returns None before it has written anything, as does
    a first read that finds its pooled connection dead.
    """
    for _ in range(_OPTIMISTIC_ATTEMPTS):
        flushing = False
        try:
            async with app_state(request).engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                service = JobService(Repository(conn), owner_of(principal), optimistic=True)
                result = await action(service)
                flushing = True
                await service.flush_events()
                body = render(service, result)
        except NeedsLocks:
            return None
        except WriteConflict:
            continue
        except DBAPIError as exc:
            if flushing or not stale_connection(exc):
                raise
            return None
        return result, _committed(request, service, body)
    return None  # contended: queue on the row lock instead
