"""Response shapes for the OpenAPI document (responses themselves are built in views)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class ParentRef(_Out):
    parentJobId: str
    childIndex: int


class ChildCountsOut(_Out):
    total: int
    completed: int
    failed: int
    running: int
    pending: int
    cancelled: int


class JobOut(_Out):
    id: str
    appId: str
    userId: str
    jobType: str
    title: str
    status: Literal["pending", "running", "completed", "failed", "cancelled"]
    progress: int
    workflowId: str | None = None
    message: str | None = None
    queue: dict[str, Any] | None = None
    stage: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    retryable: bool | None = None
    estimatedCompletionAt: str | None = None
    etaConfidence: float | None = None
    etaBasedOn: int | None = None
    createdAt: str
    updatedAt: str
    startedAt: str | None = None
    completedAt: str | None = None
    expiresAt: str
    parent: ParentRef | None = None
    children: ChildCountsOut | None = None
    childProgressMode: Literal["average", "sequential", "weighted"] | None = None


class JobListOut(_Out):
    jobs: list[JobOut]
    nextCursor: str | None = None


class ChildSummaryOut(_Out):
    id: str
    childIndex: int
    title: str
    status: str
    progress: int
    message: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    createdAt: str
    updatedAt: str
    completedAt: str | None = None


class WithChildrenOut(_Out):
    parent: JobOut
    children: list[ChildSummaryOut]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorOut(BaseModel):
    error: ErrorBody


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: _err("Invalid input or job state"),
    401: _err("Missing or invalid API key"),
    403: _err("Public key used for a write"),
    404: _err("Not found"),
    409: _err("Conflict"),
    413: _err("Request body too large"),
    429: _err("Rate limited"),
    503: _err("Database unavailable"),
}
