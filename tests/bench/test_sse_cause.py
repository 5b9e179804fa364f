"""The report says why an SSE p99 missed its goal from what the same run measured."""

from __future__ import annotations

from bench.report import sse_cause


def _row(p99: float, done: float | None, queued: int = 0, fanout: float = 5.0) -> dict[str, object]:
    return {
        "p99_ms": p99,
        "server": {
            "wake_to_write_p99_ms": done,
            "fanout_p99_ms": fanout,
            "events_queued": queued,
            "events_delivered": 1000,
        },
        "cpu": {"server_cores": 0.6, "client_cores": 0.9, "server_runqueue_share": 0.25},
    }


def test_a_met_p99_has_no_cause() -> None:
    assert sse_cause(_row(49.9, 120.0)) is None


def test_a_server_that_writes_late_is_the_cause() -> None:
    cause = sse_cause(_row(300.0, 100.0, fanout=60.0))
    assert cause is not None and cause.startswith("the server, mostly its writes to every")
    assert "write p99 100.0 ms" in cause and "stream p99 60.0 ms" in cause and "25%" in cause


def test_a_server_that_reads_late_is_told_apart_from_its_fan_out() -> None:
    cause = sse_cause(_row(300.0, 400.0, fanout=50.0))
    assert cause is not None and cause.startswith("the server, mostly waiting to read")


def test_a_server_that_reads_and_writes_in_time_puts_the_rest_on_the_client_side() -> None:
    cause = sse_cause(_row(300.0, 12.5, fanout=2.5))
    assert cause is not None and cause.startswith("not the server")
    assert "write p99 12.5 ms" in cause and "other 288 ms" in cause
    assert "streams' own tasks" not in cause


def test_events_left_to_the_streams_are_named() -> None:
    cause = sse_cause(_row(300.0, 10.0, queued=200))
    assert cause is not None and "200 of 1000 deliveries" in cause
    assert "the server made no direct write" in (sse_cause(_row(60.0, None)) or "")
