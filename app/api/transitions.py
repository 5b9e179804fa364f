"""``/v1/jobs/{id}/progress|complete|fail|cancel``: the job's state machine."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.api.deps import write_job
from app.api.jobs import JobIdPath, Writer
from app.api.routing import OrjsonRoute
from app.api.schemas import ERRORS, JobOut
from app.domain.commands import CancelJob, CompleteJob, FailJob, UpdateProgress

router = APIRouter(tags=["jobs"], route_class=OrjsonRoute)


@router.post("/jobs/{job_id}/progress", response_model=JobOut, responses=ERRORS)
async def update_progress(
    job_id: JobIdPath, body: UpdateProgress, request: Request, principal: Writer
) -> Any:
    """Report progress; a pending job becomes running."""
    return await write_job(request, principal, lambda s: s.progress(job_id, body))


@router.post("/jobs/{job_id}/complete", response_model=JobOut, responses=ERRORS)
async def complete_job(
    job_id: JobIdPath, request: Request, principal: Writer, body: CompleteJob | None = None
) -> Any:
    """Mark a job completed (progress 100)."""
    cmd = body or CompleteJob()
    return await write_job(request, principal, lambda s: s.complete(job_id, cmd))


@router.post("/jobs/{job_id}/fail", response_model=JobOut, responses=ERRORS)
async def fail_job(job_id: JobIdPath, body: FailJob, request: Request, principal: Writer) -> Any:
    """Mark a job failed with an error."""
    return await write_job(request, principal, lambda s: s.fail(job_id, body))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses=ERRORS)
async def cancel_job(
    job_id: JobIdPath, request: Request, principal: Writer, body: CancelJob | None = None
) -> Any:
    """Cancel a job; cancelling a parent cancels its unfinished children too."""
    cmd = body or CancelJob()
    return await write_job(request, principal, lambda s: s.cancel(job_id, cmd))
