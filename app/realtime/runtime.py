"""Starts and stops this process's realtime machinery (hub, listener, notifier)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.observability import Metrics
from app.realtime.hub import Hub, PgNotifier
from app.settings import Settings


@dataclass
class Realtime:
    hub: Hub
    notifier: PgNotifier


def start_realtime(engine: Any, url: str, settings: Settings, metrics: Metrics) -> Realtime:
    """One hub (one LISTEN connection) per process; the notifier also wakes it directly."""
    hub = Hub(
        engine,
        settings.listen_database_url or url,
        settings.sse_poll_interval_seconds,
        settings.sse_heartbeat_seconds,
        settings.sse_max_event_bytes,
    )
    hub.read_lag = metrics.notification_lag
    hub.events_delivered = metrics.events_delivered
    hub.fanout_time = metrics.sse_fanout
    hub.wake_to_write = metrics.sse_wake_to_write
    hub.events_queued = metrics.sse_events_queued
    hub.start()
    notifier = PgNotifier(engine, hub)
    return Realtime(hub, notifier)


def end_streams(rt: Realtime) -> None:
    """Ask every SSE stream of this process to send ``connection.idle`` (reason shutdown)
    and close; streams opened from now on close right after their first messages."""
    rt.hub.shutdown_event.set()


async def stop_realtime(rt: Realtime) -> None:
    end_streams(rt)
    await rt.notifier.close()
    await rt.hub.stop()
