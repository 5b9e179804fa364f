"""Domain errors. Each carries the wire code and details; the API maps codes to statuses."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A rule was broken; ``code`` is the error code clients see."""

    code = "INTERNAL_ERROR"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ValidationFailed(DomainError):
    code = "VALIDATION_ERROR"


class InvalidJobState(DomainError):
    code = "INVALID_JOB_STATE"


class InvalidParent(DomainError):
    code = "INVALID_PARENT"


class InvalidChildIndex(DomainError):
    code = "INVALID_CHILD_INDEX"


class Unauthorized(DomainError):
    code = "UNAUTHORIZED"


class Forbidden(DomainError):
    code = "FORBIDDEN"


class NotFound(DomainError):
    code = "NOT_FOUND"


class JobNotFound(NotFound):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"Job {job_id} not found", {"id": job_id})


class Conflict(DomainError):
    code = "CONFLICT"


class DuplicateChildIndex(Conflict):
    code = "DUPLICATE_CHILD_INDEX"
