"""The benchmark's processes and meters: the load generator's runs (``bench.loadgen``), the
ASGI echo, CPU and memory of a process and its children, the server's environment."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent


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
    from tests.support.harness import free_port

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


def runqueue_seconds(pid: int) -> float:
    """Seconds the process's main thread has waited runnable for a CPU (schedstat); 0 when
    the kernel keeps no such count. On a shared machine this is where latency hides."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def shares(server_pid: int, client_pids: list[int]) -> Callable[[], dict[str, float]]:
    """Start measuring; the returned call gives, since then, the cores the server and the
    clients used and the share of the wall time the server's main thread waited runnable
    for a CPU (what the machine, not the code, added to a latency)."""

    def now() -> tuple[float, float, float, float]:
        return (
            time.monotonic(),
            cpu_seconds(server_pid),
            runqueue_seconds(server_pid),
            sum(cpu_seconds(p) for p in client_pids),
        )

    t0, server0, waited0, clients0 = now()

    def since() -> dict[str, float]:
        t1, server1, waited1, clients1 = now()
        wall = max(t1 - t0, 1e-9)
        return {
            "server_cores": round((server1 - server0) / wall, 3),
            "server_runqueue_share": round((waited1 - waited0) / wall, 3),
            "client_cores": round((clients1 - clients0) / wall, 3),
        }

    return since


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
