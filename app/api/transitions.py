"""``/v1/jobs/{id}/progress|complete|fail|cancel``: the job's state machine."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.api.deps import Writer, job_response
from app.api.jobs import JobIdPath
from app.api.routing import OrjsonRoute
from app.api.schemas import ERRORS, JobOut
from app.domain.commands import CancelJob, CompleteJob, FailJob, UpdateProgress

router = APIRouter(tags=["jobs"], route_class=OrjsonRoute)


@router.post("/jobs/{job_id}/progress", response_model=JobOut, responses=ERRORS)
async def update_progress(
    job_id: JobIdPath, body: UpdateProgress, request: Request, ops: Writer
) -> Any:
    """Report progress; a pending job becomes running."""
    return job_response(request, await ops.progress(job_id, body))


@router.post("/jobs/{job_id}/complete", response_model=JobOut, responses=ERRORS)
async def complete_job(
    job_id: JobIdPath, request: Request, ops: Writer, body: CompleteJob | None = None
) -> Any:
    """Mark a job completed (progress 100)."""
    return job_response(request, await ops.complete(job_id, body or CompleteJob()))


@router.post("/jobs/{job_id}/fail", response_model=JobOut, responses=ERRORS)
async def fail_job(job_id: JobIdPath, body: FailJob, request: Request, ops: Writer) -> Any:
    """Mark a job failed with an error."""
    return job_response(request, await ops.fail(job_id, body))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses=ERRORS)
async def cancel_job(
    job_id: JobIdPath, request: Request, ops: Writer, body: CancelJob | None = None
) -> Any:
    """Cancel a job; cancelling a parent cancels its unfinished children too."""
    return job_response(request, await ops.cancel(job_id, body or CancelJob()))
