"""Request plumbing shared by the routers: authentication, and the caller's operations
(:class:`~app.domain.operations.Operations`) as typed dependencies: ``Reader``, ``Writer``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.responses import Response

from app.api import idempotency, ratelimit
from app.domain import tokens
from app.domain.errors import Forbidden, JobNotFound, NotFound, Unauthorized
from app.domain.keys import KEY_RE, Principal, find_principal, hash_key
from app.domain.operations import Operations
from app.state import app_state


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
    state = app_state(request)
    hit, principal = state.key_cache.get(digest)
    if not hit:
        principal = await find_principal(state.engine, digest)
        state.key_cache.put(digest, principal)
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


def _route_status(request: Request) -> int:
    status = getattr(request.scope.get("route"), "status_code", None)
    return status if isinstance(status, int) else 200


def operations_for(request: Request, principal: Principal) -> Operations:
    """The caller's operations, run in the app's unit of work; a write reads the request's
    ``Idempotency-Key`` when it starts and stores its answer with the route's status."""
    return Operations(
        app_state(request).unit_of_work,
        principal,
        lambda: idempotency.from_request(request),
        _route_status(request),
    )


async def reader(request: Request) -> Operations:
    """Dependency: the operations of the caller, from the Bearer key."""
    return operations_for(request, await authenticate(request))


async def writer(request: Request) -> Operations:
    """Dependency: the operations of a caller holding a secret (``sk_``) key."""
    return operations_for(request, await authenticate_writer(request))


Reader = Annotated[Operations, Depends(reader)]
Writer = Annotated[Operations, Depends(writer)]


def job_response(request: Request, body: bytes) -> Response:
    """A job's JSON (as the write rendered it) with the route's status code."""
    return Response(body, status_code=_route_status(request), media_type="application/json")
