"""A lean SSE subscriber client: many streams in one process on plain asyncio protocols.

The line-by-line client of ``bench.loadgen``'s ``sse`` mode (StreamReader, a readline and a
JSON parse per line, all subscribers in one process) costs about as much CPU per delivered
event as the server; at 1,000 subscribers of one user it is what a latency figure measures.
This one timestamps each network read once, finds the job events in it with one regex, and
parses an event's JSON only the first time this process sees its id. Several processes
(``spread``) share the subscribers, so no single event loop holds them all.

Latency is measured as in the ``sse`` mode: from the write's answer read by the writer (one
monotonic clock, system-wide on Linux) to the event read by a subscriber, for EVERY
subscriber (not a sample). After ``stop`` the orchestrator sends the writer's acks; each
process returns a histogram of its latencies in 0.1 ms bins and, per event, its first and
last arrival, so the report can merge processes exactly.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import orjson

# One job event: its id line, its name and its data line (chunk-size lines sit before "id:").
_EVENT = re.compile(rb"id: (\d+)\nevent: (job\.[a-z]+)\ndata: ([^\n]*)\n")
BIN = 1e-4  # seconds per histogram bin


class _Stream(asyncio.Protocol):
    """One ``GET /v1/sse`` connection; arrivals go to the shared ``Sink``."""

    def __init__(self, sink: Sink, request: bytes) -> None:
        self.sink = sink
        self.request = request
        self.head = b""
        self.status = 0
        self.connected = asyncio.get_running_loop().create_future()
        self.rest = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        t = time.monotonic()
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self.head.split(b" ", 2)[1])
            data = self.head[end + 4 :]
            self.head = b""
            if not self.connected.done():
                self.connected.set_result(self.status)
        buf = self.rest + data if self.rest else data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self.rest = buf
            return
        self.rest = buf[cut + 2 :]
        self.sink.arrived(buf[: cut + 2], t)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_result(self.status)


class Sink:
    """Every arrival of this process: per event id, the times it reached each stream."""

    def __init__(self) -> None:
        self.times: dict[int, list[float]] = {}
        self.keys: dict[int, tuple[str, int]] = {}  # event id -> (job id, progress)
        self.received = 0

    def arrived(self, messages: bytes, t: float) -> None:
        for match in _EVENT.finditer(messages):
            if match.group(2) != b"job.progress":
                continue
            seq = int(match.group(1))
            times = self.times.get(seq)
            if times is None:
                data = orjson.loads(match.group(3))
                self.keys[seq] = (data.get("jobId") or data.get("id"), data.get("progress"))
                self.times[seq] = times = []
            times.append(t)
            self.received += 1

    def summary(self, acks: dict[tuple[str, int], float]) -> dict[str, Any]:
        """Latency histogram (0.1 ms bins) and, per matched event, first/last arrival."""
        hist: Counter[int] = Counter()
        spread: dict[str, list[float]] = {}
        unmatched = 0
        for seq, times in self.times.items():
            acked = acks.get(self.keys[seq])
            if acked is None:
                unmatched += len(times)
                continue
            for t in times:
                hist[round((t - acked) / BIN)] += 1
            spread[str(seq)] = [acked, min(times), max(times), len(times)]
        return {
            "events_received": self.received,
            "unmatched": unmatched,
            "histogram": {str(k): v for k, v in hist.items()},
            "per_event": spread,
        }


async def run_spread(spec: dict[str, Any]) -> dict[str, Any]:
    """Open ``users`` streams here, print ``ready N``; on ``stop``, then a line of acks
    (``[[job, progress, t], ...]``), return the summary."""
    parts = urlsplit(spec["base"])
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    sink = Sink()
    streams: list[_Stream] = []
    auth = f"Authorization: Bearer {spec['key']}\r\n" if spec.get("key") else ""
    users: list[str] = spec["users"]
    for start in range(0, len(users), 100):
        batch = []
        for user in users[start : start + 100]:
            request = (
                f"GET /v1/sse?userId={user} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}"
                "Accept: text/event-stream\r\n\r\n"
            ).encode()
            batch.append(loop.create_connection(lambda r=request: _Stream(sink, r), host, port))
        for _transport, proto in await asyncio.gather(*batch):
            streams.append(proto)
    statuses = Counter(await asyncio.gather(*(s.connected for s in streams)))
    print(f"ready {statuses.get(200, 0)}", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # stop
    await asyncio.sleep(float(spec.get("drain_seconds", 0.5)))
    for s in streams:
        if s.transport is not None:
            s.transport.close()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    acks = {(j, p): t for j, p, t in orjson.loads(line)}
    result = sink.summary(acks)
    result.update(subscribers=len(users), statuses={str(k): v for k, v in statuses.items()})
    return result


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One view of several processes' summaries: latency percentiles over every arrival,
    and per event the spread from its first to its last arrival over all processes."""
    hist: Counter[int] = Counter()
    per_event: dict[str, list[float]] = {}
    for r in results:
        hist.update({int(k): v for k, v in r["histogram"].items()})
        for seq, (acked, first, last, n) in r["per_event"].items():
            seen = per_event.get(seq)
            if seen is None:
                per_event[seq] = [acked, first, last, n]
            else:
                seen[1], seen[2], seen[3] = min(seen[1], first), max(seen[2], last), seen[3] + n
    total = sum(hist.values())

    def pct(q: float) -> float | None:
        if not total:
            return None
        rank = max(1, round(q * total + 0.5))
        seen = 0
        for k in sorted(hist):
            seen += hist[k]
            if seen >= rank:
                return round(k * BIN * 1000, 1)
        return None

    spreads = sorted((last - first) for _, first, last, _ in per_event.values())
    lasts = sorted((last - acked) for acked, _, last, _ in per_event.values())

    def ms(values: list[float], q: float) -> float | None:
        if not values:
            return None
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)

    return {
        "arrivals": total,
        "events_received": sum(r["events_received"] for r in results),
        "unmatched": sum(r["unmatched"] for r in results),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "events": len(per_event),
        "last_arrival_p50_ms": ms(lasts, 0.5),
        "last_arrival_p99_ms": ms(lasts, 0.99),
        "receipt_spread_p50_ms": ms(spreads, 0.5),
        "receipt_spread_p99_ms": ms(spreads, 0.99),
    }


