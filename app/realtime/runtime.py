"""Starts and stops this process's realtime machinery (hub, listener, notifier, pruner)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from app.realtime.hub import Hub, PgNotifier
from app.realtime.retention import start_pruner, stop_pruner
from app.settings import Settings


@dataclass
class Realtime:
    hub: Hub
    notifier: PgNotifier
    pruner: asyncio.Task[None]


def start_realtime(engine: Any, url: str, settings: Settings) -> Realtime:
    """One hub (one LISTEN connection) per process; the notifier also wakes it directly."""
    hub = Hub(engine, settings.listen_database_url or url, settings.sse_poll_interval_seconds)
    hub.start()
    notifier = PgNotifier(engine, hub)
    pruner = start_pruner(engine, settings.event_retention_hours)
    return Realtime(hub, notifier, pruner)


async def stop_realtime(rt: Realtime) -> None:
    rt.hub.shutdown_event.set()
    await rt.notifier.close()
    await stop_pruner(rt.pruner)
    await rt.hub.stop()
