"""API keys: created and listed by the command line, revoked by it or by the dashboard.
(The lookup of a key on each request is in ``auth_repository``, with the app's settings.)"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.repository import Owner
from app.db.tables import api_keys


class KeysRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def insert(self, values: dict[str, Any]) -> None:
        await self.conn.execute(insert(api_keys).values(**values))

    async def of_app(self, app_id: str | None) -> list[dict[str, Any]]:
        """Every key (of ``app_id``, if given), by app then creation."""
        stmt = select(api_keys).order_by(api_keys.c.app_id, api_keys.c.created_at)
        if app_id is not None:
            stmt = stmt.where(api_keys.c.app_id == app_id)
        return [dict(r) for r in (await self.conn.execute(stmt)).mappings()]

    async def revoke(self, key_id: str, now: datetime) -> bool:
        """Revoke a live key; False when there is no such live key."""
        stmt = (
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return (await self.conn.execute(stmt)).rowcount == 1

    async def revoke_owned(self, owner: Owner, key_id: str, now: datetime) -> bool:
        """Revoke a key of the owner's app and mode; False when there is no such live key."""
        stmt = (
            update(api_keys)
            .where(
                api_keys.c.id == key_id,
                api_keys.c.app_id == owner.app_id,
                api_keys.c.mode == owner.mode,
                api_keys.c.revoked_at.is_(None),
            )
            .values(revoked_at=now)
        )
        return (await self.conn.execute(stmt)).rowcount == 1
