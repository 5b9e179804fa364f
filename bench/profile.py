"""Where a request's time goes: database round trips per request and a py-spy profile.

    .venv/bin/python -m bench.profile [--seconds 8] [--concurrency 16] [--out bench/results]

Round trips are counted exactly by a PostgreSQL wire-protocol proxy between one server
process and the database (every ``Sync`` or simple ``Query`` message the server sends is
one round trip). The profile samples a second server process (no proxy) with py-spy while
a load-generator process sends progress writes on independent jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from bench.processes import ROOT, SERVER_ENV, loadgen, log
from bench.scenarios import create_family, create_jobs

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


class CountingProxy:
    """TCP → PostgreSQL proxy that counts frontend round trips (Sync and Query messages)."""

    def __init__(self, target_host: str | None, target_port: int, socket_dir: str | None) -> None:
        self.target_host, self.target_port, self.socket_dir = target_host, target_port, socket_dir
        self.round_trips = 0
        self.messages: Counter[str] = Counter()
        self.trips: list[str] = []  # what each round trip carried (statement text, shortened)
        self.port = 0

    async def start(self) -> None:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._server = server

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.socket_dir:
            return await asyncio.open_unix_connection(
                f"{self.socket_dir}/.s.PGSQL.{self.target_port}"
            )
        return await asyncio.open_connection(self.target_host, self.target_port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await self._open()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        task = asyncio.create_task(downstream())
        try:
            startup = True
            statements: dict[bytes, str] = {}
            pending: list[str] = []
            while True:
                if startup:
                    head = await reader.readexactly(4)
                    (length,) = struct.unpack("!i", head)
                    rest = await reader.readexactly(length - 4)
                    code = struct.unpack("!i", rest[:4])[0] if len(rest) >= 4 else 0
                    startup = code in (SSL_REQUEST, GSSENC_REQUEST)
                    up_writer.write(head + rest)
                else:
                    head = await reader.readexactly(5)
                    kind = chr(head[0])
                    (length,) = struct.unpack("!i", head[1:])
                    body = await reader.readexactly(length - 4)
                    self.messages[kind] += 1
                    if kind == "P":  # Parse: statement name, query text
                        name, _, rest = body.partition(b"\0")
                        text = rest.split(b"\0", 1)[0].decode(errors="replace")
                        statements[name] = text
                        pending.append("parse " + _sql(text))
                    elif kind == "B":  # Bind: portal name, statement name
                        _portal, _, rest = body.partition(b"\0")
                        name = rest.split(b"\0", 1)[0]
                        pending.append(_sql(statements.get(name, "?")))
                    if kind in ("S", "Q"):
                        self.round_trips += 1
                        if kind == "Q":
                            pending.append(_sql(body.rstrip(b"\0").decode(errors="replace")))
                        self.trips.append(" + ".join(pending) or "sync")
                        pending = []
                    up_writer.write(head + body)
                await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            up_writer.close()
            task.cancel()


def _sql(text: str) -> str:
    return " ".join(text.split())[:70]


def _proxy_target(url: str) -> tuple[str | None, int, str | None]:
    u = make_url(url)
    host = u.query.get("host") if u.host is None else u.host
    if isinstance(host, tuple):
        host = host[0]
    port = int(u.port or u.query.get("port") or 5432)  # type: ignore[arg-type]
    if host and str(host).startswith("/"):
        return None, port, str(host)
    return str(host or "127.0.0.1"), port, None


async def count_round_trips(
    base: str, key: str, proxy: CountingProxy, examples: dict[str, list[str]], samples: int = 20
) -> dict[str, float]:
    """Round trips per request for each endpoint, averaged over ``samples`` sequential calls."""
    headers = {"Authorization": f"Bearer {key}"}
    out: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=f"{base}/v1", headers=headers, timeout=30) as client:

        async def create(user: str = "rt_user", **extra: Any) -> str:
            r = await client.post(
                "/jobs", json={"jobType": "rt", "userId": user, "title": "t", **extra}
            )
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        await create()  # warm: auth cache, prepared statements
        jobs = [await create() for _ in range(samples)]
        parent = await create(totalChildren=samples + 1)
        children = [await create(parentJobId=parent, childIndex=i) for i in range(samples)]

        async def measure(name: str, calls: list[Any]) -> None:
            await calls[0]()  # the first call may prepare statements
            before = proxy.round_trips
            for call in calls[1:]:
                mark = len(proxy.trips)
                r = await call()
                assert r.status_code < 300, (name, r.status_code, r.text)
            examples[name] = proxy.trips[mark:]  # what the last call's round trips carried
            out[name] = round((proxy.round_trips - before) / (len(calls) - 1), 2)

        def post(path: str, body: dict[str, Any]) -> Any:
            return lambda: client.post(path, json=body)

        await measure(
            "create",
            [
                post("/jobs", {"jobType": "rt", "userId": "rt_user", "title": "t"})
                for _ in range(samples)
            ],
        )
        await measure(
            "progress",
            [post(f"/jobs/{j}/progress", {"progress": 10 + i % 80}) for i, j in enumerate(jobs)],
        )
        await measure("get", [(lambda j=j: client.get(f"/jobs/{j}")) for j in jobs])
        await measure(
            "list",
            [
                (lambda: client.get("/jobs", params={"userId": "rt_user", "limit": 20}))
                for _ in range(samples)
            ],
        )
        await measure(
            "child progress", [post(f"/jobs/{c}/progress", {"progress": 50}) for c in children]
        )
        await measure("complete", [post(f"/jobs/{j}/complete", {}) for j in jobs])
    return out


def _samples(raw: Path) -> Iterator[tuple[list[str], int]]:
    """(frames outermost first, sample count) per line of py-spy's collapsed stacks."""
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            yield stack.split(";"), int(count)


