"""API keys: ``sk_``/``pk_`` + ``live``/``test`` + 32 random characters, stored as SHA-256."""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import auth_repository
from app.db.repository import Owner

KEY_RE = re.compile(r"^(sk|pk)_(live|test)_([A-Za-z0-9]{32})$")
_ALPHABET = string.ascii_letters + string.digits
KIND_PREFIX = {"secret": "sk", "public": "pk"}


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: an app, a mode, and whether it may write.

    ``kind`` is ``secret`` or ``public`` for an API key, ``token`` for a subscriber token,
    which reads only ``user_id``'s jobs (and, with ``job_ids``, only those jobs and their
    children). ``token_only`` marks a public key of an app that accepts only tokens.
    """

    key_id: str
    app_id: str
    mode: str
    kind: str
    token_only: bool = False
    user_id: str | None = None
    job_ids: frozenset[str] | None = None
    expires_at: float | None = None  # a token's expiry (Unix time)

    @property
    def can_write(self) -> bool:
        return self.kind == "secret"

    @property
    def is_token(self) -> bool:
        return self.kind == "token"

    def sees_user(self, user_id: str) -> bool:
        """Whether this caller may read ``user_id``'s jobs (any user, for a key)."""
        return self.user_id is None or self.user_id == user_id

    def sees_job(self, user_id: str, job_id: str, parent_id: str | None) -> bool:
        """Whether this caller may read the job ``job_id`` of ``user_id``."""
        if not self.sees_user(user_id):
            return False
        return self.job_ids is None or job_id in self.job_ids or parent_id in self.job_ids


def generate_key(kind: str, mode: str) -> str:
    """A new random key of ``kind`` (secret/public) for ``mode`` (live/test)."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(32))
    return f"{KIND_PREFIX[kind]}_{mode}_{body}"


def hash_key(key: str) -> bytes:
    """The stored form of a key. Keys carry 190 bits of entropy, so a fast hash is enough."""
    return hashlib.sha256(key.encode()).digest()


def key_hint(key: str) -> str:
    """What listings show of a key: its prefix and last four characters."""
    return f"{key[:8]}...{key[-4:]}"


def owner_of(principal: Principal) -> Owner:
    """The app and mode whose jobs the caller reads and writes."""
    return Owner(principal.app_id, principal.mode)


async def find_principal(engine: AsyncEngine, digest: bytes) -> Principal | None:
    """The caller holding the key whose hash is ``digest``; None for an unknown or revoked
    key (one autocommit round trip)."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        row = await auth_repository.find_key(conn, digest)
    if row is None or row["revoked_at"] is not None:
        return None
    return Principal(
        row["id"], row["app_id"], row["mode"], row["kind"], token_only=row["token_only"]
    )