# ------------------------------------------------------------- orchestration (bench side)

SERVER_SERIES = (
    "seenn_sse_fanout_seconds",
    "seenn_sse_wake_to_write_seconds",
    "seenn_sse_events_queued_total",
    "seenn_events_delivered_total",
    "seenn_notification_lag_seconds",
)


def scrape(base: str) -> dict[str, float]:
    """The server's SSE fan-out series from ``/metrics`` (buckets, sums, counts, counters)."""
    import urllib.request

    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(SERVER_SERIES):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _bucket_quantile(
    before: dict[str, float], after: dict[str, float], name: str, q: float
) -> float | None:
    """``histogram_quantile`` over the buckets that grew between two scrapes (seconds)."""
    prefix = f'{name}_bucket{{le="'
    bounds = []
    for key, value in after.items():
        if key.startswith(prefix):
            le = key[len(prefix) : -2]
            bounds.append(
                (float("inf") if le == "+Inf" else float(le), value - before.get(key, 0.0))
            )
    bounds.sort()
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    lower, seen = 0.0, 0.0
    for upper, count in bounds:
        if count >= rank:
            if upper == float("inf"):
                return lower
            inside = count - seen
            return lower + (upper - lower) * ((rank - seen) / inside if inside else 1.0)
        lower, seen = upper, count
    return None


def server_side(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What the server measured between two scrapes: its fan-out per log read, from its
    first wake-up to its last direct write (an upper bound while writes keep coming: the
    first wake-up after a read may be for an event that read already had), how late it
    read each event, and how many live events it queued instead of writing them."""

    def grew(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    def ms(name: str, q: float) -> float | None:
        v = _bucket_quantile(before, after, name, q)
        return None if v is None else round(v * 1000, 2)

    reads = grew("seenn_sse_fanout_seconds_count")
    return {
        "fanouts": int(reads),
        "fanout_mean_ms": round(grew("seenn_sse_fanout_seconds_sum") / reads * 1000, 2)
        if reads
        else None,
        "fanout_p99_ms": ms("seenn_sse_fanout_seconds", 0.99),
        # from the START of the write's transaction (so the write's own time too) to the read
        "read_lag_p50_ms": ms("seenn_notification_lag_seconds", 0.5),
        "read_lag_p99_ms": ms("seenn_notification_lag_seconds", 0.99),
        "wake_to_write_p50_ms": ms("seenn_sse_wake_to_write_seconds", 0.5),
        "wake_to_write_p99_ms": ms("seenn_sse_wake_to_write_seconds", 0.99),
        "events_delivered": int(grew("seenn_events_delivered_total")),
        "events_queued": int(grew("seenn_sse_events_queued_total")),
    }


class Spread:
    """``processes`` lean subscriber processes sharing ``users`` (the bench side)."""

    def __init__(self, base: str, key: str, users: list[str], processes: int) -> None:
        from bench.processes import Interactive

        self.procs = [
            Interactive("sse_spread", {"base": base, "key": key, "users": users[i::processes]})
            for i in range(processes)
            if users[i::processes]
        ]

    def ready(self, timeout: float = 120) -> int:
        return sum(int(p.read_line(timeout).split()[1]) for p in self.procs)

    def finish(self, acks: list[list[Any]]) -> dict[str, Any]:
        for p in self.procs:
            p.send("stop")
        line = orjson.dumps(acks).decode()
        for p in self.procs:
            p.send(line)
        results = [p.result(120) for p in self.procs]
        merged = merge(results)
        statuses: Counter[str] = Counter()
        for r in results:
            statuses.update(r["statuses"])
        merged.update(processes=len(self.procs), statuses=dict(statuses))
        return merged

    def kill(self) -> None:
        for p in self.procs:
            p.kill()
