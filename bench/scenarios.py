"""The scenarios ``python -m bench.run`` measures (:class:`Bench`), their sizes, and the
fixtures they create (jobs, families) over HTTP."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.db.engine import plain_url
from bench.processes import (
    SERVER_ENV,
    CpuMeter,
    Interactive,
    children_of,
    cpu_seconds,
    loadgen,
    log,
    postmaster_pid,
    rss_kb,
    shares,
    start_echo,
)
from bench.rawhttp import Connection
from bench.report import as_ms
from bench.sse_client import Spread, scrape, server_side
from bench.stats import percentile, slope

SPREAD_PROCESSES = 4  # lean subscriber processes sharing the streams (bench/sse_client.py)


@dataclass
class Sizes:
    """How big each scenario is; ``--quick`` shrinks all of them."""

    concurrencies: list[int] = field(default_factory=lambda: [1, 16, 64])
    duration: float = 4.0
    warmup: float = 0.5
    jobs_per_user: int = 200
    complete_jobs: int = 1500
    child_counts: list[int] = field(default_factory=lambda: [1, 100, 1000])
    child_concurrency: int = 16
    batch_children: int = 1000
    sse_subscribers: list[int] = field(default_factory=lambda: [1, 100, 1000])
    sse_duration: float = 4.0
    fanout_subscribers: int = 100
    memory_steps: list[int] = field(default_factory=lambda: [0, 500, 1000, 1500, 2000])
    eta_history: int = 25  # completions of the learned type before its progress writes
    eta_rounds: int = 4  # alternating cold/learned rounds per concurrency (ABBA order)


QUICK = Sizes(
    concurrencies=[4],
    duration=0.4,
    warmup=0.1,
    jobs_per_user=20,
    complete_jobs=40,
    child_counts=[1, 10, 30],
    child_concurrency=4,
    batch_children=30,
    sse_subscribers=[1, 10],
    sse_duration=0.6,
    fanout_subscribers=5,
    memory_steps=[0, 20, 40],
    eta_history=6,
    eta_rounds=1,
)


async def _post_all(
    base: str, key: str, bodies: list[dict[str, Any]], concurrency: int = 16
) -> list[str]:
    """Create jobs in order with a few connections; returns their ids."""
    ids: list[str | None] = [None] * len(bodies)
    nxt = 0

    async def worker() -> None:
        nonlocal nxt
        conn = Connection(base, {"Authorization": f"Bearer {key}"})
        try:
            while nxt < len(bodies):
                i = nxt
                nxt += 1
                resp = await conn.request("POST", "/v1/jobs", bodies[i])
                if resp.status != 201:
                    raise RuntimeError(f"setup create failed: {resp.status} {resp.body[:300]!r}")
                ids[i] = resp.json()["id"]  # type: ignore[index]
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [i for i in ids if i is not None]


def create_jobs(base: str, key: str, users: list[str], per_user: int) -> list[str]:
    bodies = [
        {"jobType": "bench", "userId": u, "title": "bench"} for u in users for _ in range(per_user)
    ]
    return asyncio.run(_post_all(base, key, bodies))


def create_typed(base: str, key: str, job_type: str, users: list[str]) -> list[str]:
    """One job of ``job_type`` per user; returns their ids."""
    bodies = [{"jobType": job_type, "userId": u, "title": "bench"} for u in users]
    return asyncio.run(_post_all(base, key, bodies))


async def _teach(base: str, key: str, ids: list[str]) -> None:
    """Run each job through 0, 25, 50 and 75 % to completion, one after another, so its
    type has completions with progress profiles (a fitted ETA model)."""
    conn = Connection(base, {"Authorization": f"Bearer {key}"})
    try:
        for job in ids:
            for p in (0, 25, 50, 75):
                resp = await conn.request("POST", f"/v1/jobs/{job}/progress", {"progress": p})
                if resp.status != 200:
                    raise RuntimeError(f"teach progress failed: {resp.status}")
            resp = await conn.request("POST", f"/v1/jobs/{job}/complete", {})
            if resp.status != 200:
                raise RuntimeError(f"teach complete failed: {resp.status}")
    finally:
        conn.close()


def create_family(base: str, key: str, user: str, children: int) -> list[str]:
    """A parent with ``children`` children; returns the child ids."""
    parent = asyncio.run(
        _post_all(
            base,
            key,
            [
                {
                    "jobType": "fam",
                    "userId": user,
                    "title": "parent",
                    "totalChildren": children,
                    "childProgressMode": "average",
                }
            ],
            1,
        )
    )[0]
    bodies = [
        {
            "jobType": "fam-child",
            "userId": user,
            "title": f"c{i}",
            "parentJobId": parent,
            "childIndex": i,
        }
        for i in range(children)
    ]
    return asyncio.run(_post_all(base, key, bodies))


def sse_available(base: str, key: str) -> bool:
    """Whether the server has the event stream endpoint."""
    try:
        with httpx.stream(
            "GET",
            f"{base}/v1/sse",
            params={"userId": "probe"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=5,
        ) as resp:
            return resp.status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------- scenarios


class Bench:
    """One benchmark run: the processes it started and everything it measured."""

    def __init__(self, sizes: Sizes, workdir: Path, quick: bool) -> None:
        self.sizes = sizes
        self.workdir = workdir
        self.quick = quick
        self.results: dict[str, Any] = {"scenarios": {}, "limits": {}, "targets": []}

    def http(self, kind: str, concurrency: int, **extra: Any) -> dict[str, Any]:
        s = self.sizes
        spec = {
            "base": self.base,
            "key": self.key,
            "kind": kind,
            "concurrency": concurrency,
            "duration": s.duration,
            "warmup": s.warmup,
            **extra,
        }
        return self.metered(spec)

    def metered(self, spec: dict[str, Any]) -> dict[str, Any]:
        """One http load run, with the CPU each process spent per request."""
        before = self.cpu.sample()
        result = loadgen("http", spec, timeout=float(spec.get("duration", 3)) + 120)
        result.update(CpuMeter.per_request(before, self.cpu.sample(), result["total_requests"]))
        return result

    def setup(self) -> None:
        from tests.support.harness import create_key, provision_database, start_server

        log(f"provisioning PostgreSQL in {self.workdir}")
        self.database_url, self._pg_handle = provision_database(self.workdir)
        self.dsn = plain_url(self.database_url)
        self.key = asyncio.run(create_key(self.database_url, "bench_app"))
        asyncio.run(self._limit_table())
        self.server = start_server(self.database_url, self.workdir / "logs", env=SERVER_ENV)
        self.base = self.server.url
        self.echo_proc, self.echo_url = start_echo(self.workdir / "logs")
        self.cpu = CpuMeter(self.server.process.pid, postmaster_pid(self.dsn))
        log(f"server {self.base} (pid {self.server.process.pid}), echo {self.echo_url}")

    async def _limit_table(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(
                "CREATE TABLE bench_rows (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0,"
                " updated_at timestamptz)"
            )
            await conn.execute("INSERT INTO bench_rows (id) SELECT generate_series(0, 2047)")
            self.results["machine_pg"] = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()

    def teardown(self) -> None:
        for stop in (lambda: self.server.stop(), lambda: self.echo_proc.kill()):
            try:
                stop()
            except Exception:  # teardown goes on
                pass

    # -- limits
    def limits(self) -> None:
        for c in self.sizes.concurrencies:
            pg = loadgen(
                "pg",
                {
                    "dsn": self.dsn,
                    "concurrency": c,
                    "duration": self.sizes.duration,
                    "warmup": self.sizes.warmup,
                },
            )
            echo = loadgen(
                "http",
                {
                    "base": self.echo_url,
                    "kind": "echo",
                    "concurrency": c,
                    "duration": self.sizes.duration,
                    "warmup": self.sizes.warmup,
                },
            )
            self.results["limits"][str(c)] = {"pg_update": pg, "echo": echo}
            log(f"limits c={c}: pg {pg['throughput']}/s, echo {echo['throughput']}/s")

    def limit_min(self, c: int) -> float:
        lim = self.results["limits"][str(c)]
        return min(lim["pg_update"]["throughput"], lim["echo"]["throughput"])

    # -- API scenarios
    def api(self) -> None:
        s = self.sizes
        users = [f"user{i}" for i in range(50)]
        max_c = max(s.concurrencies)
        log("setup: jobs for get/list/progress")
        listed = create_jobs(self.base, self.key, users[:5], s.jobs_per_user)
        # Independent jobs: one user each, so no two writes share a job or an event stream.
        independent = create_jobs(self.base, self.key, [f"solo{i}" for i in range(max_c * 2)], 1)
        plans: dict[str, dict[str, Any]] = {
            "create": {"users": users},
            "progress": {"ids": independent},
            "get": {"ids": listed},
            "list": {"users": users[:5]},
        }
        for name, extra in plans.items():
            rows = []
            for c in s.concurrencies:
                r = self.http(name, c, **extra)
                r["ratio_to_limit"] = round(r["throughput"] / self.limit_min(c), 3)
                rows.append(r)
                log(
                    f"{name} c={c}: {r['throughput']}/s p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms"
                    f" errors {r['errors']}"
                )
            self.results["scenarios"][name] = rows
        rows = []
        for c in s.concurrencies:
            fresh = create_jobs(
                self.base, self.key, [f"done{c}_{i}" for i in range(s.complete_jobs)], 1
            )
            r = self.metered(
                {
                    "base": self.base,
                    "key": self.key,
                    "kind": "complete",
                    "concurrency": c,
                    "duration": 120,
                    "ids": fresh,
                }
            )
            r["ratio_to_limit"] = round(r["throughput"] / self.limit_min(c), 3)
            rows.append(r)
            log(f"complete c={c}: {r['throughput']}/s p50 {r['p50_ms']} ms errors {r['errors']}")
        self.results["scenarios"]["complete"] = rows

    def eta(self) -> None:
        """Progress writes on a type with history against a cold type's, in the same run.

        The learned type first gets ``eta_history`` completions with progress profiles, so
        each of its progress writes reads the key's statistics and blends the model's four
        forecasts; the cold type has no statistics row. Rounds alternate, so
        drift in the machine's load hits both alike (ABBA); the ratio is learned / cold.
        """
        s = self.sizes
        taught = create_typed(
            self.base, self.key, "bench-learned", [f"eta{i}" for i in range(s.eta_history)]
        )
        asyncio.run(_teach(self.base, self.key, taught))
        rows = []
        for c in s.concurrencies:
            users = [f"etal{c}_{i}" for i in range(c * 2)]
            learned = create_typed(self.base, self.key, "bench-learned", users)
            cold = create_typed(self.base, self.key, f"bench-cold-{c}", users)
            runs: dict[str, list[dict[str, Any]]] = {"cold": [], "learned": []}
            for i in range(s.eta_rounds):  # ABBA order: neither side always goes first
                order = ("cold", "learned") if i % 2 == 0 else ("learned", "cold")
                for name in order:
                    runs[name].append(
                        self.http("progress", c, ids=cold if name == "cold" else learned)
                    )
            row: dict[str, Any] = {"concurrency": c}
            for name, got in runs.items():
                total = sum(r["total_requests"] for r in got)
                row[name] = {
                    "throughput": round(sum(r["throughput"] for r in got) / len(got), 1),
                    "p50_ms": round(sum(r["p50_ms"] for r in got) / len(got), 3),
                    "server_cpu_ms": _weighted(got, "server_cpu_ms", total),
                    "postgres_cpu_ms": _weighted(got, "postgres_cpu_ms", total),
                    "errors": sum(r["errors"] for r in got),
                    "requests": total,
                }
            row["throughput_ratio"] = _ratio(
                row["learned"]["throughput"], row["cold"]["throughput"]
            )
            row["server_cpu_ratio"] = _ratio(
                row["learned"]["server_cpu_ms"], row["cold"]["server_cpu_ms"]
            )
            rows.append(row)
            log(
                f"eta c={c}: learned {row['learned']['throughput']}/s vs cold"
                f" {row['cold']['throughput']}/s (ratio {row['throughput_ratio']}), server CPU"
                f" {row['learned']['server_cpu_ms']} vs {row['cold']['server_cpu_ms']} ms"
                f" (ratio {row['server_cpu_ratio']})"
            )
        self.results["scenarios"]["eta_progress"] = {"history": s.eta_history, "rows": rows}

    def children(self) -> None:
        s = self.sizes
        c = s.child_concurrency
        rows = []
        for n in s.child_counts:
            child_ids = create_family(self.base, self.key, f"family{n}", n)
            r = self.http("child_progress", c, ids=child_ids)
            r["children"] = n
            r["ms_per_write"] = round(1000 / r["throughput"], 3) if r["throughput"] else None
            rows.append(r)
            log(f"child progress n={n} c={c}: {r['throughput']}/s p50 {r['p50_ms']} ms")
        self.results["scenarios"]["child_progress"] = rows

    def batch(self) -> None:
        r = loadgen(
            "batch",
            {"base": self.base, "key": self.key, "children": self.sizes.batch_children},
            timeout=180,
        )
        log(
            f"createBatch({self.sizes.batch_children}): {r.get('seconds')} s,"
            f" errors {r.get('errors')}"
        )
        self.results["scenarios"]["create_batch"] = r

    def workers(self) -> None:
        """Progress throughput of ``serve --workers 2`` vs the one-worker server, same run."""
        from tests.support.harness import start_server

        c = max(self.sizes.concurrencies)
        ids = create_jobs(self.base, self.key, [f"wk{i}" for i in range(c * 2)], 1)
        one = self.http("progress", c, ids=ids)
        two_server = start_server(
            self.database_url, self.workdir / "logs", env=SERVER_ENV, args=("--workers", "2")
        )
        try:
            before = {pid: cpu_seconds(pid) for pid in children_of(two_server.process.pid)}
            spec = {
                "base": two_server.url,
                "key": self.key,
                "kind": "progress",
                "concurrency": c,
                "duration": self.sizes.duration,
                "warmup": self.sizes.warmup,
                "ids": ids,
            }
            two = loadgen("http", spec, timeout=self.sizes.duration + 120)
            spent = sum(cpu_seconds(pid) - t for pid, t in before.items())
            if two["total_requests"]:
                two["server_cpu_ms"] = round(spent * 1000 / two["total_requests"], 3)
        finally:
            two_server.stop()
        ratio = round(two["throughput"] / one["throughput"], 3) if one["throughput"] else None
        self.results["scenarios"]["workers"] = {
            "concurrency": c,
            "one": one,
            "two": two,
            "ratio": ratio,
        }
        log(f"workers: 1 → {one['throughput']}/s, 2 → {two['throughput']}/s (ratio {ratio})")

    # -- SSE
    def api_max(self) -> float:
        return max(r["throughput"] for r in self.results["scenarios"]["progress"])

    def sse_latency(self) -> None:
        """Delivery latency per shape; on one user, with both clients in the same run."""
        s = self.sizes
        rate = max(1.0, self.api_max() / 2)
        rows = []
        for n in s.sse_subscribers:
            for shape in ("same_user", "distinct_users"):
                if shape == "distinct_users" and n == 1:
                    continue  # identical to same_user with one subscriber
                rows.append(self._sse_run(n, shape, rate))
                if shape == "same_user" and n == max(s.sse_subscribers):
                    # The same measurement with the lean client spread over processes, in
                    # the same run: what the one-process client adds to the figure above.
                    rows.append(self._sse_run(n, shape, rate, client="spread"))
        # A second replica: subscribers there, writes here (the cross-replica wake-up path).
        from tests.support.harness import start_server

        self.replica = start_server(self.database_url, self.workdir / "logs", env=SERVER_ENV)
        try:
            n = max(s.sse_subscribers)
            rows.append(self._sse_run(n, "distinct_users", rate, self.replica.url))
        finally:
            self.replica.stop()
        self.results["scenarios"]["sse_latency"] = rows

    def _sse_run(
        self,
        n: int,
        shape: str,
        rate: float,
        sub_base: str | None = None,
        client: str = "line",
    ) -> dict[str, Any]:
        """Delivery latency with ``client``: ``line`` (one process, line by line, the first
        100 streams of one user timed) or ``spread`` (``bench/sse_client.py``: lean
        subscribers over SPREAD_PROCESSES processes, every stream timed)."""
        tag = f"sse{n}{shape[0]}{'x' if sub_base else ''}{'s' if client == 'spread' else ''}"
        users = [f"{tag}_u"] * n if shape == "same_user" else [f"{tag}_u{i}" for i in range(n)]
        writer_users = sorted(set(users))
        per_user = max(1, 64 // len(writer_users))
        ids = create_jobs(self.base, self.key, writer_users, per_user)
        if client == "spread":
            return self._sse_spread_run(n, shape, rate, users, ids)
        sub = Interactive(
            "sse",
            {
                "base": sub_base or self.base,
                "key": self.key,
                "users": users,
                # distinct users: each connection sees few events, so time all of them
                "record_connections": 100 if shape == "same_user" else n,
            },
        )
        try:
            ready = sub.read_line(120)
            # (on the other replica the server measured is that one, whose pid is not here)
            writer, server, cpu = self._sse_writes(
                sub_base or self.base, ids, rate, [] if sub_base else [sub.proc.pid]
            )
            sub.send("stop")
            got = sub.result(120)
        finally:
            sub.kill()
        acked = {(j, p): t for j, p, t in writer.pop("acks")}
        # (job, progress) is unique while each job gets fewer than 99 writes (64+ jobs, a few
        # hundred writes per run), so each arrival matches the ack of its own write.
        lat = sorted(t - acked[(j, p)] for j, p, t in got.pop("arrivals") if (j, p) in acked)
        recorded_conns = min(100, n)
        per_conn = 1 if shape == "distinct_users" else recorded_conns
        expected = writer["requests"] * (per_conn if shape == "same_user" else 1)
        row = {
            "subscribers": n,
            "shape": shape + (" (other replica)" if sub_base else ""),
            "client": "line",
            "target_rate": round(rate, 1),
            "write_throughput": writer["throughput"],
            "write_errors": writer["errors"],
            "write_p50_ms": writer["p50_ms"],
            "connected": int(ready.split()[1]),
            "sse_statuses": got["statuses"],
            "events_received": got["events_received"],
            "matched": len(lat),
            "expected_recorded": expected,
            "p50_ms": as_ms(percentile(lat, 0.5)),
            "p99_ms": as_ms(percentile(lat, 0.99)),
            "max_ms": as_ms(lat[-1] if lat else None),
            "server": server,
            "cpu": cpu,
        }
        log(
            f"SSE {n} {row['shape']}: writes {writer['throughput']}/s,"
            f" delivery p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms,"
            f" matched {len(lat)}/{expected}"
        )
        return row

    def _sse_spread_run(
        self, n: int, shape: str, rate: float, users: list[str], ids: list[str]
    ) -> dict[str, Any]:
        spread = Spread(self.base, self.key, users, SPREAD_PROCESSES)
        try:
            connected = spread.ready()
            clients = [p.proc.pid for p in spread.procs]
            writer, server, cpu = self._sse_writes(self.base, ids, rate, clients)
            got = spread.finish(writer.pop("acks"))
        finally:
            spread.kill()
        row = {
            "subscribers": n,
            "shape": shape,
            "client": f"spread ({got['processes']} processes, every stream timed)",
            "target_rate": round(rate, 1),
            "write_throughput": writer["throughput"],
            "write_errors": writer["errors"],
            "write_p50_ms": writer["p50_ms"],
            "connected": connected,
            "sse_statuses": got["statuses"],
            "events_received": got["events_received"],
            "matched": got["arrivals"] - got["unmatched"],
            "expected_recorded": writer["requests"] * n,
            "p50_ms": got["p50_ms"],
            "p99_ms": got["p99_ms"],
            "max_ms": got["max_ms"],
            "last_arrival_p99_ms": got["last_arrival_p99_ms"],
            "receipt_spread_p99_ms": got["receipt_spread_p99_ms"],
            "server": server,
            "cpu": cpu,
        }
        log(
            f"SSE {n} {shape} (spread client): writes {writer['throughput']}/s,"
            f" delivery p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms;"
            f" server wake->last write p99 {server['wake_to_write_p99_ms']} ms"
        )
        return row

    def _sse_writes(
        self, sub_base: str, ids: list[str], rate: float, clients: list[int]
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, float] | None]:
        """Progress writes at ``rate`` while the subscribers listen on ``sub_base``: the
        writer's result, what the subscribers' server measured of its fan-out meanwhile
        (``server_side``), and the cores the server and the subscribers' client processes
        used (None without ``clients``)."""
        scraped = scrape(sub_base)
        since = shares(self.server.process.pid, clients) if clients else None
        writer = loadgen(
            "http",
            {
                "base": self.base,
                "key": self.key,
                "kind": "progress",
                "ids": ids,
                "concurrency": min(32, len(ids)),
                "duration": self.sizes.sse_duration,
                "rate": rate,
                "record_acks": True,
            },
        )
        cpu = since() if since else None
        return writer, server_side(scraped, scrape(sub_base)), cpu

    def fanout(self) -> None:
        """Progress throughput with no subscribers vs with subscribers on every written user."""
        s = self.sizes
        c = max(s.concurrencies)
        users = [f"fan_u{i}" for i in range(s.fanout_subscribers)]
        ids = create_jobs(self.base, self.key, users, max(1, (c * 2) // len(users) + 1))
        # Alternate rounds without and with subscribers and compare the medians: one round
        # of each is at the mercy of whatever else the shared machine does meanwhile.
        rounds: dict[str, list[dict[str, Any]]] = {"none": [], "with": []}
        events = 0
        for _ in range(1 if self.quick else 3):
            rounds["none"].append(self.http("progress", c, ids=ids))
            spec = {"base": self.base, "key": self.key, "users": users, "record_connections": 0}
            sub = Interactive("sse", spec)
            try:
                sub.read_line(120)
                rounds["with"].append(self.http("progress", c, ids=ids))
                sub.send("stop")
                events += sub.result(120)["events_received"]
            finally:
                sub.kill()
        none, active = (
            sorted(rounds[k], key=lambda r: r["throughput"])[len(rounds[k]) // 2]
            for k in ("none", "with")
        )
        ratio = round(active["throughput"] / none["throughput"], 3) if none["throughput"] else None
        self.results["scenarios"]["fanout"] = {
            "concurrency": c,
            "subscribers": len(users),
            "rounds": len(rounds["none"]),
            "no_subscribers": none,
            "with_subscribers": active,
            "throughputs": {k: [r["throughput"] for r in v] for k, v in rounds.items()},
            "events_received": events,
            "ratio": ratio,
        }
        log(
            f"fan-out: {none['throughput']}/s alone, {active['throughput']}/s with "
            f"{len(users)} subscribers (medians of {len(rounds['none'])} rounds, ratio {ratio});"
            f" events {events}"
        )

    def memory(self) -> None:
        """RSS of a fresh server process as idle SSE connections grow; slope = bytes/connection.

        A fresh process, so that memory freed by the earlier scenarios does not absorb the
        first connections and flatten the slope.
        """
        from tests.support.harness import start_server

        server = start_server(self.database_url, self.workdir / "logs", env=SERVER_ENV)
        pid = server.process.pid
        idle = Interactive("idle", {"base": server.url, "key": self.key, "user_prefix": "idle_u"})
        points = []
        try:
            for n in self.sizes.memory_steps:
                idle.send(f"open {n}")
                opened = int(idle.read_line(120).split()[1])
                time.sleep(1.0 if not self.quick else 0.2)  # let the server settle its buffers
                points.append({"connections": opened, "rss_kb": rss_kb(pid)})
            idle.send("quit")
            res = idle.result(60)
        finally:
            idle.kill()
            server.stop()
        k = slope([p["connections"] for p in points], [p["rss_kb"] for p in points])
        self.results["scenarios"]["sse_memory"] = {
            "points": points,
            "failed": res["failed"],
            "kb_per_connection": None if k is None else round(k, 2),
        }
        log(f"SSE memory: {points}, slope {k} kB/connection")


def _weighted(runs: list[dict[str, Any]], name: str, total: int) -> float | None:
    """A per-request figure over several runs, weighted by each run's requests."""
    known = [(r[name], r["total_requests"]) for r in runs if r.get(name) is not None]
    weight = sum(n for _, n in known)
    if not known or not weight or not total:
        return None
    return round(sum(v * n for v, n in known) / weight, 4)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None
