"""ETA hooks called by the job service inside each write transaction, and the stats reads.

The key of a job is its ``workflowId``, else its ``jobType``, within the app and mode of the
caller; a parent's key carries the suffix ``#parent``, so a batch's whole duration never
becomes a sample for one of its children. Statistics change only when a job completes, in
the completing transaction; the maths lives in ``app.domain.estimator``.

Durations. A job's *processing* starts when its worker reports 0 % (``startedAt``), or, when
its first report is already past 0 %, at its creation (the worker said nothing earlier, so
its processing time is counted from ``createdAt``); the job's ``eta_state.b`` holds how many
milliseconds before ``startedAt`` its processing began. Statistics and ``/v1/eta`` durations
are processing times; the time from creation to the processing start is the key's *queue
wait*, kept apart and added to the estimate of a job that has not started yet.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson

from app.db.eta_repository import EtaRepository
from app.db.repository import Owner, Repository, Row, Staged
from app.domain import estimator
from app.domain.commands import CreateJob, UpdateProgress
from app.domain.errors import EtaKeyNotFound
from app.domain.rules import is_terminal
from app.domain.views import iso

# An estimate further out than this is not an estimate; it also keeps datetimes in range.
_MAX_REMAINING_MS = 366 * 86_400_000
PARENT_SUFFIX = "#parent"


def eta_key_of(job: Row) -> str:
    key = str(job.get("workflow_id") or job["job_type"])
    return key + PARENT_SUFFIX if job.get("total_children") is not None else key


def _origin(job: Row, progress: int, now: datetime) -> tuple[datetime, float]:
    """When the job's processing started, and how many ms that is before ``startedAt``.

    ``progress``/``now``: the update that starts the job, if it has not started yet.
    """
    if job["started_at"] is not None:
        back = float((job["eta_state"] or {}).get("b", 0))
        return job["started_at"] - timedelta(milliseconds=back), back
    if progress == 0:  # this update starts the job, and says so
        return now, 0.0
    return job["created_at"], _ms(now - job["created_at"])  # first heard of past 0 %


def _ms(delta: timedelta) -> float:
    return max(delta.total_seconds() * 1000, 0.0)


def _history(stats: Row | None, given_ms: int | None) -> estimator.History:
    if stats is None:
        return estimator.history_of(0, None, None, given_ms)
    stats = merged(stats)
    return estimator.history_of(
        int(stats["count"]), stats["digest"], stats["default_duration"], given_ms
    )


def _eta_columns(
    history: estimator.History, estimate: estimator.Estimate | None, now: datetime
) -> Row:
    if estimate is None:
        return {}
    left = min(max(estimate.remaining_ms, 0.0), _MAX_REMAINING_MS)
    columns: Row = {"estimated_completion_at": now + timedelta(milliseconds=round(left))}
    if estimate.from_history:
        columns.update(eta_confidence=estimate.confidence, eta_based_on=history.count)
    else:
        columns.update(eta_confidence=None, eta_based_on=None)
    return columns


# --- hooks -----------------------------------------------------------------------------


async def at_creation(
    repo: Repository, owner: Owner, cmd: CreateJob, now: datetime, *, may_write: bool = True
) -> Row | None:
    """ETA columns for a new job; also records ``estimatedDuration`` as the key's default.

    Order: explicit ``estimatedCompletionAt``; history once the key has 5 completions
    (its typical queue wait plus processing time); the given ``estimatedDuration``; the
    key's ``defaultDuration``; else no ETA. None, having written nothing, when the default
    must be recorded and ``may_write`` is false (a write outside a transaction).
    """
    key = (cmd.workflowId or cmd.jobType) + (PARENT_SUFFIX if cmd.totalChildren is not None else "")
    stats_repo = EtaRepository(repo.conn)
    stats = await stats_repo.get(owner, key)
    given = cmd.estimatedDuration
    # Only write when the default changes, so creations of one key do not queue on its row.
    if given is not None and (stats is None or stats["default_duration"] != given):
        if not may_write:
            return None
        await stats_repo.set_default(owner, key, given, estimator.empty_digest(), now)
    if cmd.estimatedCompletionAt is not None:
        return {"estimated_completion_at": cmd.estimatedCompletionAt}
    history = _history(stats, given)
    estimate = estimator.remaining(history, 0, 0, pending=True)
    columns = _eta_columns(history, estimate, now)
    entry = estimator.forecast_entry(history, estimate, 0, 0)
    if entry is not None:
        columns["eta_state"] = {"f": {"0": entry}}
    return columns


def on_progress(job: Row, stats: Row | None, cmd: UpdateProgress, now: datetime) -> Row:
    """ETA columns after a progress update: explicit estimate, else pace blended with history.

    ``stats`` are the job's key statistics, read with the job's row lock.
    """
    origin, offset = _origin(job, cmd.progress, now)
    state = {**_milestones(job, cmd.progress, origin, now), "b": round(offset)}
    if cmd.estimatedCompletionAt is not None:
        return {
            "eta_state": state,
            "estimated_completion_at": cmd.estimatedCompletionAt,
            "eta_confidence": None,
            "eta_based_on": None,
        }
    history = _history(stats, job["estimated_duration"])
    elapsed = _ms(now - origin)
    estimate = estimator.remaining(history, cmd.progress, elapsed)
    state = _kept(state, history, cmd.progress, estimate, elapsed)
    columns = _eta_columns(history, estimate, now)
    # Most updates cross no decile and open no band: the stored state stands, and the write
    # neither encodes nor sends it (with a learned key's kept forecasts, about 1 KB).
    return columns if state == job["eta_state"] else {"eta_state": state, **columns}


def for_parent(parent: Row, stats: Row | None, changes: Row, now: datetime) -> Row:
    """ETA columns for a parent after a child changed: its aggregate pace and its own history."""
    status: str = changes.get("status") or parent["status"]
    origin = changes.get("started_at") or parent["started_at"]
    progress = int(changes["progress"] if "progress" in changes else parent["progress"])
    if is_terminal(status) or origin is None:
        return {}
    if progress == parent["progress"] and parent["estimated_completion_at"] is not None:
        return {}  # nothing new to learn from; keep the standing estimate
    state = _milestones(parent, progress, origin, now)
    history = _history(stats, parent["estimated_duration"])
    elapsed = _ms(now - origin)
    estimate = estimator.remaining(history, progress, elapsed)
    state = _kept(state, history, progress, estimate, elapsed)
    return {"eta_state": state, **_eta_columns(history, estimate, now)}


def on_complete(owner: Owner, job: Row, before: Row | None = None) -> Staged:
    """A completed job's ETA sample: its processing time, wait, profile and the forecasts
    it was shown, appended for its key without locking the key's statistics (each
    completion is its own row; readers apply the pending ones, :func:`compact` folds them).

    ``before`` is the row as it was before completion, for the last progress milestones.
    """
    previous = before if before is not None else job
    origin = _origin(previous, 1, job["completed_at"])[0]  # never started: from creation
    wait = _ms(origin - job["created_at"])
    duration = round(_ms(job["completed_at"] - origin))
    state = _milestones(previous, 100, origin, job["completed_at"])
    sample = {"d": duration, "m": state["m"], "w": wait, "f": state.get("f")}
    values = {
        "app_id": owner.app_id,
        "mode": owner.mode,
        "eta_key": eta_key_of(job),
        "sample": sample,
        "created_at": job["completed_at"],
    }
    return Staged("eta_samples", {}, values, insert=True)


def merged(stats: Row) -> Row:
    """The key's statistics with its pending samples folded in, in order (a copy: the
    stored row and its samples are untouched)."""
    pending = stats.get("pending") or []
    if not pending:
        return stats
    # A deep copy through JSON: the digest is JSON (it comes from a JSONB column), and
    # orjson copies it an order of magnitude faster than copy.deepcopy.
    stored = stats.get("digest")
    digest = orjson.loads(orjson.dumps(stored)) if stored else estimator.empty_digest()
    count = int(stats.get("count") or 0)
    total = float(stats.get("sum_duration") or 0.0)
    low, high = stats.get("min_duration"), stats.get("max_duration")
    for sample in pending:
        duration = int(sample["d"])
        estimator.record(digest, duration, sample.get("m"), float(sample["w"]), sample.get("f"))
        low = duration if count == 0 or low is None else min(int(low), duration)
        high = duration if count == 0 or high is None else max(int(high), duration)
        total += duration
        count += 1
    return {
        **stats,
        "count": count,
        "sum_duration": total,
        "min_duration": low,
        "max_duration": high,
        "digest": digest,
        "pending": [],
    }


async def compact(repo: Repository, owner: Owner, eta_key: str) -> int:
    """Fold the key's pending samples into its statistics, in the caller's transaction
    (taken first, so a key with none, or one just reset, gets no row); how many."""
    stats_repo = EtaRepository(repo.conn)
    taken = await stats_repo.take_samples(owner, eta_key)
    if not taken:
        return 0
    # A row made here dates from its first sample, as readers of the samples alone see it.
    first = min(t["created_at"] for t in taken)
    row = await stats_repo.lock(owner, eta_key, estimator.empty_digest(), first)
    folded = merged({**row, "pending": [t["sample"] for t in taken]})
    last = max([row["last_updated"], *(t["created_at"] for t in taken)])
    values = {c: folded[c] for c in ("count", "sum_duration", "min_duration", "max_duration")}
    values.update(digest=folded["digest"], last_updated=last)
    await stats_repo.store(owner, eta_key, values)
    return len(taken)


def _kept(
    state: dict[str, Any],
    history: estimator.History,
    progress: int,
    estimate: estimator.Estimate | None,
    elapsed_ms: float,
) -> dict[str, Any]:
    """The job's state plus this estimate's forecasts, if it is the first of its band."""
    band = estimator.band_of(progress)
    kept: dict[str, Any] = state.get("f") or {}
    if band is None or band in kept:
        return state
    entry = estimator.forecast_entry(history, estimate, progress, elapsed_ms)
    return state if entry is None else {**state, "f": {**kept, band: entry}}


def _milestones(job: Row, progress: int, origin: datetime, now: datetime) -> dict[str, Any]:
    """The job's progress milestones after it moved to ``progress`` at ``now``."""
    since = _ms(job["updated_at"] - origin) if job["started_at"] is not None else 0.0
    return estimator.milestones_after(
        job["eta_state"],
        int(job["progress"]),
        progress,
        min(since, _ms(now - origin)),
        _ms(now - origin),
    )


