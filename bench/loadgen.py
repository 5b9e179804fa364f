"""The load generator: a separate process, never the server's own.

``python -m bench.loadgen MODE`` reads a JSON spec on stdin and prints one JSON result line
on stdout. Modes:

- ``http``: closed-loop requests at a fixed concurrency (optionally paced to a rate) for a
  duration or until a finite list of jobs is used up; latency from send to full answer.
- ``pg``: raw asyncpg single-row ``UPDATE`` autocommits at a fixed concurrency (a limit).
- ``batch``: the Node SDK's ``createBatch``: one parent, every child POST at once, one GET.
- ``sse``: subscribers on ``GET /v1/sse``; prints ``ready`` once all are connected, records
  when each ``job.progress`` event arrives, and stops on a line ``stop`` on stdin.
- ``sse_spread``: lean subscribers (``bench/sse_client.py``), one of several processes.
- ``idle``: idle SSE connections opened on command (``open N``) for the memory scenario.
"""

from __future__ import annotations

import asyncio
import os
import select
import sys
import time
from collections import Counter
from typing import Any

import orjson

from bench.rawhttp import Connection
from bench.sse_client import run_spread
from bench.stats import summarize


def _auth(spec: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {spec['key']}"} if spec.get("key") else {}


class RequestPlan:
    """Builds request number ``i`` of worker ``w`` for one scenario kind."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.kind: str = spec["kind"]
        self.ids: list[str] = spec.get("ids", [])
        self.users: list[str] = spec.get("users", ["bench_user"])
        self.concurrency: int = spec["concurrency"]
        self._next = 0
        self._progress: Counter[str] = Counter()

    def next(self, worker: int, i: int) -> tuple[str, str, Any, Any] | None:
        """(method, path, body, record key) or None when a finite plan is used up."""
        k = self.kind
        if k == "create":
            user = self.users[(worker + i) % len(self.users)]
            return "POST", "/v1/jobs", {"jobType": "bench", "userId": user, "title": "bench"}, None
        if k in ("progress", "child_progress"):
            if k == "progress":
                # independent jobs: each worker owns its own slice of the jobs
                mine = self.ids[worker :: self.concurrency] or self.ids
                job = mine[i % len(mine)]
            else:
                job = self.ids[self._next % len(self.ids)]
                self._next += 1
            self._progress[job] = self._progress[job] % 99 + 1
            p = self._progress[job]
            return "POST", f"/v1/jobs/{job}/progress", {"progress": p}, (job, p)
        if k == "get":
            job = self.ids[(worker * 7919 + i) % len(self.ids)]
            return "GET", f"/v1/jobs/{job}", None, None
        if k == "list":
            user = self.users[(worker + i) % len(self.users)]
            return "GET", f"/v1/jobs?userId={user}&limit=20", None, None
        if k == "complete":
            if self._next >= len(self.ids):
                return None
            job = self.ids[self._next]
            self._next += 1
            return "POST", f"/v1/jobs/{job}/complete", {"message": "done"}, None
        if k == "echo":
            return "POST", "/echo", {"progress": i % 100, "message": "bench"}, None
        raise ValueError(f"unknown kind {k}")


async def run_http(spec: dict[str, Any]) -> dict[str, Any]:
    """Closed-loop load; returns throughput, latency percentiles and status counts."""
    plan = RequestPlan(spec)
    concurrency = spec["concurrency"]
    duration = float(spec.get("duration", 3.0))
    warmup = float(spec.get("warmup", 0.0))
    rate = spec.get("rate")  # requests/s across all workers, or None for as fast as possible
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    acks: list[tuple[str, int, float]] = []  # (job, progress, monotonic time of the answer)
    start = time.monotonic()
    measure_from = start + warmup
    stop_at = measure_from + duration
    slot = 0
    total = 0  # warm-up included: what the CPU accounting divides by

    async def worker(w: int) -> None:
        nonlocal slot, total
        conn = Connection(spec["base"], _auth(spec))
        i = 0
        try:
            while True:
                now = time.monotonic()
                if now >= stop_at:
                    return
                if rate:
                    due = start + slot / rate
                    slot += 1
                    if due >= stop_at:
                        return
                    if due > now:
                        await asyncio.sleep(due - now)
                req = plan.next(w, i)
                i += 1
                if req is None:
                    return
                method, path, body, key = req
                t0 = time.monotonic()
                try:
                    resp = await conn.request(method, path, body)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    conn.close()
                    statuses[0] += 1
                    if len(errors) < 5:
                        errors.append(repr(exc))
                    continue
                t1 = time.monotonic()
                total += 1
                if t0 >= measure_from:
                    statuses[resp.status] += 1
                    latencies.append(t1 - t0)
                    if resp.status >= 300 and len(errors) < 5:
                        errors.append(f"{resp.status} {resp.body[:200]!r}")
                    if key is not None and spec.get("record_acks") and resp.status < 300:
                        acks.append((key[0], key[1], t1))
        finally:
            conn.close()

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = min(time.monotonic(), stop_at) - measure_from
    result = summarize(latencies, elapsed)
    result.update(
        concurrency=concurrency,
        total_requests=total,
        statuses={str(k): v for k, v in statuses.items()},
        errors=sum(v for k, v in statuses.items() if k == 0 or k >= 300),
        error_samples=errors,
    )
    if spec.get("record_acks"):
        result["acks"] = acks
    return result


async def run_pg(spec: dict[str, Any]) -> dict[str, Any]:
    """Single-row UPDATE autocommits: the database's own ceiling for one-row writes."""
    import asyncpg

    concurrency = spec["concurrency"]
    conns = [await asyncpg.connect(spec["dsn"]) for _ in range(concurrency)]
    latencies: list[float] = []
    warmup = float(spec.get("warmup", 0.0))
    start = time.monotonic()
    measure_from = start + warmup
    stop_at = measure_from + float(spec.get("duration", 3.0))
    sql = "UPDATE bench_rows SET n = n + 1, updated_at = now() WHERE id = $1"

    async def worker(w: int) -> None:
        conn = conns[w]
        stmt = await conn.prepare(sql)
        while True:
            t0 = time.monotonic()
            if t0 >= stop_at:
                return
            await stmt.fetch(w)
            if t0 >= measure_from:
                latencies.append(time.monotonic() - t0)

    try:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    finally:
        for c in conns:
            await c.close()
    result = summarize(latencies, min(time.monotonic(), stop_at) - measure_from)
    result.update(concurrency=concurrency, errors=0)
    return result


async def run_batch(spec: dict[str, Any]) -> dict[str, Any]:
    """createBatch as the Node SDK does it: parent, then all children at once, then GET."""
    n = spec["children"]
    user = spec.get("user", "batch_user")
    headers = _auth(spec)
    parent_conn = Connection(spec["base"], headers)
    t0 = time.monotonic()
    parent = await parent_conn.request(
        "POST",
        "/v1/jobs",
        {
            "jobType": "batch",
            "userId": user,
            "title": "batch",
            "totalChildren": n,
            "childProgressMode": "average",
        },
    )
    if parent.status != 201:
        return {"error": f"parent create failed: {parent.status} {parent.body[:200]!r}"}
    parent_id = parent.json()["id"]  # type: ignore[index]
    statuses: Counter[int] = Counter()
    samples: list[str] = []

    async def child(i: int) -> None:
        conn = Connection(spec["base"], headers)  # fetch in Node opens a socket per request
        try:
            resp = await conn.request(
                "POST",
                "/v1/jobs",
                {
                    "jobType": "batch-child",
                    "userId": user,
                    "title": f"child {i}",
                    "parentJobId": parent_id,
                    "childIndex": i,
                },
            )
            statuses[resp.status] += 1
            if resp.status != 201 and len(samples) < 5:
                samples.append(f"{resp.status} {resp.body[:200]!r}")
        except (OSError, asyncio.IncompleteReadError) as exc:
            statuses[0] += 1
            if len(samples) < 5:
                samples.append(repr(exc))
        finally:
            conn.close()

    await asyncio.gather(*(child(i) for i in range(n)))
    parent_conn.close()  # idle past the server's keep-alive timeout: the SDK's GET is fresh too
    final = await parent_conn.request("GET", f"/v1/jobs/{parent_id}")
    elapsed = time.monotonic() - t0
    parent_conn.close()
    body = final.json() if final.status == 200 else {}
    # Then every child completed at once (a worker pool finishing the batch together).
    listing = await parent_conn.request("GET", f"/v1/jobs/{parent_id}/children")
    parent_conn.close()
    ids: list[str | None] = [None] * n
    listed = listing.json() if listing.status == 200 else {}
    for c in listed.get("children", []):  # type: ignore[union-attr]
        ids[c["childIndex"]] = c["id"]
    done: Counter[int] = Counter()

    async def finish(job_id: str) -> None:
        conn = Connection(spec["base"], headers)
        try:
            resp = await conn.request("POST", f"/v1/jobs/{job_id}/complete", {})
            done[resp.status] += 1
            if resp.status != 200 and len(samples) < 10:
                samples.append(f"complete {resp.status} {resp.body[:200]!r}")
        except (OSError, asyncio.IncompleteReadError) as exc:
            done[0] += 1
            if len(samples) < 10:
                samples.append(repr(exc))
        finally:
            conn.close()

    t1 = time.monotonic()
    await asyncio.gather(*(finish(i) for i in ids if i is not None))
    complete_seconds = time.monotonic() - t1
    after = await parent_conn.request("GET", f"/v1/jobs/{parent_id}")
    parent_conn.close()
    after_body = after.json() if after.status == 200 else {}
    return {
        "children": n,
        "seconds": elapsed,
        "complete_seconds": complete_seconds,
        "complete_statuses": {str(k): v for k, v in done.items()},
        "complete_errors": sum(v for k, v in done.items() if k != 200)
        + sum(1 for i in ids if i is None),
        "parent_status_after": after_body.get("status"),  # type: ignore[union-attr]
        "statuses": {str(k): v for k, v in statuses.items()},
        "errors": sum(v for k, v in statuses.items() if k != 201),
        "error_samples": samples,
        "parent_children_total": (body.get("children") or {}).get("total"),  # type: ignore[union-attr]
        "parent_status": body.get("status"),  # type: ignore[union-attr]
    }


async def _subscribe(spec: dict[str, Any], user: str) -> tuple[Connection, int]:
    conn = Connection(spec["base"], _auth(spec))
    status = await conn.stream(f"/v1/sse?userId={user}")
    return conn, status


async def run_sse(spec: dict[str, Any]) -> dict[str, Any]:
    """Subscribers that timestamp every job.progress event; stop on ``stop`` from stdin."""
    users: list[str] = spec["users"]
    record_on = int(spec.get("record_connections", 100))
    opened: list[tuple[Connection, int]] = []
    for batch_start in range(0, len(users), 100):
        opened += await asyncio.gather(
            *(_subscribe(spec, u) for u in users[batch_start : batch_start + 100])
        )
    statuses = Counter(s for _, s in opened)
    arrivals: list[tuple[str, int, float]] = []
    received = 0
    connected = asyncio.Event()
    ready_count = 0
    if not opened:
        connected.set()

    def mark_connected() -> None:
        nonlocal ready_count
        ready_count += 1
        if ready_count == len(opened):
            connected.set()

    async def counter(conn: Connection) -> None:
        """An unrecorded subscriber: reads in large chunks and only counts progress events,
        so that 1,000 subscribers do not make this process the bottleneck."""
        nonlocal received
        assert conn.reader is not None
        first = True
        while data := await conn.reader.read(1 << 16):
            if first and b"event:" in data:
                first = False
                mark_connected()
            received += data.count(b"event: job.progress") + data.count(b"event:job.progress")

    async def reader(idx: int, conn: Connection) -> None:
        nonlocal received
        if idx >= record_on:
            return await counter(conn)
        event = b""
        got_connected = False
        while True:
            line = await conn.read_line()
            if not line:
                return
            if line.startswith(b"event:"):
                event = line[6:].strip()
                if not got_connected:
                    got_connected = True
                    mark_connected()
            elif line.startswith(b"data:") and event == b"job.progress":
                received += 1
                if idx < record_on:
                    t = time.monotonic()
                    data = orjson.loads(line[5:])
                    arrivals.append((data.get("jobId") or data.get("id"), data.get("progress"), t))

    tasks = [asyncio.create_task(reader(i, c)) for i, (c, s) in enumerate(opened) if s == 200]
    try:
        await asyncio.wait_for(connected.wait(), 30)
    except TimeoutError:
        pass
    print(f"ready {ready_count}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    await asyncio.sleep(float(spec.get("drain_seconds", 0.5)))
    for t in tasks:
        t.cancel()
    for c, _ in opened:
        c.close()
    return {
        "subscribers": len(users),
        "statuses": {str(k): v for k, v in statuses.items()},
        "connected": ready_count,
        "events_received": received,
        "arrivals": arrivals,
    }


async def run_idle(spec: dict[str, Any]) -> dict[str, Any]:
    """Idle SSE connections, opened in steps on command: ``open N`` → ``ok N``."""
    conns: list[Connection] = []
    drains: list[asyncio.Task[None]] = []
    failed: Counter[int] = Counter()
    loop = asyncio.get_running_loop()

    async def drain(conn: Connection) -> None:
        while await conn.read_line():
            pass

    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "quit":
            break
        target = int(line[1])
        while len(conns) < target:
            step = min(100, target - len(conns))
            opened = await asyncio.gather(
                *(_subscribe(spec, f"{spec['user_prefix']}{len(conns) + j}") for j in range(step)),
                return_exceptions=True,
            )
            for item in opened:
                if isinstance(item, BaseException):
                    failed[0] += 1
                    continue
                conn, status = item
                conns.append(conn)
                if status != 200:
                    failed[status] += 1
                drains.append(asyncio.create_task(drain(conn)))
        print(f"ok {len(conns)}", flush=True)
    for t in drains:
        t.cancel()
    for c in conns:
        c.close()
    return {"opened": len(conns), "failed": {str(k): v for k, v in failed.items()}}


MODES = {
    "http": run_http,
    "pg": run_pg,
    "batch": run_batch,
    "sse": run_sse,
    "sse_spread": run_spread,
    "idle": run_idle,
}


def main() -> None:
    mode = sys.argv[1]
    spec = orjson.loads(sys.argv[2]) if len(sys.argv) > 2 else orjson.loads(sys.stdin.readline())
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # the plain loop still works, only slower
        pass
    result = asyncio.run(MODES[mode](spec))
    # The event loop may leave stdout non-blocking; a multi-megabyte result line written to
    # a full pipe would then be cut short (it was, at 128 KiB, with SSE arrivals): write it
    # whole, waiting for the pipe whenever it is full.
    sys.stdout.flush()
    fd = sys.stdout.fileno()
    os.set_blocking(fd, True)
    rest = memoryview(b"RESULT " + orjson.dumps(result) + b"\n")
    while rest:
        try:
            rest = rest[os.write(fd, rest) :]
        except BlockingIOError:
            select.select([], [fd], [])


if __name__ == "__main__":
    main()
