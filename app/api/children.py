"""``/v1/jobs/{id}/children``: a parent with its children."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.api.deps import read, require_job
from app.api.jobs import JobIdPath, Reader
from app.api.responses import ORJSONResponse
from app.api.routing import OrjsonRoute
from app.api.schemas import ERRORS, WithChildrenOut
from app.domain.views import child_summary, job_view

router = APIRouter(tags=["jobs"], route_class=OrjsonRoute)


@router.get("/jobs/{job_id}/children", response_model=WithChildrenOut, responses=ERRORS)
async def get_with_children(job_id: JobIdPath, request: Request, principal: Reader) -> Any:
    """The parent job and every child created so far, ordered by ``childIndex``."""
    if principal.is_token:  # out of the token's scope reads as missing, parent or not
        require_job(principal, await read(request, principal, lambda s: s.get(job_id)))
    parent, children = await read(request, principal, lambda s: s.with_children(job_id))
    return ORJSONResponse(
        {"parent": job_view(parent), "children": [child_summary(c) for c in children]}
    )
