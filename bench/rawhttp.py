"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for load generation.

httpx spends several times more CPU per request than the server under test; on a 2-core
machine that would measure the client, not the server. This client does the bare minimum:
one request at a time per connection, Content-Length bodies, and line-by-line SSE streams.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson


@dataclass
class Response:
    """Status and body of one answered request."""

    status: int
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


class Connection:
    """One keep-alive connection to ``base_url`` (``http://127.0.0.1:PORT``)."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, limit=1 << 20
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _head(self, method: str, path: str, length: int | None, extra: str = "") -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self._extra}{extra}"
        if length is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {length}\r\n"
        return (head + "\r\n").encode()

    async def request(self, method: str, path: str, body: object = None) -> Response:
        """Send one request and read its whole answer (reconnects if the server closed)."""
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        data = orjson.dumps(body) if body is not None else b""
        self.writer.write(self._head(method, path, len(data) if body is not None else None) + data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        payload = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return Response(status, payload)

    async def stream(self, path: str) -> int:
        """Start a GET whose answer is an event stream; returns the status."""
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(self._head("GET", path, None, "Accept: text/event-stream\r\n"))
        head = await self.reader.readuntil(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1])

    async def read_line(self) -> bytes:
        """One line of the streamed body (chunked framing lines included; callers skip them)."""
        assert self.reader is not None
        return await self.reader.readline()
