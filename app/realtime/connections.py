"""This replica's count of open SSE connections per key and per user, and the slot each
stream holds (taken at connect by ``app/api/sse_limits.py``)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

REPLACED = "replaced"  # the connection.idle reason of a stream closed for a newer one


class ConnectionLimiter:
    """Counts open connections per key id and per (key id, user id).

    A public key is shared by every install of an app, so the per-key cap is a guard for the
    replica, set high, and a connection over it is refused. The per-user cap never refuses:
    a user at the cap gets the new stream and the oldest one is closed (``replaced``).
    Streams of phones that dropped off the network hold slots for minutes, and a mobile
    client that gets a non-200 at connect stops reconnecting for good.
    """

    def __init__(self, max_per_key: int, max_per_user: int | None = None) -> None:
        self.max_per_key = max_per_key
        self.max_per_user = max_per_user if max_per_user is not None else max_per_key
        self._open: dict[str, int] = {}
        self._held: dict[str, deque[SseSlot]] = {}  # per user scope, oldest first

    @staticmethod
    def _user_scope(key_id: str, user_id: str) -> str:
        return f"{key_id}\x00{user_id}"

    def acquire(self, key_id: str, user_id: str | None = None) -> SseSlot | None:
        """Take a slot, replacing the user's oldest stream if the user is at the cap;
        None (and nothing taken or replaced) when the key's cap is reached."""
        held = self._held.get(self._user_scope(key_id, user_id)) if user_id is not None else None
        at_user_cap = held is not None and len(held) >= self.max_per_user
        # Replacing keeps the key's count as is, so only a new slot can exceed its cap.
        if not at_user_cap and self._open.get(key_id, 0) >= self.max_per_key:
            return None
        while held and len(held) >= self.max_per_user:
            held[0].replace()
        slot = SseSlot(self, key_id, user_id)
        self._open[key_id] = self._open.get(key_id, 0) + 1
        if user_id is not None:
            self._held.setdefault(self._user_scope(key_id, user_id), deque()).append(slot)
        return slot

    def _release(self, slot: SseSlot) -> None:
        count = self._open.get(slot.key_id, 0) - 1
        if count > 0:
            self._open[slot.key_id] = count
        else:
            self._open.pop(slot.key_id, None)
        if slot.user_id is not None:
            scope = self._user_scope(slot.key_id, slot.user_id)
            held = self._held.get(scope)
            if held is not None:
                held.remove(slot)
                if not held:
                    del self._held[scope]

    def open_connections(self, key_id: str, user_id: str | None = None) -> int:
        if user_id is None:
            return self._open.get(key_id, 0)
        return len(self._held.get(self._user_scope(key_id, user_id), ()))


class SseSlot:
    """One held SSE slot. ``release`` is idempotent, so a stream may call it from its
    generator's ``finally`` and from the response's background task, whichever runs."""

    def __init__(self, limiter: ConnectionLimiter, key_id: str, user_id: str | None) -> None:
        self._limiter = limiter
        self.key_id = key_id
        self.user_id = user_id
        self._held = True
        self.replaced = False
        self._on_replaced: Callable[[str], None] | None = None

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limiter._release(self)

    def replace(self) -> None:
        """Give the slot to a newer stream of the same user and tell this stream to end."""
        self.release()
        self.replaced = True
        if self._on_replaced is not None:
            self._on_replaced(REPLACED)

    def on_replaced(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` when replaced (at once if that already happened)."""
        self._on_replaced = callback
        if self.replaced:
            callback(REPLACED)
