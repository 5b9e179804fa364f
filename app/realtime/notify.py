"""After-commit wake-ups for event subscribers."""

from __future__ import annotations

from collections.abc import Iterable


class NullNotifier:
    """Used when realtime delivery is not running: commits notify nobody."""

    def notify(self, streams: Iterable[tuple[int, int]]) -> None:
        return None
