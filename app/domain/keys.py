"""API keys: ``sk_``/``pk_`` + ``live``/``test`` + 32 random characters, stored as SHA-256."""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import time
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


class KeyCache:
    """A short-lived cache of key lookups, so most requests skip one database round trip."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[float, Principal | None]] = {}

    def get(self, key_hash: bytes) -> tuple[bool, Principal | None]:
        hit = self._entries.get(key_hash)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def put(self, key_hash: bytes, principal: Principal | None) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key_hash] = (time.monotonic() + self.ttl, principal)
