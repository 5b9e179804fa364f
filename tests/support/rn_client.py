"""The React Native SDK's SSE transport (``SSEService.ts`` up to v0.6.0) as Android runs it.

Android's React Native networking reads the response body through OkHttp into an 8 KiB
buffer and hands each read to JavaScript as it comes; OkHttp's chunked decoder never returns
bytes of two HTTP chunks in one read. The SDK then parses every read on its own
(``parseSSEData``): a message split across two reads is dropped (while its ``id:`` line may
still move ``lastEventId``). This client does exactly that over a raw socket: it decodes the
chunked body itself, cuts each chunk into reads of at most ``read_size`` bytes, and runs a
line-for-line port of ``parseSSEData`` on each read. It also parses the whole byte stream
correctly, so a test can compare what the SDK dispatched with what the server sent.

What it does not model: a read that ends early because only part of a chunk has arrived
yet (on a real network a chunk larger than one TCP segment can arrive in pieces).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

JOB_EVENTS = frozenset(
    {"job.sync", "job.started", "job.progress", "job.completed", "job.failed", "job.cancelled"}
)


def split_reads(chunk: bytes, read_size: int) -> list[bytes]:
    """The reads one HTTP chunk arrives in: never across chunks, at most ``read_size``."""
    return [chunk[i : i + read_size] for i in range(0, len(chunk), read_size)] or [b""]


class PieceParser:
    """``SSEService.parseSSEData``, line for line: each call sees one read and nothing else."""

    def __init__(self) -> None:
        self.last_event_id: str | None = None
        self.dispatched: list[dict[str, Any]] = []

    def parse(self, data: str) -> None:
        event: dict[str, Any] = {}
        for line in data.split("\n"):
            if line.startswith("event:"):
                event["event"] = line[6:].strip()
            elif line.startswith("data:"):
                raw = line[5:].strip()
                try:
                    event["data"] = json.loads(raw)
                except ValueError:
                    event["data"] = raw
            elif line.startswith("id:"):
                event["id"] = line[3:].strip()
                self.last_event_id = event["id"]
            elif line == "":
                if event.get("event"):
                    self.dispatched.append(event)
                    event = {}


def parse_stream(body: bytes) -> list[dict[str, Any]]:
    """Every complete message of a whole SSE body, parsed correctly (the reference)."""
    out = []
    for block in body.decode().split("\n\n")[:-1]:
        message: dict[str, Any] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                message["data"] = json.loads(value)
            elif name in ("event", "id"):
                message[name] = value
        if message.get("event"):
            out.append(message)
    return out


@dataclass
class Connection:
    """One open stream: its raw body, the reads, and what the SDK dispatched from them."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    client: RnClient
    body: bytearray = field(default_factory=bytearray)
    dispatched: list[dict[str, Any]] = field(default_factory=list)
    chunk_sizes: list[int] = field(default_factory=list)
    ended: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def _pump(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")()  # ProgressiveStringDecoder
        parser = self.client.parser
        try:
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                chunk = chunk[:-2]
                self.chunk_sizes.append(size)
                self.body += chunk
                for piece in split_reads(chunk, self.client.read_size):
                    before = len(parser.dispatched)
                    parser.parse(decoder.decode(piece))
                    for message in parser.dispatched[before:]:
                        self.dispatched.append(message)
                        self.client.apply(message)
                self._changed.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.ended = True
            self._changed.set()

    async def wait_for(self, predicate: Any, wait: float = 60) -> None:
        """Until ``predicate(self)`` holds (a liveness bound, not a speed check)."""
        async with asyncio.timeout(wait):
            while not predicate(self):
                assert not self.ended, f"stream ended early: {self.dispatched[-3:]}"
                self._changed.clear()
                await self._changed.wait()

    def has_id(self, seq: int) -> bool:
        return any(m.get("id") == str(seq) for m in self.reference())

    def reference(self) -> list[dict[str, Any]]:
        return parse_stream(bytes(self.body))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


@dataclass
class RnClient:
    """The SDK for one user: its ``lastEventId`` and its job store (keyed by ``jobId``)."""

    base_url: str
    key: str
    user_id: str
    read_size: int
    parser: PieceParser = field(default_factory=PieceParser)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def apply(self, message: dict[str, Any]) -> None:
        """What ``Seenn.setupEventListeners`` does with a dispatched event."""
        event, data = message["event"], message.get("data")
        if not isinstance(data, dict):
            return
        if event in JOB_EVENTS:
            self.jobs[data["jobId"]] = data
        elif event == "child.progress":
            parent = self.jobs.get(data.get("parentJobId"))
            if parent is not None:
                self.jobs[data["jobId"]] = {**parent, **data}

    async def connect(self, resume: bool) -> Connection:
        """``SSEService.connect``: ``lastEventId`` as a query parameter when it has one."""
        params = {"userId": self.user_id}
        if resume and self.parser.last_event_id:
            params["lastEventId"] = self.parser.last_event_id
        url = urlsplit(self.base_url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        writer.write(
            (
                f"GET /v1/sse?{urlencode(params)} HTTP/1.1\r\n"
                f"Host: {url.netloc}\r\n"
                "Accept: text/event-stream\r\n"
                "Cache-Control: no-cache\r\n"
                f"Authorization: Bearer {self.key}\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        assert status == b"200", head
        assert b"transfer-encoding: chunked" in head.lower(), head
        conn = Connection(reader, writer, self)
        conn._task = asyncio.create_task(conn._pump())
        return conn
