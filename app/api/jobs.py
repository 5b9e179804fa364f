"""``/v1/jobs``: create, get, list."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from app.api.deps import Reader, Writer, job_response, require_job, require_user
from app.api.responses import ORJSONResponse
from app.api.routing import OrjsonRoute
from app.api.schemas import ERRORS, JobListOut, JobOut
from app.domain.commands import ULID_RE, CreateJob, UserId
from app.domain.errors import ValidationFailed
from app.domain.views import job_view

router = APIRouter(tags=["jobs"], route_class=OrjsonRoute)

JobIdPath = Annotated[str, Path(pattern=ULID_RE.pattern, description="Job id (ULID)")]


def encode_cursor(job_id: str) -> str:
    return base64.urlsafe_b64encode(f"v1:{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    version, _, job_id = raw.partition(":")
    if version != "v1" or not ULID_RE.fullmatch(job_id):
        raise ValidationFailed("cursor: invalid pagination cursor", "cursor")
    return job_id


@router.post(
    "/jobs",
    status_code=201,
    response_model=JobOut,
    responses=ERRORS,
)
async def create_job(body: CreateJob, request: Request, ops: Writer) -> Any:
    """Create a plain, parent or child job."""
    return job_response(request, await ops.create_job(body))


@router.get("/jobs/{job_id}", response_model=JobOut, responses=ERRORS)
async def get_job(job_id: JobIdPath, ops: Reader) -> Any:
    """Get one job."""
    job = await ops.job(job_id)
    require_job(ops.principal, job)
    return ORJSONResponse(job_view(job))


@router.get("/jobs", response_model=JobListOut, responses=ERRORS)
async def list_jobs(
    ops: Reader,
    userId: Annotated[UserId, Query(description="The user whose jobs to list")],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Any:
    """A user's jobs, newest first, with keyset pagination."""
    require_user(ops.principal, userId)
    before = decode_cursor(cursor) if cursor else None
    rows = await ops.jobs_of_user(userId, before, limit + 1, ops.principal.job_ids)
    body: dict[str, Any] = {"jobs": [job_view(r) for r in rows[:limit]]}
    if len(rows) > limit:
        body["nextCursor"] = encode_cursor(rows[limit - 1]["id"])
    return ORJSONResponse(body)
