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
        ([("cancelled", 0)] * 5, "cancelled"),
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
