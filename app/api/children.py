"""``/v1/jobs/{id}/children``: a parent with its children."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import Reader, require_job
from app.api.jobs import JobIdPath
from app.api.responses import ORJSONResponse
from app.api.routing import OrjsonRoute
from app.api.schemas import ERRORS, WithChildrenOut
from app.domain.views import child_summary, job_view

router = APIRouter(tags=["jobs"], route_class=OrjsonRoute)


@router.get("/jobs/{job_id}/children", response_model=WithChildrenOut, responses=ERRORS)
async def get_with_children(job_id: JobIdPath, ops: Reader) -> Any:
    """The parent job and every child created so far, ordered by ``childIndex``."""
    if ops.principal.is_token:  # out of the token's scope reads as missing, parent or not
        require_job(ops.principal, await ops.job(job_id))
    parent, children = await ops.with_children(job_id)
    return ORJSONResponse(
        {"parent": job_view(parent), "children": [child_summary(c) for c in children]}
    )
