"""The wire representation of jobs: camelCase, omitted (never null) optional fields."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from app.domain.rules import ChildCounts


@lru_cache(maxsize=4096)
def iso(value: datetime) -> str:
    """ISO 8601 in UTC with millisecond precision and a ``Z``.

    Memoised: one write renders the same few instants (its ``now``, the job's creation and
    expiry) a dozen times, and a hot job's timestamps recur across requests.
    """
    # isoformat is C code; in UTC it always ends in "+00:00".
    return value.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


_OPTIONAL = (
    ("workflowId", "workflow_id"),
    ("message", "message"),
    ("queue", "queue"),
    ("stage", "stage"),
    ("result", "result"),
    ("error", "error"),
    ("metadata", "metadata"),
    ("retryable", "retryable"),
    ("etaConfidence", "eta_confidence"),
    ("etaBasedOn", "eta_based_on"),
)
_OPTIONAL_TIMES = (
    ("estimatedCompletionAt", "estimated_completion_at"),
    ("startedAt", "started_at"),
    ("completedAt", "completed_at"),
)


# Every name job_view can give, in the order it gives them (the event log stores payloads as
# jsonb, which reorders keys; the dashboard puts a live job's fields back in this order).
JOB_FIELDS = (
    ("id", "appId", "userId", "jobType", "title", "status", "progress")
    + tuple(name for name, _ in _OPTIONAL + _OPTIONAL_TIMES)
    + ("createdAt", "updatedAt", "expiresAt", "parent", "children", "childProgressMode")
)


def counts_of(row: Mapping[str, Any]) -> ChildCounts:
    """The parent counters stored on a job row."""
    return ChildCounts(
        total=row["total_children"],
        completed=row["completed_children"],
        failed=row["failed_children"],
        running=row["running_children"],
        cancelled=row["cancelled_children"],
        progress_sum=row["child_progress_sum"],
    )


def job_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A job as every endpoint returns it."""
    out: dict[str, Any] = {
        "id": row["id"],
        "appId": row["app_id"],
        "userId": row["user_id"],
        "jobType": row["job_type"],
        "title": row["title"],
        "status": row["status"],
        "progress": row["progress"],
    }
    for name, column in _OPTIONAL:
        value = row[column]
        if value is not None:
            out[name] = value
    for name, column in _OPTIONAL_TIMES:
        value = row[column]
        if value is not None:
            out[name] = iso(value)
    if row["status"] in ("completed", "failed", "cancelled"):
        out.pop("estimatedCompletionAt", None)
    out["createdAt"] = iso(row["created_at"])
    out["updatedAt"] = iso(row["updated_at"])
    out["expiresAt"] = iso(row["expires_at"])
    if row["parent_job_id"] is not None:
        out["parent"] = {"parentJobId": row["parent_job_id"], "childIndex": row["child_index"]}
    if row["total_children"] is not None:
        counts = counts_of(row)
        out["children"] = {
            "total": counts.total,
            "completed": counts.completed,
            "failed": counts.failed,
            "running": counts.running,
            "pending": counts.pending,
            "cancelled": counts.cancelled,
        }
        out["childProgressMode"] = row["child_progress_mode"]
    return out


def child_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """A child as ``GET /jobs/{id}/children`` lists it."""
    out: dict[str, Any] = {
        "id": row["id"],
        "childIndex": row["child_index"],
        "title": row["title"],
        "status": row["status"],
        "progress": row["progress"],
    }
    for name in ("message", "result", "error"):
        if row[name] is not None:
            out[name] = row[name]
    out["createdAt"] = iso(row["created_at"])
    out["updatedAt"] = iso(row["updated_at"])
    if row["completed_at"] is not None:
        out["completedAt"] = iso(row["completed_at"])
    return out


def event_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A job as the event stream carries it: the REST job plus ``jobId`` (and, for a
    child, ``parentJobId`` at the top level, where the realtime clients look for it)."""
    return event_payload(job_view(row), row)


def event_payload(view: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`event_view` from the row's already rendered :func:`job_view` (a copy)."""
    out = {**view, "jobId": row["id"]}
    if row.get("parent_job_id"):
        out["parentJobId"] = row["parent_job_id"]
    return out
