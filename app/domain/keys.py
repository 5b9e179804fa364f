"""API keys: ``sk_``/``pk_`` + ``live``/``test`` + 32 random characters, stored as SHA-256."""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from dataclasses import dataclass

KEY_RE = re.compile(r"^(sk|pk)_(live|test)_([A-Za-z0-9]{32})$")
_ALPHABET = string.ascii_letters + string.digits
KIND_PREFIX = {"secret": "sk", "public": "pk"}


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: an app, a mode, and whether it may write."""

    key_id: str
    app_id: str
    mode: str
    kind: str

    @property
    def can_write(self) -> bool:
        return self.kind == "secret"


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
