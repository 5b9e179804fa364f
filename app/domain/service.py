"""The job service: state machine, parent aggregates and events, in the caller's transaction.

Lock order is always parent before child, then the user's event stream counter last, so
concurrent writers never deadlock. A write locks its rows (or, optimistically, reads them
with their versions), computes the new rows in Python, and stores them together with their
events in one statement (:meth:`JobService.flush_events`) just before commit. A completion
appends its ETA sample in that statement; no write locks a key's ETA statistics (the
compaction in ``app.background.eta_compaction`` folds the samples into them).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ulid import ULID

from app.db.repository import Owner, Repository, Row, Staged, UniqueViolation
from app.db.tables import jobs
from app.domain import eta, push
from app.domain.clock import now_ms
from app.domain.commands import (
    TTL_DEFAULT,
    CancelJob,
    CompleteJob,
    CreateJob,
    CtaButton,
    FailJob,
    PushOptions,
    UpdateProgress,
)
from app.domain.errors import (
    DuplicateChildIndex,
    InvalidChildIndex,
    InvalidJobState,
    InvalidParent,
    JobNotFound,
)
from app.domain.rules import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    ChildCounts,
    is_terminal,
    parent_progress,
    parent_status,
)
from app.domain.views import counts_of, event_payload, job_view

TERMINAL_EVENT = {COMPLETED: "job.completed", FAILED: "job.failed", CANCELLED: "job.cancelled"}
Locked = tuple[Row, Row | None]  # a locked job row and its ETA key's statistics (or None)
_BLANK_JOB: Row = {column.name: None for column in jobs.c}  # a new row's unset columns

# A terminal job keeps no estimate: no future completion time, no confidence in one.
NO_ETA: Row = {"estimated_completion_at": None, "eta_confidence": None, "eta_based_on": None}


class NeedsLocks(Exception):  # control flow, not an error
    """This write cannot be done optimistically; run it in a transaction, with row locks."""


class WriteConflict(Exception):  # control flow, not an error
    """An optimistic write found its row changed since it was read; nothing was written."""


@dataclass
class JobService:
    """One write (or read) on behalf of ``owner``; events are appended before commit."""

    repo: Repository
    owner: Owner
    now: datetime = field(default_factory=now_ms)
    _events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    _staged: list[Staged] = field(default_factory=list)
    _user_id: str | None = None
    # (stream_id, last_seq) of each stream this write appended to, for the notifier.
    touched_streams: list[tuple[int, int]] = field(default_factory=list)
    appended: int = 0  # events this write appended (counted by the caller once committed)
    # The ETA keys this write appended completion samples to (compacted after commit).
    sampled: set[tuple[Owner, str]] = field(default_factory=set)
    # Optimistic: no transaction and no row lock. The job is read with its row version and
    # the whole write is one statement that applies only to that version (WriteConflict
    # otherwise). A create, and a progress report, complete, fail or cancel of a job that is
    # neither a child nor a parent, with no push, are written so; any other write raises
    # NeedsLocks before it writes anything.
    optimistic: bool = False
    # The job view of each row this write emitted, by job id: rendered once, shared by the
    # event, the idempotency record and the response.
    _views: dict[str, tuple[Row, dict[str, Any]]] = field(default_factory=dict)

    # --- reads --------------------------------------------------------------------------

    async def get(self, job_id: str) -> Row:
        job = await self.repo.get_job(self.owner, job_id, self.now)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def list_for_user(
        self,
        user_id: str,
        before_id: str | None,
        limit: int,
        only: Collection[str] | None = None,
    ) -> list[Row]:
        return await self.repo.list_jobs(self.owner, user_id, before_id, limit, self.now, only)

    async def with_children(self, job_id: str) -> tuple[Row, list[Row]]:
        parent = await self.get(job_id)
        if parent["total_children"] is None:
            raise InvalidParent(f"Job {job_id} is not a parent job", {"id": job_id})
        return parent, await self.repo.list_children(job_id)

    # --- writes -------------------------------------------------------------------------

    async def create(self, cmd: CreateJob) -> Row:
        """A new job and its ``job.started`` event, in one statement.

        Optimistic (no transaction): the parent is read unlocked and the child's insert
        applies only if the parent is still live and unfinished when the statement runs
        (share-locked inside it); anything else (a taken slot, a finished parent, an
        ``estimatedDuration`` to record as the key's default) takes the locked path, which
        gives the exact error.
        """
        values: Row = {
            "id": str(ULID()),
            "app_id": self.owner.app_id,
            "mode": self.owner.mode,
            "user_id": cmd.userId,
            "job_type": cmd.jobType,
            "title": cmd.title,
            "workflow_id": cmd.workflowId,
            "status": PENDING,
            "progress": 0,
            "metadata": cmd.metadata,
            "queue": _dump(cmd.queue),
            "stage": _dump(cmd.stage),
            "estimated_duration": cmd.estimatedDuration,
            "created_at": self.now,
            "updated_at": self.now,
            "expires_at": self.now + timedelta(seconds=cmd.ttlSeconds or TTL_DEFAULT),
        }
        if cmd.totalChildren is not None:
            values.update(
                total_children=cmd.totalChildren,
                completed_children=0,
                failed_children=0,
                running_children=0,
                cancelled_children=0,
                child_progress_sum=0,
                child_progress_mode=cmd.childProgressMode or "average",
            )
        if cmd.parentJobId is not None:
            parent = await self._check_parent(cmd)
            # A child lives exactly as long as its parent: one expiring first would stay in
            # the parent's counters and leave the parent unfinished for good, and one
            # outliving it is unreachable (a child of an expired parent reads as 404).
            values.update(
                parent_job_id=cmd.parentJobId,
                child_index=cmd.childIndex,
                expires_at=parent["expires_at"],
            )
        columns = await eta.at_creation(
            self.repo, self.owner, cmd, self.now, may_write=not self.optimistic
        )
        if columns is None:
            raise NeedsLocks()  # the key's default changes: a write to its statistics
        values.update(columns)
        job = {**_BLANK_JOB, **values}
        guard = cmd.parentJobId if self.optimistic else None
        self._staged.append(Staged("jobs", {}, values, insert=True, parent_guard=guard))
        self._emit("job.started", job)
        try:
            await self.flush_events()  # the insert and its event, in one statement
        except WriteConflict as exc:
            raise NeedsLocks() from exc  # slot taken or parent finished: the locked path says
        except UniqueViolation as exc:
            existing = await self._existing_child(cmd)
            raise DuplicateChildIndex(
                f"Parent {cmd.parentJobId} already has a child at index {cmd.childIndex}",
                {"parentJobId": cmd.parentJobId, "childIndex": cmd.childIndex, **existing},
            ) from exc
        return job

    async def progress(self, job_id: str, cmd: UpdateProgress) -> Row:
        job, stats, parent = await self._lock_for_write(job_id)
        changes: Row = {"progress": cmd.progress, "updated_at": self.now}
        if job["status"] == PENDING:
            changes.update(status=RUNNING, started_at=self.now)
        if cmd.message is not None:
            changes["message"] = cmd.message
        if cmd.queue is not None:
            changes["queue"] = _dump(cmd.queue)
        if cmd.stage is not None:
            changes["stage"] = _dump(cmd.stage)
        if cmd.metadata is not None:
            changes["metadata"] = {**(job["metadata"] or {}), **cmd.metadata}
        changes.update(eta.on_progress(job, stats, cmd, self.now))
        updated = await self._write(job, parent, changes, "job.progress")
        await self._queue_pushes(updated, cmd.push)
        return updated

    async def complete(self, job_id: str, cmd: CompleteJob) -> Row:
        job, _, parent = await self._lock_for_write(job_id)
        changes: Row = {
            "status": COMPLETED,
            "progress": 100,
            "updated_at": self.now,
            "completed_at": self.now,
            **NO_ETA,
        }
        if cmd.result is not None:
            changes["result"] = cmd.result
        if cmd.message is not None:
            changes["message"] = cmd.message
        updated = await self._write(job, parent, changes, "job.completed")
        self._record_completion(updated, job)
        cta = cmd.liveActivity.ctaButton if cmd.liveActivity is not None else None
        await self._queue_pushes(updated, cmd.push, cta)
        return updated

    async def fail(self, job_id: str, cmd: FailJob) -> Row:
        job, _, parent = await self._lock_for_write(job_id)
        changes: Row = {
            "status": FAILED,
            "error": cmd.error.model_dump(exclude_none=True),
            "retryable": cmd.retryable,
            "updated_at": self.now,
            "completed_at": self.now,
            **NO_ETA,
        }
        updated = await self._write(job, parent, changes, "job.failed")
        await self._queue_pushes(updated, cmd.push)
        return updated

    async def cancel(self, job_id: str, cmd: CancelJob) -> Row:
        job, _, parent = await self._lock_for_write(job_id, allow_parent=True)
        changes: Row = {
            "status": CANCELLED,
            "updated_at": self.now,
            "completed_at": self.now,
            **NO_ETA,
        }
        if cmd.reason is not None:
            changes["message"] = cmd.reason
        if job["total_children"] is not None:
            counts = counts_of(job)
            for child in await self.repo.cancel_unfinished_children(job["id"], self.now):
                counts = counts.moved(
                    (child["old_status"], child["progress"]), (CANCELLED, child["progress"])
                )
                self._emit("job.cancelled", child)
                await self._queue_pushes(child, None)  # ends the child's Live Activity, if any
            changes.update(_counter_columns(counts))
            changes["progress"] = parent_progress(job["child_progress_mode"], counts)
        updated = await self._write(job, parent, changes, "job.cancelled")
        await self._queue_pushes(updated, cmd.push)
        return updated

    async def _queue_pushes(
        self, job: Row, options: PushOptions | None, cta: CtaButton | None = None
    ) -> None:
        """The outbox hook: a write whose body carries ``push`` records its deliveries in
        this transaction (they commit, or roll back, with the job's change).

        A job with a registered Live Activity gets its update (or ``end``) without being
        asked: the SDK's ``push.liveActivity`` defaults to on, and a worker that sends no
        ``push`` at all must not leave the lock screen frozen.
        """
        if options is None and job.get("live_activity"):
            options = _LIVE_ACTIVITY_ONLY
        if options is not None:
            self._needs_locks()  # the outbox rows commit with the change: a transaction
            await push.queue_pushes(self.repo, self.owner, job, push.PushRequest(options, cta))

    def _record_completion(self, job: Row, before: Row) -> None:
        """Append the job's completion to its ETA key's samples (no lock on the key)."""
        self._staged.append(eta.on_complete(self.owner, job, before))
        self.sampled.add((self.owner, eta.eta_key_of(job)))

    async def flush_events(self) -> None:
        """Store the staged job changes and append the collected events, in one statement.

        Call once, last before commit: the stream counter it locks is the last lock taken.
        """
        staged, events, self._staged, self._events = self._staged, self._events, [], []
        if events and self._user_id is not None:
            stream = await self.repo.write(self.owner, self._user_id, staged, events, self.now)
            if stream is None:
                raise WriteConflict()
            self.touched_streams.append(stream)
            self.appended += len(events)
        elif staged:  # every write emits events
            raise RuntimeError("row changes staged without events")

    def view(self, row: Row) -> dict[str, Any]:
        """``job_view(row)``, rendered once per row this write produced (do not mutate)."""
        cached = self._views.get(row["id"])
        if cached is not None and cached[0] is row:
            return cached[1]
        rendered = job_view(row)
        self._views[row["id"]] = (row, rendered)
        return rendered

    # --- internals ----------------------------------------------------------------------

    def _needs_locks(self) -> None:
        if self.optimistic:
            raise NeedsLocks()

    def _emit(self, name: str, job: Row, payload: Row | None = None) -> None:
        """Queue an event about ``job`` (its view, unless ``payload`` is given)."""
        self._user_id = job["user_id"]
        self._events.append((name, job["id"], payload or event_payload(self.view(job), job)))

    def _emit_child_progress(self, parent: Row, child: Row) -> None:
        """``child.progress``: the parent as the child's write left it, keyed by the parent.

        The realtime clients merge this event into the parent they hold (found by
        ``parentJobId``) and store the result under its ``jobId``; so both name the
        parent, and the child that moved rides along under ``child``.
        """
        payload = event_payload(self.view(parent), parent)
        payload["parentJobId"] = parent["id"]
        payload["child"] = {
            "id": child["id"],
            "childIndex": child["child_index"],
            "status": child["status"],
            "progress": child["progress"],
        }
        self._emit("child.progress", parent, payload)

    async def _check_parent(self, cmd: CreateJob) -> Row:
        assert cmd.parentJobId is not None and cmd.childIndex is not None
        # Share-lock the parent so a concurrent cancel cannot miss this child (optimistic:
        # read it unlocked; the insert's statement share-locks it and checks it again).
        if self.optimistic:
            parent = await self.repo.get_job(self.owner, cmd.parentJobId, self.now)
        else:
            parent = await self.repo.share_lock_job(self.owner, cmd.parentJobId, self.now)
        if parent is None or parent["total_children"] is None:
            raise InvalidParent(
                f"Parent job {cmd.parentJobId} does not exist or is not a parent",
                {"parentJobId": cmd.parentJobId},
            )
        if parent["user_id"] != cmd.userId:
            raise InvalidParent(
                "A child's userId must equal its parent's",
                {"parentJobId": cmd.parentJobId, "userId": cmd.userId},
            )
        if cmd.childIndex >= parent["total_children"]:
            raise InvalidChildIndex(
                f"childIndex {cmd.childIndex} must be below the parent's totalChildren "
                f"({parent['total_children']})",
                {"childIndex": cmd.childIndex, "totalChildren": parent["total_children"]},
            )
        if is_terminal(parent["status"]):
            raise InvalidJobState(
                f"Parent job {cmd.parentJobId} is {parent['status']}",
                {"id": cmd.parentJobId, "status": parent["status"]},
            )
        return parent

    async def _existing_child(self, cmd: CreateJob) -> Row:
        assert cmd.parentJobId is not None and cmd.childIndex is not None
        child = await self.repo.find_child(cmd.parentJobId, cmd.childIndex)
        return {"existingJobId": child["id"]} if child else {}

    async def _lock_for_write(
        self, job_id: str, *, allow_parent: bool = False
    ) -> tuple[Row, Row | None, Locked | None]:
        """Lock the job (and its parent first, if it is a child) and check it is writable.

        Returns ``(job, its ETA stats, (parent, its ETA stats) or None)``. A child whose
        parent has expired is as gone as the parent: ``JobNotFound``.
        """
        parent = None
        if self.optimistic:
            locked = await self.repo.read_plain_job(self.owner, job_id, self.now)
            if locked is None or locked[0]["total_children"] is not None:
                raise NeedsLocks()  # a child, a parent, or no such job: the locked path decides
        else:
            family = await self.repo.lock_family(self.owner, job_id, self.now)
            if family is None:
                raise JobNotFound(job_id)
            locked, parent = family
        job, stats = locked
        if is_terminal(job["status"]):
            raise InvalidJobState(
                f"Job {job_id} is {job['status']}; it cannot change any more",
                {"id": job_id, "status": job["status"]},
            )
        if job["total_children"] is not None and not allow_parent:
            raise InvalidJobState(
                f"Job {job_id} is a parent; its state follows its children",
                {"id": job_id, "status": job["status"]},
            )
        return job, stats, parent

    def _stage(self, job: Row, changes: Row) -> Row:
        """Record ``changes`` for the final statement; returns the row as it will be stored."""
        version = job.pop("row_version", None) if self.optimistic else None
        self._staged.append(Staged("jobs", {"id": job["id"]}, changes, version=version))
        return {**job, **changes}

    async def _write(self, job: Row, parent: Locked | None, changes: Row, event: str) -> Row:
        updated = self._stage(job, changes)
        self._emit(event, updated)
        if parent is not None:
            await self._update_parent(parent, job, updated)
        return updated

    async def _update_parent(self, locked: Locked, before: Row, after: Row) -> None:
        """Apply one child's before→after delta to its parent: O(1), never a recount."""
        parent, stats = locked
        if is_terminal(parent["status"]):
            self._emit_child_progress(parent, after)
            return
        counts = counts_of(parent).moved(
            (before["status"], before["progress"]), (after["status"], after["progress"])
        )
        status = parent_status(counts)
        changes: Row = {
            **_counter_columns(counts),
            "progress": parent_progress(parent["child_progress_mode"], counts),
            "status": status,
            "updated_at": self.now,
        }
        if parent["started_at"] is None and status != PENDING:
            changes["started_at"] = self.now
        if is_terminal(status):
            changes["completed_at"] = self.now
            changes.update(NO_ETA)
        changes.update(eta.for_parent(parent, stats, changes, self.now))
        updated = self._stage(parent, changes)
        self._emit_child_progress(updated, after)
        self._emit("parent.updated", updated)
        if status != parent["status"] and is_terminal(status):
            self._emit(TERMINAL_EVENT[status], updated)
            if status == COMPLETED:
                self._record_completion(updated, parent)
        await self._queue_pushes(updated, None)  # the parent's own Live Activity, if any


# What a write without ``push`` sends to a job with a registered Live Activity: its
# update or end, and nothing to the user's other devices (those are asked for per write).
_LIVE_ACTIVITY_ONLY = PushOptions(liveActivity=True, silent=False)


def _counter_columns(counts: ChildCounts) -> Row:
    return {
        "completed_children": counts.completed,
        "failed_children": counts.failed,
        "running_children": counts.running,
        "cancelled_children": counts.cancelled,
        "child_progress_sum": counts.progress_sum,
    }


def _dump(model: Any) -> Any:
    return model.model_dump(exclude_none=True) if model is not None else None
