"""Unit tests of the parent aggregate rules (no I/O)."""

import pytest

from app.domain.rules import ChildCounts, parent_progress, parent_status, round_half_up


def counts_after(total: int, children: list[tuple[str, int]]) -> ChildCounts:
    counts = ChildCounts(total=total)
    for status, progress in children:
        counts = counts.moved(("pending", 0), ("running", 0))
        counts = counts.moved(("running", 0), (status, progress))
    return counts


@pytest.mark.parametrize(
    ("children", "status"),
    [
        ([("completed", 100)] * 5, "completed"),
        ([("completed", 100)] * 4 + [("failed", 30)], "completed"),
        ([("failed", 0)] * 5, "failed"),
        ([("completed", 100)] * 2 + [("running", 10)], "running"),
        ([("failed", 10)], "running"),
        ([], "pending"),
        ([("cancelled", 0)] * 5, "failed"),
        ([("cancelled", 0)] * 4 + [("failed", 0)], "failed"),
    ],
)
def test_parent_status_table(children, status):
    assert parent_status(counts_after(5, children)) == status


def test_docs_seventy_percent_example():
    counts = counts_after(5, [("completed", 100)] * 3 + [("failed", 50), ("failed", 0)])
    assert parent_progress("average", counts) == 70
    assert parent_progress("weighted", counts) == 70
    assert parent_progress("sequential", counts) == 60


def test_pending_counts_children_not_created_yet():
    counts = ChildCounts(total=5).moved(None, ("running", 20))
    assert (counts.pending, counts.running, counts.progress_sum) == (4, 1, 20)


def test_round_half_up_matches_javascript_math_round():
    assert [round_half_up(n, 2) for n in (1, 3, 5)] == [1, 2, 3]
    assert round_half_up(1, 3) == 0 and round_half_up(2, 3) == 1


def test_each_move_updates_exactly_the_counters_it_touches():
    counts = ChildCounts(total=4).moved(None, ("running", 30))
    assert (counts.running, counts.pending, counts.progress_sum) == (1, 3, 30)
    counts = counts.moved(("running", 30), ("running", 60))  # progress only
    assert (counts.running, counts.progress_sum) == (1, 60)
    counts = counts.moved(("running", 60), ("completed", 60))  # a completed child counts 100
    assert (counts.running, counts.completed, counts.progress_sum) == (0, 1, 100)
    counts = counts.moved(None, ("failed", 20)).moved(None, ("cancelled", 5))
    assert (counts.failed, counts.cancelled, counts.pending, counts.terminal) == (1, 1, 1, 3)
    assert counts.progress_sum == 125
    counts = counts.moved(("failed", 20), ("running", 20))  # never happens; the algebra holds
    assert (counts.failed, counts.running, counts.progress_sum) == (0, 1, 125)


def test_a_completed_child_contributes_100_whatever_its_last_progress():
    from app.domain.rules import child_contribution

    assert child_contribution("completed", 40) == 100
    assert [child_contribution(s, 40) for s in ("running", "failed", "cancelled")] == [40] * 3


def test_terminal_statuses():
    from app.domain.rules import is_terminal

    assert [is_terminal(s) for s in ("completed", "failed", "cancelled")] == [True] * 3
    assert [is_terminal(s) for s in ("pending", "running")] == [False, False]
