"""Every error a client can be answered with. Each class carries its HTTP status and the
wire code; the API turns any of them into the envelope ``{"error": {code, message, details}}``.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A rule was broken; ``code`` is the error code clients see, ``status`` the HTTP status."""

    status = 500
    code = "INTERNAL_ERROR"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ValidationFailed(DomainError):
    """400: a bad body, query, header or path parameter.

    With ``field``, ``details`` has the shape of every validation error:
    ``{"errors": [{"field", "message", ...extra}]}``.
    """

    status = 400
    code = "VALIDATION_ERROR"

    def __init__(self, message: str, field: str | None = None, **extra: Any) -> None:
        details = None
        if field is not None:
            details = {"errors": [{"field": field, "message": message, **extra}]}
        super().__init__(message, details)


class InvalidJobState(DomainError):
    status = 400
    code = "INVALID_JOB_STATE"


class InvalidParent(DomainError):
    status = 400
    code = "INVALID_PARENT"


class InvalidChildIndex(DomainError):
    status = 400
    code = "INVALID_CHILD_INDEX"


class Unauthorized(DomainError):
    status = 401
    code = "UNAUTHORIZED"


class Forbidden(DomainError):
    status = 403
    code = "FORBIDDEN"


class NotFound(DomainError):
    status = 404
    code = "NOT_FOUND"


class JobNotFound(NotFound):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"Job {job_id} not found", {"id": job_id})


class EtaKeyNotFound(NotFound):
    def __init__(self, eta_key: str) -> None:
        # details.id too: the SDKs build NotFoundError from it.
        super().__init__(
            f"No ETA statistics for key {eta_key!r}", {"etaKey": eta_key, "id": eta_key}
        )


class Conflict(DomainError):
    status = 409
    code = "CONFLICT"


class DuplicateChildIndex(Conflict):
    code = "DUPLICATE_CHILD_INDEX"


class IdempotencyKeyReused(Conflict):
    """409: the key was first used for a different request."""

    code = "IDEMPOTENCY_KEY_REUSED"


class IdempotencyKeyInUse(Conflict):
    """409: the key's first request has not finished (only if a record was left unfinished)."""

    code = "IDEMPOTENCY_KEY_IN_USE"


class RateLimited(DomainError):
    """429: the key sent more requests than its bucket allows."""

    status = 429
    code = "RATE_LIMITED"