# --- the /v1/eta reads and reset ------------------------------------------------------------


def stats_view(row: Row) -> dict[str, Any]:
    """A key's statistics as the API returns them; absent values are omitted, never null."""
    row = merged(row)
    count = int(row["count"])
    # The clients type avg/min/max as always-present numbers: a key known only by its
    # default (no completion yet) reports them as 0.
    out: dict[str, Any] = {
        "etaKey": row["eta_key"],
        "count": count,
        "avgDuration": 0,
        "minDuration": 0,
        "maxDuration": 0,
    }
    if count > 0:
        low, high = int(row["min_duration"]), int(row["max_duration"])
        out.update(
            avgDuration=round(float(row["sum_duration"]) / count),
            minDuration=low,
            maxDuration=high,
        )
        for name, q in (("p50Duration", 0.5), ("p95Duration", 0.95)):
            value = estimator.percentile(row["digest"], q)
            if value is not None:
                out[name] = min(max(value, low), high)  # bucket midpoints stay within range
    if row["default_duration"] is not None:
        out["defaultDuration"] = int(row["default_duration"])
    out["confidence"] = min(count / estimator.FULL_CONFIDENCE, 1.0)
    out["lastUpdated"] = iso(row["last_updated"])
    return out


async def get_stats(repo: Repository, owner: Owner, eta_key: str) -> dict[str, Any]:
    row = await EtaRepository(repo.conn).get(owner, eta_key)
    if row is None:
        raise EtaKeyNotFound(eta_key)
    return stats_view(row)


async def list_stats(repo: Repository, owner: Owner) -> list[dict[str, Any]]:
    return [stats_view(r) for r in await EtaRepository(repo.conn).list(owner)]


async def reset(repo: Repository, owner: Owner, eta_key: str) -> dict[str, Any]:
    """Forget a key's statistics, its percentile state and its default duration."""
    deleted = await EtaRepository(repo.conn).delete(owner, eta_key)
    return {"deleted": deleted, "etaKey": eta_key}
