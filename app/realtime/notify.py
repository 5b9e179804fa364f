"""After-commit wake-ups for event subscribers."""

from __future__ import annotations

from collections.abc import Iterable


class NullNotifier:
    """Used when realtime delivery is not running: commits notify nobody."""

    def notify(self, stream_ids: Iterable[int]) -> None:
        return None
