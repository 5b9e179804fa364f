"""Run every benchmark scenario against a real PostgreSQL and real server processes.

    .venv/bin/python -m bench.run [--quick] [--out bench/results]

Starts PostgreSQL (``SEENN_TEST_DATABASE_URL``'s server, else the embedded one), one
``seenn-server serve`` process and one bare ASGI echo process, measures the limits
(raw asyncpg UPDATE, echo) and every API scenario with load from separate processes
(``bench.loadgen``), and writes ``results.json``, ``results.md`` and PNG plots to ``--out``.
Loopback only; every step is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from app.db.engine import plain_url
from bench.rawhttp import Connection
from bench.stats import percentile, slope

ROOT = Path(__file__).resolve().parent.parent


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

SERVER_ENV = {
    # A benchmark measures throughput, not the per-key limiter (its own tests cover it).
    "SEENN_RATE_LIMIT_ENABLED": "false",
    "SEENN_SSE_MAX_CONNECTIONS_PER_KEY": "100000",
    "SEENN_SSE_MAX_CONNECTIONS_PER_USER": "100000",
    "SEENN_AUTH_CACHE_SECONDS": "5",  # the deployment default (the test harness uses 0)
    "SEENN_LOG_LEVEL": "warning",
    "SEENN_SWEEP_INTERVAL_SECONDS": "0",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


def loadgen(mode: str, spec: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """Run one load-generator process to completion and return its result."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", mode],
        input=orjson.dumps(spec) + b"\n",
        capture_output=True,
        cwd=ROOT,
        timeout=timeout,
    )
    for line in proc.stdout.decode().splitlines():
        if line.startswith("RESULT "):
            return orjson.loads(line[7:])  # type: ignore[no-any-return]
    raise RuntimeError(
        f"loadgen {mode} failed ({proc.returncode}):\n{proc.stderr.decode()[-3000:]}"
    )


