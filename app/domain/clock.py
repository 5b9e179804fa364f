"""The server's clock."""

from __future__ import annotations

from datetime import UTC, datetime


def now_ms() -> datetime:
    """The current time truncated to milliseconds, so stored and shown values agree."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
