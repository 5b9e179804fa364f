"""Where SSE fan-out time goes: N subscribers on one user, progress writes at a fixed rate.

    .venv/bin/python -m bench.sse_profile [--subscribers 100 1000] [--rate 50] [--seconds 6]
    .venv/bin/python -m bench.sse_profile --revs main HEAD --rounds 2   # before/after

For each subscriber count it reports the delivery latency (write answered → event read, one
monotonic clock), the writes/s reached, and the CPU seconds the server, PostgreSQL and the
subscribers' load generator each spent per delivered event: the three share this machine's
cores, so a client that costs more than the server would hide the server's cost. With
``--spy`` it also samples the server with py-spy (own time and layers). With ``--revs``
each revision is served from its own checkout (as ``bench.compare`` does) on one database,
in alternating rounds, so that a busy moment of a shared machine does not land on one only.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.compare import checkout, remove_checkout
from bench.processes import (
    ROOT,
    SERVER_ENV,
    Interactive,
    children_of,
    cpu_seconds,
    loadgen,
    log,
    postmaster_pid,
    rss_kb,
    runqueue_seconds,
)
from bench.profile import layer_shares, summarize_profile
from bench.scenarios import create_jobs
from bench.sse_client import Spread, scrape, server_side
from bench.stats import percentile, slope


def _tree_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    return sum(cpu_seconds(p) for p in [pid, *children_of(pid)])


def run_once(
    base: str,
    key: str,
    server_pid: int,
    pg: int | None,
    n: int,
    rate: float,
    seconds: float,
    tag: str,
    spy_to: Path | None = None,
    client: str = "line",
    processes: int = 4,
) -> dict[str, Any]:
    """One run; ``client``: ``line`` (the one-process line reader of ``bench.loadgen``)
    or ``spread`` (lean subscribers over ``processes`` processes, every one timed)."""
    user = f"prof_{tag}_u"
    ids = create_jobs(base, key, [user], 64)
    users = [user] * n
    spread = Spread(base, key, users, processes) if client == "spread" else None
    sub = Interactive("sse", {"base": base, "key": key, "users": users}) if spread is None else None
    client_pids = [p.proc.pid for p in spread.procs] if spread else [sub.proc.pid]  # type: ignore[union-attr]
    try:
        if spread is not None:
            spread.ready()
        else:
            sub.read_line(120)  # type: ignore[union-attr]
        spy = None
        if spy_to is not None:
            exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            spy = subprocess.Popen(
                [exe, "record", "-p", str(server_pid), "-f", "raw", "-o", str(spy_to)]
                + ["-d", str(int(seconds)), "-r", "200", "--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        def cpu() -> dict[str, float]:
            return {
                "server": cpu_seconds(server_pid),
                "postgres": _tree_cpu(pg),
                "subscribers": sum(cpu_seconds(p) for p in client_pids),
                "server_waiting": runqueue_seconds(server_pid),
            }

        scraped = scrape(base)
        cpu0 = cpu()
        t0 = time.monotonic()
        writer = loadgen(
            "http",
            {
                "base": base,
                "key": key,
                "kind": "progress",
                "ids": ids,
                "concurrency": 8,
                "duration": seconds,
                "rate": rate,
                "record_acks": True,
            },
        )
        wall = time.monotonic() - t0
        cpu1 = cpu()
        server = server_side(scraped, scrape(base))
        if spread is not None:
            got = spread.finish(writer.pop("acks"))
        else:
            sub.send("stop")  # type: ignore[union-attr]
            got = sub.result(120)  # type: ignore[union-attr]
        if spy is not None:
            spy.wait(60)
    finally:
        if spread is not None:
            spread.kill()
        else:
            sub.kill()  # type: ignore[union-attr]
    events = got["events_received"]
    row: dict[str, Any] = {
        "subscribers": n,
        "client": client,
        "target_rate": rate,
        "writes_per_s": writer["throughput"],
        "events": events,
    }
    if spread is None:
        acked = {(j, p): t for j, p, t in writer.pop("acks")}
        lat = sorted(t - acked[(j, p)] for j, p, t in got.pop("arrivals") if (j, p) in acked)
        row.update(
            p50_ms=round(percentile(lat, 0.5) * 1000, 1) if lat else None,  # type: ignore[operator]
            p99_ms=round(percentile(lat, 0.99) * 1000, 1) if lat else None,  # type: ignore[operator]
            max_ms=round(lat[-1] * 1000, 1) if lat else None,
        )
    else:
        row.update({k: got[k] for k in ("p50_ms", "p99_ms", "max_ms", "arrivals", "unmatched")})
        row.update(
            last_arrival_p99_ms=got["last_arrival_p99_ms"],
            receipt_spread_p99_ms=got["receipt_spread_p99_ms"],
        )
    row.update({f"server_{k}": v for k, v in server.items()})
    waited = cpu1.pop("server_waiting") - cpu0.pop("server_waiting")
    row["server_runqueue_share"] = round(waited / wall, 3)  # of the wall time: no CPU free
    for who in cpu0:
        used = cpu1[who] - cpu0[who]
        row[f"{who}_cores"] = round(used / wall, 3)
        row[f"{who}_us_per_event"] = round(used / events * 1e6, 2) if events else None
    return row


def idle_memory(base: str, key: str, pid: int, steps: list[int], tag: str) -> dict[str, Any]:
    """RSS of a fresh server as idle SSE connections (distinct users) grow: kB/connection."""
    idle = Interactive("idle", {"base": base, "key": key, "user_prefix": f"idle_{tag}_"})
    points = []
    try:
        for n in steps:
            idle.send(f"open {n}")
            opened = int(idle.read_line(120).split()[1])
            time.sleep(1.0)  # let the server settle its buffers
            points.append((opened, rss_kb(pid)))
        idle.send("quit")
        idle.result(60)
    finally:
        idle.kill()
    k = slope([float(c) for c, _ in points], [float(r) for _, r in points])
    return {"memory_points": points, "kb_per_connection": None if k is None else round(k, 2)}


def print_profile(raw: Path) -> None:
    own, incl = summarize_profile(raw, 25)
    print("server layers:", ", ".join(f"{k} {v:.0%}" for k, v in layer_shares(raw)))
    print("server own time:")
    for f, share in own:
        print(f"  {share:6.1%}  {f}")
    print("server inclusive (top 30):")
    for f, share in incl[:30]:
        print(f"  {share:6.1%}  {f}")


FIELDS = (
    "writes_per_s",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "server_wake_to_write_p50_ms",
    "server_wake_to_write_p99_ms",
    "server_fanout_mean_ms",
    "server_fanout_p99_ms",
    "server_read_lag_p99_ms",
    "server_fanouts",
    "server_events_queued",
    "server_us_per_event",
    "subscribers_us_per_event",
    "postgres_us_per_event",
    "server_cores",
    "server_runqueue_share",
    "subscribers_cores",
)
MEMORY_STEPS = [0, 500, 1000, 1500, 2000]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1000])
    parser.add_argument("--rate", type=float, default=50.0, help="progress writes per second")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--spy", action="store_true", help="py-spy the server (one rev only)")
    parser.add_argument("--revs", nargs="*", default=None, help="commits to compare")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--clients",
        nargs="+",
        default=["line", "spread"],
        choices=["line", "spread"],
        help="subscriber clients, each measured in turn on the same server (see sse_client)",
    )
    parser.add_argument("--processes", type=int, default=4, help="processes of the spread client")
    parser.add_argument("--out", type=Path, default=None, help="write rows as JSON here")
    parser.add_argument(
        "--memory", action="store_true", help="also RSS per idle connection (fresh server)"
    )
    args = parser.parse_args(argv)
    from app.realtime.hub import plain_url
    from tests.support.harness import create_key, provision_database, start_server

    revs: list[str | None] = list(args.revs) if args.revs else [None]
    rows: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="seenn-sse-profile-") as tmp:
        work = Path(tmp)
        roots = {rev: (checkout(rev, work / "src") if rev else ROOT) for rev in revs}
        url, _pg = provision_database(work)
        key = asyncio.run(create_key(url, "bench_app"))
        pg = postmaster_pid(plain_url(url))
        try:
            for round_no in range(args.rounds):
                for rev in revs if round_no % 2 == 0 else revs[::-1]:
                    server = start_server(url, work / "logs", env=SERVER_ENV, root=roots[rev])
                    try:
                        for n, client in [(n, c) for n in args.subscribers for c in args.clients]:
                            tag = f"{(rev or 'w').replace('/', '_')}{round_no}_{n}{client[0]}"
                            raw = work / f"spy-{tag}.txt" if args.spy else None
                            row = run_once(
                                server.url,
                                key,
                                server.process.pid,
                                pg,
                                n,
                                args.rate,
                                args.seconds,
                                tag,
                                raw,
                                client,
                                args.processes,
                            )
                            row.update(rev=rev or "worktree", round=round_no)
                            rows.append(row)
                            log(f"{row}")
                            if raw is not None and raw.exists():
                                print_profile(raw)
                    finally:
                        server.stop()
                    if args.memory:
                        fresh = start_server(url, work / "logs", env=SERVER_ENV, root=roots[rev])
                        try:
                            tag = f"{(rev or 'w').replace('/', '_')}{round_no}"
                            mem = idle_memory(fresh.url, key, fresh.process.pid, MEMORY_STEPS, tag)
                        finally:
                            fresh.stop()
                        mem.update(rev=rev or "worktree", round=round_no, subscribers=0)
                        memory.append(mem)
                        log(f"{mem}")
        finally:
            for rev, path in roots.items():
                if rev:
                    remove_checkout(path)
    names = [r or "worktree" for r in revs]
    print(f"\nrate {args.rate}/s, {args.seconds} s per run, medians of {args.rounds} round(s)")
    print("| subscribers | client | measure | " + " | ".join(names) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in names) + " |")
    for n, client in [(n, c) for n in args.subscribers for c in args.clients]:
        for field in FIELDS:
            cells = []
            for name in names:
                vals = [
                    r[field]
                    for r in rows
                    if r["rev"] == name
                    and r["subscribers"] == n
                    and r["client"] == client
                    and r.get(field) is not None
                ]
                cells.append(f"{statistics.median(vals):g}" if vals else "-")
            print(f"| {n} | {client} | {field} | " + " | ".join(cells) + " |")
    if memory:
        cells = []
        for name in names:
            vals = [m["kb_per_connection"] for m in memory if m["rev"] == name]
            vals = [v for v in vals if v is not None]
            cells.append(f"{statistics.median(vals):g}" if vals else "-")
        print("| idle | RSS kB per connection | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_bytes(orjson.dumps(rows + memory, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
