"""A small SSE reader for tests: opens ``/v1/sse`` and queues parsed messages."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

LOG_EVENTS = frozenset(
    {
        "job.started",
        "job.progress",
        "job.completed",
        "job.failed",
        "job.cancelled",
        "child.progress",
        "parent.updated",
    }
)


@dataclass
class Message:
    event: str
    id: str | None
    data: Any
    at: float


@dataclass
class SseStream:
    """One open SSE connection; ``messages`` fills in the background until closed."""

    response: httpx.Response
    messages: asyncio.Queue[Message | None] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    async def _pump(self) -> None:
        msg: dict[str, str] = {}
        loop = asyncio.get_running_loop()
        try:
            async for line in self.response.aiter_lines():
                if line == "":
                    if "event" in msg:
                        data = orjson.loads(msg["data"]) if "data" in msg else None
                        await self.messages.put(
                            Message(msg["event"], msg.get("id"), data, loop.time())
                        )
                    msg = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    assert name not in msg, f"repeated field {name}"
                    msg[name] = value[1:] if value.startswith(" ") else value
        except (httpx.TransportError, httpx.StreamError):
            pass
        finally:
            await self.messages.put(None)

    async def next(
        self, wait: float = 10, skip: tuple[str, ...] = ("heartbeat",)
    ) -> Message | None:
        """The next message not in ``skip`` within ``wait`` seconds in all (skipped messages
        do not restart the wait); None once the server closed the stream."""
        async with asyncio.timeout(wait):
            while True:
                m = await self.messages.get()
                if m is None or m.event not in skip:
                    return m

    async def take(self, n: int, wait: float = 30) -> list[Message]:
        """The next ``n`` log events (job.sync, connected and heartbeats skipped), all within
        ``wait`` seconds."""
        out: list[Message] = []
        async with asyncio.timeout(wait):
            while len(out) < n:
                m = await self.next(wait, skip=("heartbeat", "connected", "job.sync"))
                assert m is not None, f"stream closed after {out}"
                out.append(m)
        return out


@contextlib.asynccontextmanager
async def open_sse(base_url: str, params: dict[str, str], headers: dict[str, str] | None = None):
    """Open ``/v1/sse`` (status must be 200) and yield an :class:`SseStream`."""
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=60)) as c:
        async with c.stream("GET", "/v1/sse", params=params, headers=headers or {}) as r:
            assert r.status_code == 200, (await r.aread()).decode()
            stream = SseStream(r)
            stream.task = asyncio.create_task(stream._pump())
            try:
                yield stream
            finally:
                stream.task.cancel()
                with contextlib.suppress(BaseException):
                    await stream.task
