"""A reconnecting SSE subscriber that behaves like the SDK's transport: it remembers the
last ``id:`` it saw and resumes with ``Last-Event-ID`` after any disconnect or error."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx
import orjson

# events from the log (with ids); the rest is chatter
from tests.support.sse_client import LOG_EVENTS


@dataclass
class Received:
    id: str
    event: str
    job_id: str


@dataclass
class Subscriber:
    """Subscribe to ``/v1/sse?userId=...`` until cancelled, reconnecting as the SDK does."""

    base_url: str
    key: str
    user_id: str
    events: list[Received] = field(default_factory=list)
    last_id: str | None = None
    connects: int = 0
    refused: list[int] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        timeout = httpx.Timeout(10, read=60)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=timeout) as client:
            while True:
                try:
                    await self._listen(client)
                except (httpx.TransportError, httpx.StreamError):
                    pass
                await asyncio.sleep(0.2)

    async def _listen(self, client: httpx.AsyncClient) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "Accept": "text/event-stream"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = self.last_id
        params = {"userId": self.user_id}
        async with client.stream("GET", "/v1/sse", params=params, headers=headers) as response:
            if response.status_code != 200:
                self.refused.append(response.status_code)
                await response.aread()
                return
            self.connects += 1
            self.connected.set()
            message: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line == "":
                    self._dispatch(message)
                    message = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    message[name] = value[1:] if value.startswith(" ") else value

    def _dispatch(self, message: dict[str, str]) -> None:
        event, event_id = message.get("event"), message.get("id")
        if event in LOG_EVENTS and event_id:
            data = orjson.loads(message.get("data", "{}"))
            self.events.append(Received(event_id, event, data.get("jobId") or data.get("id")))
            self.last_id = event_id
