"""What a caller of the API may do, one named method an operation, each run in the unit of
work on behalf of the caller's app and mode. A route receives an :class:`Operations` for
its caller (``app/api/deps.py``) and calls one of these; it never sees a connection."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from app.db.repository import Owner, Row
from app.domain import eta, push
from app.domain.commands import (
    CancelJob,
    CompleteJob,
    CreateJob,
    DeviceRegistration,
    DeviceRemoval,
    FailJob,
    LiveActivityRegistration,
    LiveActivityRemoval,
    UpdateProgress,
)
from app.domain.idempotency import IdempotentRequest
from app.domain.keys import Principal, owner_of
from app.domain.service import JobService
from app.domain.unit_of_work import Action, UnitOfWork

T = TypeVar("T")
IdempotencyOf = Callable[[], Awaitable[IdempotentRequest | None]]


async def _no_idempotency() -> IdempotentRequest | None:
    return None


@dataclass(slots=True)
class Operations:
    """One caller's operations. ``idempotency`` gives the request's ``Idempotency-Key``
    (read when a write starts); ``status_code`` is stored with an idempotent response."""

    uow: UnitOfWork
    principal: Principal
    idempotency: IdempotencyOf = _no_idempotency
    status_code: int = 200
    owner: Owner = field(init=False)

    def __post_init__(self) -> None:
        self.owner = owner_of(self.principal)

    # --- reads --------------------------------------------------------------------------

    async def job(self, job_id: str) -> Row:
        return await self.uow.read(self.owner, lambda s: s.get(job_id))

    async def jobs_of_user(
        self, user_id: str, before_id: str | None, limit: int, only: Collection[str] | None
    ) -> list[Row]:
        return await self.uow.read(
            self.owner, lambda s: s.list_for_user(user_id, before_id, limit, only)
        )

    async def with_children(self, job_id: str) -> tuple[Row, list[Row]]:
        return await self.uow.read(self.owner, lambda s: s.with_children(job_id))

    async def deliveries(self, job_id: str) -> Row:
        return await self.uow.read(
            self.owner, lambda s: push.list_deliveries(s.repo, s.owner, job_id, s.now)
        )

    async def eta_stats(self) -> list[dict[str, Any]]:
        return await self.uow.read(self.owner, lambda s: eta.list_stats(s.repo, s.owner))

    async def eta_stat(self, eta_key: str) -> dict[str, Any]:
        return await self.uow.read(self.owner, lambda s: eta.get_stats(s.repo, s.owner, eta_key))

    # --- a job's writes: the JSON of the job the write leaves ---------------------------

    async def create_job(self, cmd: CreateJob) -> bytes:
        return await self._write_job(lambda s: s.create(cmd))

    async def progress(self, job_id: str, cmd: UpdateProgress) -> bytes:
        return await self._write_job(lambda s: s.progress(job_id, cmd))

    async def complete(self, job_id: str, cmd: CompleteJob) -> bytes:
        return await self._write_job(lambda s: s.complete(job_id, cmd))

    async def fail(self, job_id: str, cmd: FailJob) -> bytes:
        return await self._write_job(lambda s: s.fail(job_id, cmd))

    async def cancel(self, job_id: str, cmd: CancelJob) -> bytes:
        return await self._write_job(lambda s: s.cancel(job_id, cmd))

    # --- other writes: their result -----------------------------------------------------

    async def register_live_activity(self, cmd: LiveActivityRegistration) -> Row:
        return await self._write(lambda s: push.register_live_activity(s.repo, s.owner, cmd, s.now))

    async def remove_live_activity(self, cmd: LiveActivityRemoval) -> Row:
        return await self._write(lambda s: push.remove_live_activity(s.repo, s.owner, cmd))

    async def register_device(self, cmd: DeviceRegistration) -> Row:
        return await self._write(lambda s: push.register_device(s.repo, s.owner, cmd, s.now))

    async def remove_device(self, cmd: DeviceRemoval) -> Row:
        return await self._write(lambda s: push.remove_device(s.repo, s.owner, cmd))

    async def reset_eta(self, eta_key: str) -> dict[str, Any]:
        return await self._write(lambda s: eta.reset(s.repo, s.owner, eta_key))

    async def answer_once(self, make: Callable[[], T]) -> T:
        """A write of nothing but its answer (``make``'s): with an ``Idempotency-Key``, a
        retry gets the first answer."""

        async def answer(_: JobService) -> T:
            return make()

        return await self._write(answer)

    # --- the unit of work ---------------------------------------------------------------

    async def _write(self, action: Action[T]) -> T:
        idem = await self.idempotency()
        result, _ = await self.uow.write(self.owner, action, _json, idem, self.status_code)
        return result

    async def _write_job(self, action: Action[Row]) -> bytes:
        idem = await self.idempotency()
        _, body = await self.uow.write(self.owner, action, _job_json, idem, self.status_code)
        return body


def _json(_: JobService, value: object) -> bytes:
    return orjson.dumps(value)


def _job_json(service: JobService, row: Row) -> bytes:
    """The job view is rendered once: the event carries it, and the idempotency record and
    the response are the same bytes."""
    return orjson.dumps(service.view(row))