class Interactive:
    """A load-generator process driven line by line over stdin/stdout (SSE, idle)."""

    def __init__(self, mode: str, spec: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", mode],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.send(orjson.dumps(spec).decode())

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def read_line(self, timeout: float = 60) -> str:
        """The next stdout line; raises when the process dies or stays silent too long."""
        assert self.proc.stdout is not None
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            raise RuntimeError("load generator did not answer in time")
        line = self.proc.stdout.readline().decode()
        if not line:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise RuntimeError(f"load generator exited:\n{err[-3000:]}")
        return line.strip()

    def result(self, timeout: float = 60) -> dict[str, Any]:
        while True:
            line = self.read_line(timeout)
            if line.startswith("RESULT "):
                self.proc.wait(10)
                return orjson.loads(line[7:])  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def start_echo(log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The bare echo app on the server's uvicorn settings (auto loop/http, 1 worker)."""
    from tests.harness import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.echo:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--proxy-headers",
            "--forwarded-allow-ips",
            "127.0.0.1",
        ],
        cwd=ROOT,
        stdout=open(log_dir / "echo.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.post(f"{url}/echo", json={}, timeout=1)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("echo server did not start")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, reaped: bool = False) -> float:
    """User + system CPU time a process has used (0 when it is gone); with ``reaped``, the
    time of its exited, waited-for children instead."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    if reaped:
        return (int(fields[13]) + int(fields[14])) / CLOCK_TICKS  # cutime, cstime
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (PostgreSQL backends of a postmaster)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def postmaster_pid(dsn: str) -> int | None:
    """The PostgreSQL postmaster's pid, when it runs on this machine: the parent of the
    backend serving one connection (wherever its data directory is)."""

    async def parent_of_backend() -> int:
        conn = await asyncpg.connect(dsn)
        try:  # read while the backend lives: it exits with the connection
            pid = int(await conn.fetchval("SELECT pg_backend_pid()"))
            return _parent_pid(pid)
        finally:
            await conn.close()

    try:
        return asyncio.run(parent_of_backend())
    except (OSError, IndexError, ValueError):
        return None  # a remote server: its CPU is not measured


class CpuMeter:
    """CPU used by the server, by PostgreSQL (when embedded here) and by load generators."""

    def __init__(self, server_pid: int, postmaster_pid: int | None) -> None:
        self.server_pid, self.postmaster_pid = server_pid, postmaster_pid

    def sample(self) -> dict[str, float]:
        import resource

        pg = 0.0
        if self.postmaster_pid:
            # live backends, plus the time of exited ones (the postmaster's reaped children)
            pg = sum(
                cpu_seconds(p) for p in [self.postmaster_pid, *children_of(self.postmaster_pid)]
            )
            pg += cpu_seconds(self.postmaster_pid, reaped=True)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "server": cpu_seconds(self.server_pid),
            "postgres": pg,
            "loadgen": ru.ru_utime + ru.ru_stime,
        }

    @staticmethod
    def per_request(
        before: dict[str, float], after: dict[str, float], requests: int
    ) -> dict[str, float]:
        """CPU milliseconds per request for each party."""
        if not requests:
            return {}
        return {f"{k}_cpu_ms": round((after[k] - before[k]) * 1000 / requests, 3) for k in before}


def rss_kb(pid: int) -> int:
    """Resident memory of a process (VmRSS, kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# ---------------------------------------------------------------- setup helpers


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
        from tests.harness import create_key, provision_database, start_server

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
        from tests.harness import start_server

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
        s = self.sizes
        rate = max(1.0, self.api_max() / 2)
        rows = []
        for n in s.sse_subscribers:
            for shape in ("same_user", "distinct_users"):
                if shape == "distinct_users" and n == 1:
                    continue  # identical to same_user with one subscriber
                rows.append(self._sse_run(n, shape, rate))
        # A second replica: subscribers there, writes here (the cross-replica wake-up path).
        from tests.harness import start_server

        self.replica = start_server(self.database_url, self.workdir / "logs", env=SERVER_ENV)
        try:
            n = max(s.sse_subscribers)
            rows.append(self._sse_run(n, "distinct_users", rate, self.replica.url))
        finally:
            self.replica.stop()
        self.results["scenarios"]["sse_latency"] = rows

    def _sse_run(
        self, n: int, shape: str, rate: float, sub_base: str | None = None
    ) -> dict[str, Any]:
        s = self.sizes
        tag = f"sse{n}{shape[0]}{'x' if sub_base else ''}"
        users = [f"{tag}_u"] * n if shape == "same_user" else [f"{tag}_u{i}" for i in range(n)]
        writer_users = sorted(set(users))
        per_user = max(1, 64 // len(writer_users))
        ids = create_jobs(self.base, self.key, writer_users, per_user)
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
            writer = loadgen(
                "http",
                {
                    "base": self.base,
                    "key": self.key,
                    "kind": "progress",
                    "ids": ids,
                    "concurrency": min(32, len(ids)),
                    "duration": s.sse_duration,
                    "rate": rate,
                    "record_acks": True,
                },
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
            "target_rate": round(rate, 1),
            "write_throughput": writer["throughput"],
            "write_errors": writer["errors"],
            "write_p50_ms": writer["p50_ms"],
            "connected": int(ready.split()[1]),
            "sse_statuses": got["statuses"],
            "events_received": got["events_received"],
            "matched": len(lat),
            "expected_recorded": expected,
            "p50_ms": _ms(percentile(lat, 0.5)),
            "p99_ms": _ms(percentile(lat, 0.99)),
            "max_ms": _ms(lat[-1] if lat else None),
        }
        log(
            f"SSE {n} {row['shape']}: writes {writer['throughput']}/s,"
            f" delivery p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms,"
            f" matched {len(lat)}/{expected}"
        )
        return row

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
        from tests.harness import start_server

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


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 3)


# ---------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1048576, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against what was measured (None when not measured)."""
    sc = results["scenarios"]
    out: list[dict[str, Any]] = []

    def add(name: str, value: Any, goal: str, met: bool | None) -> None:
        out.append({"target": name, "measured": value, "goal": goal, "met": met})

    if "progress" in sc:
        for r in sc["progress"]:
            if r["concurrency"] == 1 and len(sc["progress"]) > 1:
                continue  # the goals are at 16 and 64 concurrent
            add(
                f"progress / min(asyncpg UPDATE, echo), concurrency {r['concurrency']}",
                r["ratio_to_limit"],
                ">= 0.5",
                r["ratio_to_limit"] >= 0.5,
            )
    for r in sc.get("get", []):
        echo = results["limits"][str(r["concurrency"])]["echo"]["throughput"]
        ratio = round(r["throughput"] / echo, 3) if echo else None
        if r["concurrency"] == 1 and len(sc["get"]) > 1:
            continue
        add(
            f"GET of a job / echo, concurrency {r['concurrency']}",
            ratio,
            ">= 0.5",
            ratio is not None and ratio >= 0.5,
        )
    bounds = {"progress": 0.4, "get": 0.25, "complete": 0.6}
    for name, bound in bounds.items():
        rows = [r for r in sc.get(name, []) if r.get("server_cpu_ms") is not None]
        if rows:
            best = min(r["server_cpu_ms"] for r in rows)
            add(
                f"server CPU ms per {name} (lowest over concurrencies)",
                best,
                f"<= {bound}",
                best <= bound,
            )
    if "child_progress" in sc and len(sc["child_progress"]) > 1:
        first, last = sc["child_progress"][0], sc["child_progress"][-1]
        r = round(last["ms_per_write"] / first["ms_per_write"], 3)
        add(
            f"child write cost, {last['children']} vs {first['children']} children",
            r,
            "<= 1.2",
            r <= 1.2,
        )
    if "create_batch" in sc:
        b = sc["create_batch"]
        add(
            f"createBatch({b.get('children')}): create all, seconds, errors",
            f"{b.get('seconds', 0):.2f} s, {b.get('errors')} errors",
            "< 2 s, 0 errors",
            b.get("seconds", 99) < 2 and b.get("errors") == 0,
        )
        if "complete_seconds" in b:
            add(
                f"createBatch({b.get('children')}): complete all at once, seconds, errors",
                f"{b['complete_seconds']:.2f} s, {b.get('complete_errors')} errors",
                "< 2 s, 0 errors",
                b["complete_seconds"] < 2 and b.get("complete_errors") == 0,
            )
    for row in sc.get("eta_progress", {}).get("rows", []):
        add(
            f"progress on a learned ETA type / a cold type, concurrency {row['concurrency']}:"
            " throughput, server CPU per write",
            f"{row['throughput_ratio']}, {row['server_cpu_ratio']}",
            "no measurable drop (throughput >= 0.95, CPU <= 1.05)",
            row["throughput_ratio"] is not None
            and row["server_cpu_ratio"] is not None
            and row["throughput_ratio"] >= 0.95
            and row["server_cpu_ratio"] <= 1.05,
        )
    if "workers" in sc:
        w = sc["workers"]
        add(
            f"progress with 2 workers / 1 worker, concurrency {w['concurrency']}",
            w["ratio"],
            "measured (2 cores shared with PostgreSQL and the load)",
            None,
        )
    for row in sc.get("sse_latency", []):
        if row["p50_ms"] is None:
            add(
                f"SSE delivery, {row['subscribers']} {row['shape']}",
                "no events",
                "p50 < 20, p99 < 50 ms",
                False,
            )
            continue
        add(
            f"SSE delivery p50/p99 ms, {row['subscribers']} subscribers ({row['shape']})",
            f"{row['p50_ms']:.1f} / {row['p99_ms']:.1f}",
            "p50 < 20, p99 < 50 ms",
            row["p50_ms"] < 20 and row["p99_ms"] < 50,
        )
    if "fanout" in sc and sc["fanout"]["ratio"] is not None:
        f = sc["fanout"]
        add("write throughput with SSE fan-out / without", f["ratio"], ">= 0.8", f["ratio"] >= 0.8)
    if "sse_memory" in sc and sc["sse_memory"]["kb_per_connection"] is not None:
        k = sc["sse_memory"]["kb_per_connection"]
        add("RSS per idle SSE connection (kB)", k, "< 50", k < 50)
    return out


def write_markdown(results: dict[str, Any], path: Path) -> None:
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Run {results['finished_at']} ({'quick' if results['quick'] else 'full'} mode) on "
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, PostgreSQL {results.get('machine_pg')}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average'])}. Server, PostgreSQL and load "
        "generators share these cores.",
        "",
        "## Targets",
        "",
        "| target | measured | goal | met |",
        "| --- | --- | --- | --- |",
    ]
    for t in results["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['target']} | {t['measured']} | {t['goal']} | {met} |")
    lines += [
        "",
        "## Limits (same run)",
        "",
        "| concurrency | asyncpg UPDATE/s | p50 ms | echo req/s | p50 ms | min |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c, lim in results["limits"].items():
        pg, echo = lim["pg_update"], lim["echo"]
        lines.append(
            f"| {c} | {pg['throughput']:.0f} | {pg['p50_ms']} | {echo['throughput']:.0f} "
            f"| {echo['p50_ms']} | {min(pg['throughput'], echo['throughput']):.0f} |"
        )
    lines += [
        "",
        "## API scenarios",
        "",
        "CPU columns: milliseconds of CPU per request spent by the server process, by "
        "PostgreSQL (all its processes) and by the load generator.",
        "",
        "| scenario | concurrency | req/s | × min(limits) | p50 ms | p99 ms | errors "
        "| server CPU ms | PG CPU ms | loadgen CPU ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    sc = results["scenarios"]
    for name in ("create", "progress", "get", "list", "complete"):
        for r in sc.get(name, []):
            lines.append(
                f"| {name} | {r['concurrency']} | {r['throughput']:.0f} | "
                f"{r['ratio_to_limit']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} "
                f"| {r.get('server_cpu_ms')} | {r.get('postgres_cpu_ms')} "
                f"| {r.get('loadgen_cpu_ms')} |"
            )
    if "child_progress" in sc:
        lines += [
            "",
            "## Child progress on one parent",
            "",
            "| children | concurrency | writes/s | ms per write | p50 ms | p99 ms | errors "
            "| server CPU ms | PG CPU ms |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in sc["child_progress"]:
            lines.append(
                f"| {r['children']} | {r['concurrency']} | {r['throughput']:.0f} | "
                f"{r['ms_per_write']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} "
                f"| {r.get('server_cpu_ms')} | {r.get('postgres_cpu_ms')} |"
            )
    if "create_batch" in sc:
        b = sc["create_batch"]
        lines += [
            "",
            "## createBatch (all child POSTs at once)",
            "",
            f"{b.get('children')} children: {b.get('seconds', 0):.2f} s to the final GET, "
            f"{b.get('errors')} errors, statuses {b.get('statuses')}, parent total "
            f"{b.get('parent_children_total')}. Then all completed at once: "
            f"{b.get('complete_seconds', 0):.2f} s, statuses {b.get('complete_statuses')}, "
            f"parent {b.get('parent_status_after')}.",
        ]
    if "eta_progress" in sc:
        e = sc["eta_progress"]
        lines += [
            "",
            "## Progress on a type with ETA history",
            "",
            f"Progress writes on a type with {e['history']} completions (profiles, scores: the"
            " full ETA model runs on each write) and on a type without statistics, in"
            " alternating rounds of the same run; figures are the mean over the rounds.",
            "",
            "| concurrency | cold req/s | learned req/s | ratio | cold server CPU ms "
            "| learned server CPU ms | ratio | cold PG CPU ms | learned PG CPU ms |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in e["rows"]:
            cold, learned = r["cold"], r["learned"]
            lines.append(
                f"| {r['concurrency']} | {cold['throughput']:.0f} | {learned['throughput']:.0f} "
                f"| {r['throughput_ratio']} | {cold['server_cpu_ms']} "
                f"| {learned['server_cpu_ms']} | {r['server_cpu_ratio']} "
                f"| {cold['postgres_cpu_ms']} | {learned['postgres_cpu_ms']} |"
            )
    if "workers" in sc:
        w = sc["workers"]
        lines += [
            "",
            "## Worker processes (`serve --workers N`)",
            "",
            f"Progress writes at concurrency {w['concurrency']}: 1 worker "
            f"{w['one']['throughput']:.0f}/s, 2 workers {w['two']['throughput']:.0f}/s "
            f"(ratio {w['ratio']}); server CPU per write {w['one'].get('server_cpu_ms')} / "
            f"{w['two'].get('server_cpu_ms')} ms.",
        ]
    if "sse_latency" in sc:
        lines += [
            "",
            "## SSE delivery latency (write answered → event received)",
            "",
            "| subscribers | shape | writes/s (target) | p50 ms | p99 ms | max ms "
            "| matched/expected |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in sc["sse_latency"]:
            lines.append(
                f"| {r['subscribers']} | {r['shape']} | {r['write_throughput']:.0f} "
                f"({r['target_rate']:.0f}) | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} "
                f"| {r['matched']}/{r['expected_recorded']} |"
            )
    elif results.get("sse_skipped"):
        lines += ["", f"SSE scenarios skipped: {results['sse_skipped']}."]
    if "fanout" in sc:
        f = sc["fanout"]
        lines += [
            "",
            "## Writes with SSE fan-out",
            "",
            f"Progress writes at concurrency {f['concurrency']}: "
            f"{f['no_subscribers']['throughput']:.0f}/s with no subscribers, "
            f"{f['with_subscribers']['throughput']:.0f}/s with {f['subscribers']} subscribers "
            f"(one per written user; {f['events_received']} events delivered): ratio {f['ratio']}.",
        ]
    if "sse_memory" in sc:
        mem = sc["sse_memory"]
        pts = ", ".join(f"{p['connections']}: {p['rss_kb'] / 1024:.1f} MB" for p in mem["points"])
        lines += [
            "",
            "## Memory per idle SSE connection",
            "",
            f"Server RSS by open connections: {pts}. Slope: **{mem['kb_per_connection']} kB "
            f"per connection** (failed opens: {mem['failed'] or 'none'}).",
        ]
    if results.get("failures"):
        lines += ["", "## Scenarios that failed", ""]
        lines += [f"- {k}: `{v[:300]}`" for k, v in results["failures"].items()]
    lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in results.get("plots", [])), ""]
    path.write_text("\n".join(lines))


def plot(results: dict[str, Any], out: Path) -> list[str]:
    """PNG plots; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: list[str] = []
    sc = results["scenarios"]
    conc = [int(c) for c in results["limits"]]

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(
        conc,
        [results["limits"][str(c)]["pg_update"]["throughput"] for c in conc],
        "k--o",
        label="limit: asyncpg UPDATE",
    )
    ax[0].plot(
        conc,
        [results["limits"][str(c)]["echo"]["throughput"] for c in conc],
        "k:o",
        label="limit: ASGI echo",
    )
    for name in ("create", "progress", "get", "list", "complete"):
        if name in sc:
            rows = sc[name]
            ax[0].plot(
                [r["concurrency"] for r in rows], [r["throughput"] for r in rows], "-o", label=name
            )
            ax[1].plot(
                [r["concurrency"] for r in rows],
                [r["p99_ms"] for r in rows],
                "-o",
                label=f"{name} p99",
            )
    for a, title, ylabel in ((ax[0], "Throughput", "requests/s"), (ax[1], "p99 latency", "ms")):
        a.set_xscale("log", base=2)
        a.set_xlabel("concurrency")
        a.set_ylabel(ylabel)
        a.set_title(title)
        a.set_yscale("log")  # the limits sit an order of magnitude above the API
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "throughput_latency.png", dpi=110)
    plt.close(fig)
    files.append("throughput_latency.png")

    if "child_progress" in sc:
        rows = sc["child_progress"]
        fig, a = plt.subplots(figsize=(5.5, 4))
        a.plot(
            [r["children"] for r in rows],
            [r["ms_per_write"] for r in rows],
            "-o",
            label="ms per write",
        )
        a.plot(
            [r["children"] for r in rows], [r["p50_ms"] for r in rows], "-o", label="p50 latency ms"
        )
        a.set_xscale("log")
        a.set_ylim(bottom=0)
        a.set_xlabel("children of the parent")
        a.set_title("Child progress cost")
        a.legend()
        a.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "child_progress.png", dpi=110)
        plt.close(fig)
        files.append("child_progress.png")

    if sc.get("sse_latency"):
        fig, a = plt.subplots(figsize=(5.5, 4))
        for shape, mark in (("same_user", "o"), ("distinct_users", "s")):
            rows = [r for r in sc["sse_latency"] if r["shape"] == shape and r["p50_ms"] is not None]
            if rows:
                a.plot(
                    [r["subscribers"] for r in rows],
                    [r["p50_ms"] for r in rows],
                    f"-{mark}",
                    label=f"{shape} p50",
                )
                a.plot(
                    [r["subscribers"] for r in rows],
                    [r["p99_ms"] for r in rows],
                    f"--{mark}",
                    label=f"{shape} p99",
                )
        for r in sc["sse_latency"]:
            if "replica" in r["shape"] and r["p50_ms"] is not None:
                a.plot(
                    [r["subscribers"]] * 2, [r["p50_ms"], r["p99_ms"]], "k^", label="other replica"
                )
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("subscribers")
        a.set_ylabel("ms")
        a.set_title("SSE delivery latency")
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "sse_latency.png", dpi=110)
        plt.close(fig)
        files.append("sse_latency.png")

    if "sse_memory" in sc:
        pts = sc["sse_memory"]["points"]
        fig, a = plt.subplots(figsize=(5.5, 4))
        a.plot([p["connections"] for p in pts], [p["rss_kb"] / 1024 for p in pts], "-o")
        a.set_xlabel("idle SSE connections")
        a.set_ylabel("server RSS (MB)")
        a.set_title(f"Memory: {sc['sse_memory']['kb_per_connection']} kB per connection")
        a.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "sse_memory.png", dpi=110)
        plt.close(fig)
        files.append("sse_memory.png")
    return files


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run, seconds)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="subset: limits api eta children batch workers sse fanout memory",
    )
    parser.add_argument(
        "--concurrencies", type=int, nargs="*", default=None, help="override the sizes'"
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds per load run")
    parser.add_argument("--complete-jobs", type=int, default=None, help="jobs completed per run")
    parser.add_argument(
        "--sse-subscribers", type=int, nargs="*", default=None, help="override the sizes'"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.concurrencies:
        sizes.concurrencies = args.concurrencies
    if args.duration:
        sizes.duration = args.duration
    if args.complete_jobs:
        sizes.complete_jobs = args.complete_jobs
    if args.sse_subscribers:
        sizes.sse_subscribers = args.sse_subscribers
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="seenn-bench-") as tmp:
        bench = Bench(sizes, Path(tmp), args.quick)
        bench.results.update(
            quick=args.quick,
            sizes=asdict(sizes),
            machine=machine(),
            started_at=started.isoformat(timespec="seconds"),
        )
        bench.setup()
        steps = args.only or [
            "limits",
            "api",
            "eta",
            "children",
            "batch",
            "workers",
            "sse",
            "fanout",
            "memory",
        ]
        failures: dict[str, str] = {}

        def attempt(name: str, step: Any) -> None:
            """Run one scenario; a failure is recorded and the others still run."""
            try:
                step()
            except Exception as exc:  # reported in results and the exit code
                failures[name] = repr(exc)[:2000]
                log(f"scenario {name} FAILED: {exc!r}")

        try:
            bench.limits()  # every ratio needs them
            if "api" in steps or "sse" in steps or "fanout" in steps:
                bench.api()
            if "eta" in steps:
                attempt("eta", bench.eta)
            if "children" in steps:
                attempt("children", bench.children)
            if "batch" in steps:
                attempt("batch", bench.batch)
            if "workers" in steps:
                attempt("workers", bench.workers)
            if {"sse", "fanout", "memory"} & set(steps):
                if sse_available(bench.base, bench.key):
                    if "sse" in steps:
                        attempt("sse", bench.sse_latency)
                    if "fanout" in steps:
                        attempt("fanout", bench.fanout)
                    if "memory" in steps:
                        attempt("memory", bench.memory)
                else:
                    bench.results["sse_skipped"] = "GET /v1/sse is not available on this server"
                    log("SSE scenarios skipped: GET /v1/sse not available")
        finally:
            bench.teardown()
    results = bench.results
    results["failures"] = failures
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["targets"] = evaluate(results)
    results["plots"] = plot(results, out)
    (out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    write_markdown(results, out / "results.md")
    log(f"wrote {out}/results.json, results.md and {len(results['plots'])} plots")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
