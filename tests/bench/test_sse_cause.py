"""The report says why an SSE p99 missed its goal from what the same run measured."""

from __future__ import annotations

from bench.report import sse_cause


def _row(p99: float, server_p99: float | None, queued: int = 0) -> dict[str, object]:
    return {
        "p99_ms": p99,
        "server": {
            "wake_to_write_p99_ms": server_p99,
            "events_queued": queued,
            "events_delivered": 1000,
        },
        "cpu": {"server_cores": 0.6, "client_cores": 0.9, "server_runqueue_share": 0.25},
    }


def test_a_met_p99_has_no_cause() -> None:
    assert sse_cause(_row(49.9, 120.0)) is None


def test_a_server_that_writes_late_is_the_cause() -> None:
    cause = sse_cause(_row(300.0, 80.0))
    assert cause is not None and cause.startswith("the server's fan-out")
    assert "p99 80.0 ms" in cause and "25%" in cause


def test_a_server_that_writes_in_time_puts_the_rest_on_the_client_side() -> None:
    cause = sse_cause(_row(300.0, 12.5))
    assert cause is not None and cause.startswith("not the server's fan-out")
    assert "within 12.5 ms" in cause and "other 288 ms" in cause
    assert "streams' own tasks" not in cause


def test_events_left_to_the_streams_are_named() -> None:
    cause = sse_cause(_row(300.0, 12.5, queued=200))
    assert cause is not None and "200 of 1000 deliveries" in cause
    assert "the server made no direct write" in (sse_cause(_row(60.0, None)) or "")
