"""The unit of work: how every read and write of the API meets the database.

- A read runs on a pooled connection in autocommit (no BEGIN/ROLLBACK round trips), leased
  from the pool without SQLAlchemy's ``Connection`` when one is idle (``app/db/driver.py``); one
  that finds its pooled connection dead (the database restarted) is retried once on a
  fresh connection: reads are idempotent, and the pool has been invalidated.
- A write without an ``Idempotency-Key`` is first tried optimistically, as one statement
  outside a transaction (:meth:`UnitOfWork._write_unlocked`); every other write, and one
  the service cannot do that way, runs in one transaction (:meth:`UnitOfWork._write_locked`):
  ``BEGIN``, the key claimed, the service's change, its events flushed, the response
  rendered and recorded under the key, ``COMMIT``, deadlocks retried.
- After commit, and only then, the write's events are counted and announced (``NOTIFY``)
  and its ETA samples handed to compaction (:class:`AfterCommit`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.driver import Lease
from app.db.failures import is_retryable, is_unavailable, stale_connection
from app.db.migrate import current_revision, head_revision
from app.db.repository import Owner, Repository
from app.domain.idempotency import IdempotentRequest
from app.domain.service import JobService, NeedsLocks, WriteConflict

T = TypeVar("T")
Action = Callable[[JobService], Awaitable[T]]
Render = Callable[[JobService, T], bytes]
_ATTEMPTS = 3
_OPTIMISTIC_ATTEMPTS = 3


class Notifier(Protocol):
    def notify(self, streams: list[tuple[int, int]]) -> None: ...


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Compactor(Protocol):
    def poke(self, keys: set[tuple[Owner, str]]) -> None: ...


@dataclass(frozen=True, slots=True)
class AfterCommit:
    """What a committed write sets off: the count of events written, the ``NOTIFY`` of the
    streams it appended to, and the compaction of the ETA keys it sampled."""

    events_written: Counter
    notifier: Notifier
    eta_compactor: Compactor

    def __call__(self, service: JobService) -> None:
        if service.appended:
            self.events_written.inc(service.appended)
        self.notifier.notify(service.touched_streams)
        if service.sampled:
            self.eta_compactor.poke(service.sampled)


def database_unavailable(exc: BaseException) -> bool:
    """Whether a failure means the database is unreachable, overloaded or shutting down
    (the rule is ``app/db/failures.py``'s): the request gets a 503, not a 500."""
    return is_unavailable(exc)


def required_schema() -> str | None:
    """The schema revision this code needs (the newest migration it has)."""
    return head_revision()


class UnitOfWork:
    """Runs a service action as a read or as a write (see the module's doc)."""

    def __init__(self, engine: AsyncEngine, after_commit: AfterCommit) -> None:
        self.engine = engine
        self.after_commit = after_commit

    async def schema_revision(self) -> str | None:
        """The revision the database's schema is at (None before the first migration)."""
        async with self.engine.connect() as conn:
            return await current_revision(conn)

    async def read(self, owner: Owner, action: Action[T]) -> T:
        for attempt in range(2):
            try:
                async with Lease(self.engine) as lease:
                    return await action(JobService(Repository(lease), owner))
            except DBAPIError as exc:
                if attempt or not stale_connection(exc):
                    raise
        raise AssertionError("unreachable")

    async def write(
        self,
        owner: Owner,
        action: Action[T],
        render: Render[T],
        idem: IdempotentRequest | None = None,
        status_code: int = 200,
    ) -> tuple[T, bytes]:
        """Run ``action``; its result and ``render``'s bytes of it (the body sent, and the
        one stored under ``idem``'s key with ``status_code``)."""
        if idem is None:
            done = await self._write_unlocked(owner, action, render)
            if done is not None:
                return done
        return await self._write_locked(owner, action, render, idem, status_code)

    async def _write_locked(
        self,
        owner: Owner,
        action: Action[T],
        render: Render[T],
        idem: IdempotentRequest | None,
        status_code: int,
    ) -> tuple[T, bytes]:
        for attempt in range(_ATTEMPTS):
            committing = False
            try:
                async with self.engine.begin() as conn:
                    service = JobService(Repository(conn), owner)
                    if idem is not None:
                        await idem.claim(conn, service.owner, service.now)
                    result = await action(service)
                    await service.flush_events()
                    body = render(service, result)
                    if idem is not None:
                        await idem.record(conn, service.owner, status_code, body)
                    committing = True
                break
            except DBAPIError as exc:
                # A connection found dead before COMMIT was sent committed nothing: retry once.
                stale = not committing and attempt == 0 and stale_connection(exc)
                if not stale and (not is_retryable(exc) or attempt == _ATTEMPTS - 1):
                    raise
        self.after_commit(service)
        return result, body

    async def _write_unlocked(
        self, owner: Owner, action: Action[T], render: Render[T]
    ) -> tuple[T, bytes] | None:
        """The write as one statement outside a transaction, or None to take the locked path.

        The job is read without a lock; the write's single statement applies only to the
        row version read, appends the events with it and commits as it ends, so no lock is
        held while this process computes or while its event loop runs other work. A write
        that lost a race is recomputed from a fresh read; one the service cannot do this way
        (anything but a job's progress) returns None before it has written anything, as
        does a first read that finds its pooled connection dead.
        """
        for _ in range(_OPTIMISTIC_ATTEMPTS):
            flushing = False
            try:
                async with Lease(self.engine) as lease:
                    service = JobService(Repository(lease), owner, optimistic=True)
                    result = await action(service)
                    flushing = True
                    await service.flush_events()
                    body = render(service, result)
            except NeedsLocks:
                return None
            except WriteConflict:
                continue
            except DBAPIError as exc:
                if flushing or not stale_connection(exc):
                    raise
                return None
            self.after_commit(service)
            return result, body
        return None  # contended: queue on the row lock instead
