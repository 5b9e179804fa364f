"""Queries behind authentication: keys with their app's settings, and token signing keys."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection
from ulid import ULID

from app.db.tables import api_keys, app_settings, signing_keys

Row = dict[str, Any]
SECRET_BYTES = 32  # HS256: a key as long as the hash output

_FIND_KEY = (
    select(
        api_keys,
        func.coalesce(app_settings.c.public_keys_token_only, False).label("token_only"),
    )
    .select_from(api_keys.outerjoin(app_settings, app_settings.c.app_id == api_keys.c.app_id))
    .where(api_keys.c.key_hash == bindparam("key_hash"))
)


async def find_key(conn: AsyncConnection, key_hash: bytes) -> Row | None:
    """The key with ``key_hash`` and whether its app's public keys are token-only."""
    row = (await conn.execute(_FIND_KEY, {"key_hash": key_hash})).mappings().first()
    return dict(row) if row else None


async def set_token_only(conn: AsyncConnection, app_id: str, value: bool) -> None:
    stmt = insert(app_settings).values(
        app_id=app_id, public_keys_token_only=value, updated_at=func.now()
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[app_settings.c.app_id],
        set_={"public_keys_token_only": value, "updated_at": func.now()},
    )
    await conn.execute(stmt)


async def token_only(conn: AsyncConnection, app_id: str) -> bool:
    stmt = select(app_settings.c.public_keys_token_only).where(app_settings.c.app_id == app_id)
    return bool((await conn.execute(stmt)).scalar())


# --- signing keys ------------------------------------------------------------------------


async def current_signing_key(conn: AsyncConnection) -> tuple[str, bytes]:
    """The key new tokens are signed with; the first one is created on first use."""
    stmt = (
        select(signing_keys.c.kid, signing_keys.c.secret)
        .where(signing_keys.c.retired_at.is_(None))
        .order_by(signing_keys.c.created_at.desc(), signing_keys.c.kid.desc())
        .limit(1)
    )
    row = (await conn.execute(stmt)).first()
    if row is not None:
        return row.kid, row.secret
    # Replicas starting together must not each create a key (both would verify, but one
    # key is what an operator expects to see).
    await conn.execute(select(func.pg_advisory_xact_lock(func.hashtext("seenn-signing-keys"))))
    row = (await conn.execute(stmt)).first()
    if row is not None:
        return row.kid, row.secret
    kid, secret = str(ULID()), secrets.token_bytes(SECRET_BYTES)
    await conn.execute(signing_keys.insert().values(kid=kid, secret=secret, created_at=func.now()))
    return kid, secret


async def verifying_secret(conn: AsyncConnection, kid: str, grace: timedelta) -> bytes | None:
    """The secret of ``kid`` if it may still verify: unretired, or retired less than
    ``grace`` ago (the longest a token it signed can live)."""
    stmt = select(signing_keys.c.secret).where(
        signing_keys.c.kid == kid,
        (signing_keys.c.retired_at.is_(None)) | (signing_keys.c.retired_at > func.now() - grace),
    )
    return (await conn.execute(stmt)).scalar()


async def rotate_signing_key(
    conn: AsyncConnection, grace: timedelta, revoke_previous: bool
) -> tuple[str, int]:
    """A new signing key; the others are retired (or deleted with ``revoke_previous``).

    Keys retired longer than ``grace`` ago can verify nothing and are deleted. Returns the
    new kid and how many keys were retired or deleted.
    """
    await conn.execute(select(func.pg_advisory_xact_lock(func.hashtext("seenn-signing-keys"))))
    kid = str(ULID())
    if revoke_previous:
        changed = (await conn.execute(delete(signing_keys))).rowcount
    else:
        changed = (
            await conn.execute(
                update(signing_keys)
                .where(signing_keys.c.retired_at.is_(None))
                .values(retired_at=func.now())
            )
        ).rowcount
        await conn.execute(
            delete(signing_keys).where(signing_keys.c.retired_at <= func.now() - grace)
        )
    await conn.execute(
        signing_keys.insert().values(
            kid=kid, secret=secrets.token_bytes(SECRET_BYTES), created_at=func.now()
        )
    )
    return kid, changed


async def list_signing_keys(conn: AsyncConnection) -> list[Row]:
    stmt = select(
        signing_keys.c.kid, signing_keys.c.created_at, signing_keys.c.retired_at
    ).order_by(signing_keys.c.created_at)
    return [dict(r) for r in (await conn.execute(stmt)).mappings()]


async def lock_bootstrap(conn: AsyncConnection, app_id: str) -> None:
    """Hold, until the transaction ends, the lock under which an app's first key is made."""
    lock = func.pg_advisory_xact_lock(func.hashtext(f"seenn-keys-bootstrap:{app_id}"))
    await conn.execute(select(lock))