def summarize_profile(
    raw: Path, top: int = 25
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(own time share, inclusive time share) per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for frames, n in _samples(raw):
        total += n
        own[_short(frames[-1])] += n
        for f in {_short(f) for f in frames}:
            incl[f] += n
    if not total:
        return [], []
    return (
        [(f, n / total) for f, n in own.most_common(top)],
        [(f, n / total) for f, n in incl.most_common(top * 3)],
    )


LAYERS = (  # first match wins, tested against the file path of a frame
    ("asyncpg (driver)", ("asyncpg/",)),
    ("SQLAlchemy (Core compile/execute, pool)", ("sqlalchemy/", "greenlet")),
    ("FastAPI/Starlette/pydantic", ("fastapi/", "starlette/", "pydantic", "sse_starlette/")),
    ("uvicorn/httptools (HTTP)", ("uvicorn/", "httptools", "h11/")),
    ("application code (app/)", ("app/",)),
    ("JSON (orjson)", ("orjson",)),
    ("asyncio/uvloop event loop", ("asyncio/", "uvloop", "runners.py")),
)


def layer_shares(raw: Path) -> list[tuple[str, float]]:
    """Share of busy samples by the layer of the innermost frame (where CPU was spent)."""
    shares: Counter[str] = Counter()
    total = 0
    for frames, n in _samples(raw):
        total += n
        where = frames[-1].partition(" (")[2]
        for name, needles in LAYERS:
            if any(x in where for x in needles):
                shares[name] += n
                break
        else:
            shares["other (stdlib, interpreter)"] += n
    return [(k, v / total) for k, v in shares.most_common()] if total else []


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" → "func (module.py)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    tail = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({tail})"


def main(argv: list[str] | None = None) -> int:
    from tests.support.harness import create_key, provision_database, start_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report: list[str] = ["# Profile of the write path", ""]
    with tempfile.TemporaryDirectory(prefix="seenn-profile-") as tmp:
        work = Path(tmp)
        url, _handle = provision_database(work)
        key = asyncio.run(create_key(url, "profile_app"))

        examples: dict[str, list[str]] = {}

        async def with_proxy() -> dict[str, float]:
            proxy = CountingProxy(*_proxy_target(url))
            await proxy.start()
            proxied = make_url(url).set(host="127.0.0.1", port=proxy.port)
            query = {k: v for k, v in proxied.query.items() if k not in ("host", "port")}
            proxied = proxied.set(query={**query, "ssl": "disable"})
            loop = asyncio.get_running_loop()
            server = await loop.run_in_executor(
                None,
                lambda: start_server(
                    proxied.render_as_string(hide_password=False), work / "logs", env=SERVER_ENV
                ),
            )
            try:
                return await count_round_trips(server.url, key, proxy, examples)
            finally:
                await loop.run_in_executor(None, server.stop)

        trips = asyncio.run(with_proxy())
        log(f"round trips per request: {trips}")
        report += [
            "## Database round trips per request (counted on the wire)",
            "",
            "| request | round trips |",
            "| --- | --- |",
        ]
        report += [f"| {k} | {v} |" for k, v in trips.items()]
        report += ["", "What each round trip of one request carried (last sample):", ""]
        for k, lines in examples.items():
            report += [f"- **{k}**: " + "; ".join(f"`{t}`" for t in lines)]

        server = start_server(url, work / "logs", env=SERVER_ENV)
        try:
            ids = create_jobs(server.url, key, [f"p{i}" for i in range(8)], 8)
            family = create_family(server.url, key, "pf", 100)
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            profiles: list[tuple[str, Path, dict[str, Any]]] = []
            for name, kind, target in (
                ("progress", "progress", ids),
                ("get", "get", ids),
                ("child_progress", "child_progress", family),
            ):
                raw = args.out / f"profile_{name}.txt"
                rec = subprocess.Popen(
                    [
                        spy,
                        "record",
                        "-p",
                        str(server.process.pid),
                        "-d",
                        str(int(args.seconds)),
                        "-r",
                        "200",
                        "-f",
                        "raw",
                        "-o",
                        str(raw),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                time.sleep(0.5)
                load = loadgen(
                    "http",
                    {
                        "base": server.url,
                        "key": key,
                        "kind": kind,
                        "ids": target,
                        "concurrency": args.concurrency,
                        "duration": args.seconds - 1.0,
                    },
                )
                rec.wait(60)
                profiles.append((name, raw, load))
                log(f"profiled {name}: {load['throughput']}/s")
        finally:
            server.stop()
    for name, raw, load in profiles:
        own, incl = summarize_profile(raw)
        report += [
            "",
            f"## py-spy: {name} at concurrency {args.concurrency} "
            f"({load['throughput']:.0f} req/s, p50 {load['p50_ms']} ms)",
            "",
            f"Collapsed stacks: `{raw.name}` (load into speedscope.app or inferno).",
            "",
            "Busy samples by layer (innermost frame):",
            "",
            "| share | layer |",
            "| --- | --- |",
            *[f"| {v:.1%} | {k} |" for k, v in layer_shares(raw)],
            "",
            "Own time (top functions):",
            "",
            "| share | function |",
            "| --- | --- |",
        ]
        report += [f"| {s:.1%} | `{f}` |" for f, s in own]
        report += [
            "",
            "Inclusive time (application and library frames; py-spy cuts a coroutine's"
            " stack where it resumed after an await, so outer frames are undercounted):",
            "",
            "| share | function |",
            "| --- | --- |",
        ]
        report += [
            f"| {s:.1%} | `{f}` |"
            for f, s in incl
            if any(
                p in f
                for p in (
                    "app/",
                    "sqlalchemy",
                    "asyncpg",
                    "fastapi",
                    "starlette",
                    "pydantic",
                    "uvicorn",
                    "orjson",
                )
            )
        ][:40]
    (args.out / "profile.md").write_text("\n".join(report) + "\n")
    log(f"wrote {args.out / 'profile.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
