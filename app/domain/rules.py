"""The job state machine and parent aggregate rules (plain functions, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

PENDING, RUNNING, COMPLETED, FAILED, CANCELLED = (
    "pending",
    "running",
    "completed",
    "failed",
    "cancelled",
)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})


def is_terminal(status: str) -> bool:
    return status in TERMINAL


def round_half_up(numerator: int, denominator: int) -> int:
    """``Math.round(numerator / denominator)`` for non-negative integers, exactly."""
    return (2 * numerator + denominator) // (2 * denominator)


def child_contribution(status: str, progress: int) -> int:
    """What a child adds to its parent's progress sum: 100 once completed, else its progress."""
    return 100 if status == COMPLETED else progress


@dataclass(frozen=True, slots=True)
class ChildCounts:
    """A parent's counters. ``pending`` includes children not created yet."""

    total: int
    completed: int = 0
    failed: int = 0
    running: int = 0
    cancelled: int = 0
    progress_sum: int = 0

    @property
    def pending(self) -> int:
        return self.total - self.completed - self.failed - self.running - self.cancelled

    @property
    def terminal(self) -> int:
        return self.completed + self.failed + self.cancelled

    def moved(self, before: tuple[str, int] | None, after: tuple[str, int]) -> ChildCounts:
        """The counters after one child moved from ``before`` to ``after`` (status, progress)."""
        counts = {
            COMPLETED: self.completed,
            FAILED: self.failed,
            RUNNING: self.running,
            CANCELLED: self.cancelled,
        }
        progress_sum = self.progress_sum
        if before is not None:
            if before[0] in counts:
                counts[before[0]] -= 1
            progress_sum -= child_contribution(*before)
        if after[0] in counts:
            counts[after[0]] += 1
        progress_sum += child_contribution(*after)
        return ChildCounts(
            total=self.total,
            completed=counts[COMPLETED],
            failed=counts[FAILED],
            running=counts[RUNNING],
            cancelled=counts[CANCELLED],
            progress_sum=progress_sum,
        )


def parent_progress(mode: str, counts: ChildCounts) -> int:
    """Parent progress: ``sequential`` counts completed children, others average progress."""
    if mode == "sequential":
        return round_half_up(counts.completed * 100, counts.total)
    return round_half_up(counts.progress_sum, counts.total)


def parent_status(counts: ChildCounts) -> str:
    """Documented partial-success rules.

    While any child is unfinished the parent is ``pending`` (nothing started) or ``running``.
    Once all are terminal it is ``completed`` if one completed, ``failed`` if none did,
    including when every child was cancelled (the contract has no exception for that; a
    parent is ``cancelled`` only when it is cancelled itself).
    """
    if counts.terminal >= counts.total:
        return COMPLETED if counts.completed else FAILED
    if counts.running or counts.terminal:
        return RUNNING
    return PENDING
