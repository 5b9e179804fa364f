"""Before/after of the hot path: the same load against the server code of several commits,
in one run, with the machine's limits measured in between.

    .venv/bin/python -m bench.compare REV [REV ...] [--concurrency 16 64] [--duration 3]

Each REV is checked out (``git worktree``, detached) and served from its own checkout on one
shared, migrated database; the rounds alternate the revisions, so a busy moment of the
shared machine does not land on one of them only. For each revision and concurrency it
reports progress writes/s, GET/s and complete/s, the ratios to min(raw asyncpg UPDATE, bare
echo) and to the echo measured in the same round, and the server's CPU per request.
Writes ``compare.json`` and ``compare.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import orjson

from bench.processes import ROOT, SERVER_ENV, CpuMeter, loadgen, log, postmaster_pid, start_echo
from bench.scenarios import create_jobs


def checkout(rev: str, into: Path) -> Path:
    path = into / rev.replace("/", "_")
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--force", str(path), rev],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return path


def remove_checkout(path: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)


def measure(
    base: str, key: str, cpu: CpuMeter, kind: str, c: int, duration: float, **extra: Any
) -> dict[str, Any]:
    spec = {"base": base, "key": key, "kind": kind, "concurrency": c, "warmup": 0.3}
    spec.update(duration=duration, **extra)
    before = cpu.sample()
    result = loadgen("http", spec, timeout=float(spec["duration"]) + 120)
    result.update(CpuMeter.per_request(before, cpu.sample(), result["total_requests"]))
    return result


def batch(base: str, key: str, cpu: CpuMeter, rev: str, round_no: int, n: int) -> dict[str, Any]:
    """createBatch(n): every child POST at once, then every child completed at once."""
    before = cpu.sample()
    user = f"batch_{round_no}_{rev.split()[0]}_{len(rev)}"
    spec = {"base": base, "key": key, "children": n, "user": user}
    result = loadgen("batch", spec, timeout=600)
    cost = CpuMeter.per_request(before, cpu.sample(), 2 * n)
    row = {
        "rev": rev,
        "round": round_no,
        "concurrency": "batch",
        "batch_create_s": round(result["seconds"], 3),
        "batch_complete_s": round(result["complete_seconds"], 3),
        "batch_cpu_ms": cost.get("server_cpu_ms"),
        "errors": result["errors"] + result["complete_errors"],
    }
    log(f"{rev} createBatch({n}): {row}")
    return row


NO_FLUSH = " (synchronous_commit=off)"


def no_flush_batch(
    database_url: str,
    dsn: str,
    key: str,
    work: Path,
    root: Path,
    rev: str,
    round_no: int,
    n: int,
    postmaster: int | None,
) -> dict[str, Any]:
    """createBatch(n) with commits that do not wait for their WAL flush (an ablation, never
    a setting to run with): what remains is everything but the flush waits."""
    import asyncpg

    from tests.support.harness import start_server

    async def set_flush(on: bool) -> None:
        conn = await asyncpg.connect(dsn)
        name = await conn.fetchval("SELECT current_database()")
        clause = "RESET synchronous_commit" if on else "SET synchronous_commit = off"
        await conn.execute(f'ALTER DATABASE "{name}" {clause}')
        await conn.close()

    asyncio.run(set_flush(False))
    try:
        server = start_server(database_url, work / "logs", env=SERVER_ENV, root=root)
        try:
            cpu = CpuMeter(server.process.pid, postmaster)
            return batch(server.url, key, cpu, rev + NO_FLUSH, round_no, n)
        finally:
            server.stop()
    finally:
        asyncio.run(set_flush(True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revs", nargs="+")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--complete-jobs", type=int, default=600)
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="also run createBatch(N) once per revision and round (0: not)",
    )
    parser.add_argument(
        "--ablate-flush",
        action="store_true",
        help="also run createBatch with synchronous_commit=off: how much of its time is "
        "one user's writes waiting for each other's WAL flush (under the stream row lock)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compare")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from tests.support.harness import create_key, provision_database, start_server

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="seenn-compare-") as tmp:
        work = Path(tmp)
        checkouts = {rev: checkout(rev, work / "src") for rev in args.revs}
        database_url, _pg = provision_database(work)
        key = asyncio.run(create_key(database_url, "compare_app"))
        from app.db.engine import plain_url

        dsn = plain_url(database_url)
        import asyncpg

        async def limit_table() -> None:
            conn = await asyncpg.connect(dsn)
            await conn.execute(
                "CREATE TABLE bench_rows (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0,"
                " updated_at timestamptz)"
            )
            await conn.execute("INSERT INTO bench_rows (id) SELECT generate_series(0, 2047)")
            await conn.close()

        asyncio.run(limit_table())
        echo_proc, echo_url = start_echo(work)
        postmaster = postmaster_pid(dsn)
        try:
            for round_no in range(args.rounds):
                order = args.revs if round_no % 2 == 0 else args.revs[::-1]
                for rev in order:
                    server = start_server(
                        database_url, work / "logs", env=SERVER_ENV, root=checkouts[rev]
                    )
                    cpu = CpuMeter(server.process.pid, postmaster)
                    try:
                        tag = f"{rev}-{round_no}"
                        if args.batch:
                            rows.append(batch(server.url, key, cpu, rev, round_no, args.batch))
                        solo = create_jobs(server.url, key, [f"s{tag}_{i}" for i in range(128)], 1)
                        for c in args.concurrency:
                            pg = loadgen(
                                "pg",
                                {
                                    "dsn": dsn,
                                    "concurrency": c,
                                    "duration": args.duration,
                                    "warmup": 0.3,
                                },
                            )
                            echo = loadgen(
                                "http",
                                {
                                    "base": echo_url,
                                    "kind": "echo",
                                    "concurrency": c,
                                    "duration": args.duration,
                                    "warmup": 0.3,
                                },
                            )
                            fresh = create_jobs(
                                server.url,
                                key,
                                [f"d{tag}_{c}_{i}" for i in range(args.complete_jobs)],
                                1,
                            )
                            progress = measure(
                                server.url, key, cpu, "progress", c, args.duration, ids=solo
                            )
                            get = measure(server.url, key, cpu, "get", c, args.duration, ids=solo)
                            complete = measure(
                                server.url, key, cpu, "complete", c, 120.0, ids=fresh
                            )
                            limit = min(pg["throughput"], echo["throughput"])
                            row = {
                                "rev": rev,
                                "round": round_no,
                                "concurrency": c,
                                "pg_update": pg["throughput"],
                                "echo": echo["throughput"],
                                "progress": progress["throughput"],
                                "get": get["throughput"],
                                "complete": complete["throughput"],
                                "progress_ratio": round(progress["throughput"] / limit, 3),
                                "progress_to_echo": round(
                                    progress["throughput"] / echo["throughput"], 3
                                ),
                                "get_to_echo": round(get["throughput"] / echo["throughput"], 3),
                                "progress_cpu_ms": progress.get("server_cpu_ms"),
                                "get_cpu_ms": get.get("server_cpu_ms"),
                                "complete_cpu_ms": complete.get("server_cpu_ms"),
                                "errors": progress["errors"] + get["errors"] + complete["errors"],
                            }
                            rows.append(row)
                            log(f"{rev} c={c}: {row}")
                    finally:
                        server.stop()
                    if args.batch and args.ablate_flush:
                        rows.append(
                            no_flush_batch(
                                database_url,
                                dsn,
                                key,
                                work,
                                checkouts[rev],
                                rev,
                                round_no,
                                args.batch,
                                postmaster,
                            )
                        )
        finally:
            echo_proc.kill()
            for path in checkouts.values():
                remove_checkout(path)
    (args.out / "compare.json").write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    cs: list[Any] = [*args.concurrency, *(["batch"] if args.batch else [])]
    revs = [*args.revs, *([r + NO_FLUSH for r in args.revs] if args.ablate_flush else [])]
    write_markdown(rows, revs, cs, args.out / "compare.md")
    log(f"wrote {args.out}/compare.json and compare.md")
    return 0


FIELDS = (
    ("progress", "progress/s"),
    ("progress_ratio", "progress / min(limits)"),
    ("progress_to_echo", "progress / echo"),
    ("get", "GET/s"),
    ("get_to_echo", "GET / echo"),
    ("complete", "complete/s"),
    ("progress_cpu_ms", "server CPU ms / progress"),
    ("get_cpu_ms", "server CPU ms / GET"),
    ("complete_cpu_ms", "server CPU ms / complete"),
    ("echo", "echo/s (same round)"),
    ("pg_update", "asyncpg UPDATE/s (same round)"),
    ("batch_create_s", "createBatch: create all, s"),
    ("batch_complete_s", "createBatch: complete all, s"),
    ("batch_cpu_ms", "createBatch: server CPU ms / request"),
    ("errors", "errors"),
)


def write_markdown(rows: list[dict[str, Any]], revs: list[str], cs: list[Any], path: Path) -> None:
    """Medians over the rounds, one column per revision, one block per concurrency."""
    lines = [
        "| concurrency | measure | " + " | ".join(revs) + " |",
        "| --- | --- | " + " | ".join("---" for _ in revs) + " |",
    ]
    for c in cs:
        for field, label in FIELDS:
            cells = []
            for rev in revs:
                values = [
                    r[field]
                    for r in rows
                    if r["rev"] == rev and r["concurrency"] == c and r.get(field) is not None
                ]
                cells.append(f"{statistics.median(values):g}" if values else "-")
            if set(cells) == {"-"}:
                continue  # a measure of the other kind of block
            lines.append(f"| {c} | {label} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
