"""The parent rules of CONTRACT.md ("Where the seeds disagree", 1 and 2), written again from
the text and independently of ``app.domain.rules``: tests compare the server with this.

- Status: while any child is not terminal, ``pending`` if nothing started, else ``running``;
  once every child is terminal, ``completed`` if at least one completed, ``failed`` if none
  did.
- Progress, ``average``: round(sum of child progress / totalChildren), a completed child
  counting 100, a failed one its last progress, a pending or not-yet-created one 0.
  ``sequential``: round(completed / totalChildren x 100). Rounding is JavaScript's
  ``Math.round`` (halves go up).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from fractions import Fraction

TERMINAL = {"completed", "failed", "cancelled"}


def js_round(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def parent_state(mode: str, total: int, children: Iterable[tuple[str, int]]) -> dict[str, object]:
    """What a parent must show, given its created children's ``(status, progress)``."""
    children = list(children)
    assert len(children) <= total
    count = Counter(status for status, _ in children)
    terminal = sum(count[s] for s in TERMINAL)
    if terminal == total:
        # The contract has no exception for "every child cancelled": that parent failed.
        status = "completed" if count["completed"] else "failed"
    elif terminal or count["running"]:
        status = "running"
    else:
        status = "pending"
    if mode == "sequential":
        progress = js_round(Fraction(count["completed"] * 100, total))
    else:
        points = sum(100 if s == "completed" else p for s, p in children)
        progress = js_round(Fraction(points, total))
    return {
        "status": status,
        "progress": progress,
        "children": {
            "total": total,
            "completed": count["completed"],
            "failed": count["failed"],
            "running": count["running"],
            "cancelled": count["cancelled"],
            "pending": total - len(children) + count["pending"],
        },
    }
