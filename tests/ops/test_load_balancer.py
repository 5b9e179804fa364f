"""Two replicas behind nginx, configured by the repository's deploy/nginx/seenn.conf.

One PostgreSQL, two ``seenn-server serve`` processes and a real nginx on loopback ports:
writes and reads agree whichever replica serves them, SSE through nginx sees writes made on
the other replica, and a client whose replica stops resumes on the other one through nginx
with ``Last-Event-ID``, missing nothing and receiving nothing twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.harness import (
    NginxProcess,
    ServerProcess,
    nginx_binary,
    start_nginx,
    start_server,
)
from tests.support.helpers import assert_error, create_job, progress
from tests.support.sse_client import open_sse
from tests.support.sse_subscriber import Subscriber

pytestmark = pytest.mark.skipif(
    nginx_binary() is None,
    reason="nginx is not installed (scripts/test.sh installs Debian's nginx when run as root)",
)

# Test-only: nginx names the replica that served each response, so a test knows which
# replica holds an SSE stream. Production (deploy/nginx/compose/server.conf) has no such line.
UPSTREAM_HEADER = "x-upstream-addr"
TRACE = ("add_header X-Upstream-Addr $upstream_addr always;",)
REPLICA_ENV = {"SEENN_GRACEFUL_SHUTDOWN_SECONDS": "5"}


@dataclass
class Balanced:
    """Two replicas on one database and nginx in front of them."""

    replicas: list[ServerProcess]
    nginx: NginxProcess

    def by_upstream(self, upstream_addr: str) -> ServerProcess:
        (server,) = [r for r in self.replicas if r.url == f"http://{upstream_addr}"]
        return server

    def other(self, server: ServerProcess) -> ServerProcess:
        (other,) = [r for r in self.replicas if r is not server]
        return other


@pytest.fixture
def balanced(database_url: str, tmp_path: Path) -> Iterator[Balanced]:
    replicas: list[ServerProcess] = []
    nginx: NginxProcess | None = None
    try:
        for i in range(2):
            replicas.append(start_server(database_url, tmp_path / f"replica-{i}", env=REPLICA_ENV))
        upstreams = [r.url.removeprefix("http://") for r in replicas]
        nginx = start_nginx(tmp_path / "nginx", upstreams, server_lines=TRACE)
        yield Balanced(replicas, nginx)
    finally:  # also on failure: nothing outlives the test
        if nginx is not None:
            nginx.stop()
        for r in replicas:
            r.stop()


def api(base_url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"{base_url}/v1", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


async def test_writes_and_reads_agree_across_replicas_and_nginx(balanced, keys) -> None:
    a, b = balanced.replicas
    async with (
        api(balanced.nginx.url, keys.secret) as lb,
        api(a.url, keys.secret) as on_a,
        api(b.url, keys.secret) as on_b,
    ):
        job = await create_job(lb, userId="u_lb")
        served = set()
        for value in range(1, 7):  # nginx spreads these over both replicas
            r = await lb.post(f"/jobs/{job['id']}/progress", json={"progress": value})
            assert r.status_code == 200, r.text
            served.add(r.headers[UPSTREAM_HEADER])
        assert served == {a.url.removeprefix("http://"), b.url.removeprefix("http://")}

        for writer, reader in ((on_a, on_b), (on_b, on_a)):
            value = (await progress(writer, job["id"], 10 + len(served)))["progress"]
            served.add(str(value))
            assert (await reader.get(f"/jobs/{job['id']}")).json()["progress"] == value
            for _ in range(4):  # through nginx, whichever replica answers
                assert (await lb.get(f"/jobs/{job['id']}")).json()["progress"] == value
        listed = [
            (await c.get("/jobs", params={"userId": "u_lb"})).json() for c in (lb, on_a, on_b)
        ]
        assert listed[0] == listed[1] == listed[2] and listed[0]["jobs"][0]["id"] == job["id"]

        assert (await lb.get(f"{balanced.nginx.url}/readyz")).json()["status"] == "ready"
        health = await lb.get(f"{balanced.nginx.url}/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert UPSTREAM_HEADER not in health.headers  # answered by nginx itself
        # The replicas' Prometheus endpoint is not exposed through the public entry point.
        hidden = await lb.get(f"{balanced.nginx.url}/metrics")
        assert_error(hidden, 404, "NOT_FOUND")
        assert (await on_a.get(f"{balanced.replicas[0].url}/metrics")).status_code == 200

        # nginx's body limit is the server's (1 MiB), and its refusal is the API's envelope.
        too_big = b'{"progress": 1, "message": "' + b"x" * 1_048_576 + b'"}'
        refused = await lb.post(
            f"/jobs/{job['id']}/progress",
            content=too_big,
            headers={"Content-Type": "application/json"},
        )
        assert assert_error(refused, 413, "PAYLOAD_TOO_LARGE")["details"] == {"maxBytes": 1048576}


async def test_sse_through_nginx_receives_the_writes_of_the_other_replica_in_order(
    balanced, keys
) -> None:
    """Delivery across replicas, checked for content and order; its speed is measured in
    bench/ (a shared CI machine makes any fixed bound here flaky)."""
    headers = {"Authorization": f"Bearer {keys.public}"}
    async with open_sse(balanced.nginx.url, {"userId": "u_lb_sse"}, headers) as stream:
        assert (await stream.next()).event == "connected"
        holder = balanced.by_upstream(stream.response.headers[UPSTREAM_HEADER])
        async with api(balanced.other(holder).url, keys.secret) as writer:
            job = await create_job(writer, userId="u_lb_sse")
            for value in (10, 20, 30, 40, 50):
                await progress(writer, job["id"], value)
                got = await stream.next(wait=30, skip=("heartbeat", "job.started"))
                assert got is not None and got.event == "job.progress", got
                assert got.data["progress"] == value


@dataclass
class TracedSubscriber(Subscriber):
    """The SDK-like reconnecting subscriber, also noting which replica served each
    connection and every ``job.progress`` value it received (repeats included)."""

    upstreams: list[str] = field(default_factory=list)
    progress: list[int] = field(default_factory=list)

    async def _listen(self, client: httpx.AsyncClient) -> None:
        client.event_hooks["response"] = [self._note_upstream]
        await super()._listen(client)

    async def _note_upstream(self, response: httpx.Response) -> None:
        if response.status_code == 200:
            self.upstreams.append(response.headers.get(UPSTREAM_HEADER, "?"))

    def _dispatch(self, message: dict[str, str]) -> None:
        super()._dispatch(message)
        if message.get("event") == "job.progress" and message.get("id"):
            self.progress.append(orjson.loads(message["data"])["progress"])


async def _until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@dataclass
class ProgressWriter:
    """Writes progress 1, 2, 3, ... through nginx, as the SDK would: a POST that got no
    answer is retried with the same Idempotency-Key, so it takes effect once."""

    client: httpx.AsyncClient
    job_id: str
    written: list[int] = field(default_factory=list)
    retries: int = 0
    stop_at: int = 99

    async def run(self) -> None:
        for value in range(1, 100):
            if value > self.stop_at:
                return
            await self._write(value)
            self.written.append(value)
            await asyncio.sleep(0.05)

    async def _write(self, value: int) -> None:
        headers = {"Idempotency-Key": f"{self.job_id}-progress-{value}"}
        for _ in range(50):
            try:
                r = await self.client.post(
                    f"/jobs/{self.job_id}/progress", json={"progress": value}, headers=headers
                )
                if r.status_code == 200:
                    return
                assert r.status_code >= 500, r.text
            except httpx.TransportError:
                pass
            self.retries += 1
            await asyncio.sleep(0.1)
        raise AssertionError(f"progress {value} was never accepted")


async def test_sse_client_resumes_on_the_other_replica_when_its_replica_stops(
    balanced, keys
) -> None:
    async with api(balanced.nginx.url, keys.secret) as lb:
        job = await create_job(lb, userId="u_failover")
        sub = TracedSubscriber(balanced.nginx.url, keys.public, "u_failover")
        listening = asyncio.create_task(sub.run())
        writer = ProgressWriter(lb, job["id"])
        writing: asyncio.Task[None] | None = None
        try:
            await asyncio.wait_for(sub.connected.wait(), 10)
            holder = balanced.by_upstream(sub.upstreams[0])
            survivor = balanced.other(holder)
            writing = asyncio.create_task(writer.run())
            await _until(lambda: len(sub.progress) >= 15, 20, "events before the stop")

            await asyncio.to_thread(holder.stop)  # SIGTERM, as a rolling update does
            await _until(lambda: sub.connects >= 2, 15, "the reconnect through nginx")
            writer.stop_at = len(writer.written) + 20  # keep writing after the failover
            await asyncio.wait_for(writing, 30)
            await _until(lambda: len(sub.progress) >= len(writer.written), 10, "every event")
            # A sentinel after the last write: once it arrived, a duplicate of an earlier
            # event would have arrived before it (one stream, in order).
            sentinel = len(writer.written) + 1
            await writer._write(sentinel)
            writer.written.append(sentinel)
            await _until(lambda: sentinel in sub.progress, 30, "the sentinel")
        finally:
            if writing is not None:
                writing.cancel()
            listening.cancel()
            await asyncio.gather(listening, *([writing] if writing else []), return_exceptions=True)

        survivor_addr = survivor.url.removeprefix("http://")
        assert sub.upstreams[0] != survivor_addr and set(sub.upstreams[1:]) == {survivor_addr}
        assert writer.written == list(range(1, len(writer.written) + 1))
        assert len(writer.written) >= 35
        assert sub.progress == writer.written  # in order, nothing lost, nothing twice
        ids = [int(e.id) for e in sub.events]
        assert ids == sorted(set(ids))

        # With no replica left, nginx's own error is the API's envelope, retryable.
        balanced.other(holder).stop()
        down = await lb.get(f"/jobs/{job['id']}")
        assert_error(down, 503, "SERVICE_UNAVAILABLE")
        assert down.headers["retry-after"] == "1"
