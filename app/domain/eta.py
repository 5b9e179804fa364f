"""ETA hooks called by the job service inside each write transaction."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from app.db.repository import Owner, Repository, Row
from app.domain.commands import CreateJob, UpdateProgress


async def at_creation(repo: Repository, owner: Owner, cmd: CreateJob, now: datetime) -> Row:
    """ETA columns for a new job: explicit estimate, else the given duration."""
    if cmd.estimatedCompletionAt is not None:
        return {"estimated_completion_at": cmd.estimatedCompletionAt}
    if cmd.estimatedDuration is not None:
        return {"estimated_completion_at": now + timedelta(milliseconds=cmd.estimatedDuration)}
    return {}


async def on_progress(
    repo: Repository, owner: Owner, job: Row, cmd: UpdateProgress, now: datetime
) -> Row:
    """ETA columns after a progress update."""
    if cmd.estimatedCompletionAt is not None:
        return {"estimated_completion_at": cmd.estimatedCompletionAt}
    return {}


async def for_parent(
    repo: Repository, owner: Owner, parent: Row, changes: Row, now: datetime
) -> Row:
    """ETA columns for a parent after one of its children changed."""
    return {}


async def on_complete(repo: Repository, owner: Owner, job: Row, now: datetime) -> Any:
    """Record a completed job's duration in its key's statistics."""
    return None
