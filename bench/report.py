"""What a run's results say: the machine, the targets met or missed, and ``results.md``."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def as_ms(v: float | None) -> float | None:
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


def sse_cause(row: dict[str, Any]) -> str | None:
    """Why an SSE row's p99 is 50 ms or more, from what the same run measured; None when
    it is met. The server's share, p99s of its histograms: from the hub's first wake-up
    with news (a commit) to its last direct write of it, of which one read's writes to
    every waiting stream; the rest is the hub waiting to read (its event loop busy with
    the writer's requests, or no CPU free). The wake-up comes before the write's answer,
    where the client's clock starts, so this bounds the server's share from above: under
    50 ms, the miss is on the client side (the subscriber process and the machine's
    scheduling). Also the events left to the streams' own tasks and the cores each side
    used."""
    p99 = row["p99_ms"]
    if p99 is None or p99 < 50:
        return None
    server = row.get("server") or {}
    cpu = row.get("cpu") or {}
    done, fanout = server.get("wake_to_write_p99_ms"), server.get("fanout_p99_ms")
    if done is None or fanout is None:
        why = "the server made no direct write (every event went through the streams' tasks)"
    else:
        split = (
            f"first wake-up to last direct write p99 {done} ms, one read's writes to every"
            f" waiting stream p99 {fanout} ms"
        )
        if done >= 50:
            larger = "waiting to read" if done - fanout >= fanout else "its writes to every stream"
            why = f"the server, mostly {larger}: {split}"
        else:
            why = (
                f"not the server ({split}): the other {p99 - done:.0f} ms or more lie between"
                " the socket write and the client's read (the client process and the"
                " machine's scheduling)"
            )
    queued, delivered = server.get("events_queued") or 0, server.get("events_delivered") or 0
    if delivered and queued > 0.01 * delivered:
        why += (
            f"; {queued} of {delivered} deliveries went through the streams' own tasks"
            " (a stream busy or back-pressured by a client that reads slower)"
        )
    if cpu:
        why += (
            f"; cores used: server {cpu['server_cores']}, clients {cpu['client_cores']} of"
            f" {os.cpu_count()}, the server waited for a CPU"
            f" {cpu['server_runqueue_share']:.0%} of the time"
        )
    return why


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
        client = row.get("client", "line")
        shape = row["shape"] if client == "line" else f"{row['shape']}, {client} client"
        if row["p50_ms"] is None:
            add(
                f"SSE delivery, {row['subscribers']} {shape}",
                "no events",
                "p50 < 20, p99 < 50 ms",
                False,
            )
            continue
        add(
            f"SSE delivery p50/p99 ms, {row['subscribers']} subscribers ({shape})",
            f"{row['p50_ms']:.1f} / {row['p99_ms']:.1f}",
            "p50 < 20, p99 < 50 ms",
            row["p50_ms"] < 20 and row["p99_ms"] < 50,
        )
        server = row.get("server") or {}
        if server.get("wake_to_write_p99_ms") is not None:
            add(
                f"SSE server side p99 ms: write's transaction → hub's read / one read's writes"
                f" to every stream / first wake-up → last write, {row['subscribers']} subscribers"
                f" ({shape})",
                f"{server.get('read_lag_p99_ms')} / {server['fanout_p99_ms']}"
                f" / {server['wake_to_write_p99_ms']}"
                f" ({server['fanouts']} fan-outs, {server['events_queued']} events queued)",
                "measured (histogram buckets, interpolated)",
                None,
            )
        cause = sse_cause(row)
        if cause is not None:
            add(f"SSE p99 missed, {row['subscribers']} subscribers ({shape}): why", cause, "", None)
    clients = {
        (r["subscribers"], r["shape"], r.get("client", "line").split()[0]): r["p99_ms"]
        for r in sc.get("sse_latency", [])
    }
    for (n, shape, client), p99 in clients.items():
        spread = clients.get((n, shape, "spread"))
        if client == "line" and p99 and spread:
            add(
                f"SSE p99, {n} subscribers ({shape}): one-process line client / lean spread"
                " client, same run",
                f"{p99:.1f} / {spread:.1f} ms = {p99 / spread:.2f}",
                "measured (what the client adds)",
                None,
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
            "The `line` client is one process reading every stream line by line and timing the"
            " first 100; the `spread` client (`bench/sse_client.py`) is lean subscribers over"
            " several processes timing every stream. Server side, p99 of its histograms: from"
            " the start of an event's write transaction to the hub's read of it (it includes the"
            " write's own time; `seenn_notification_lag_seconds`), one"
            " read's direct writes to every waiting stream (`seenn_sse_fanout_seconds`), and"
            " from the hub's first wake-up with news to its last direct write"
            " (`seenn_sse_wake_to_write_seconds`, an upper bound while writes keep coming).",
            "",
            "| subscribers | shape | client | writes/s (target) | p50 ms | p99 ms | max ms "
            "| matched/expected | server p99 ms: read lag / fan-out / wake → write "
            "| cores: server, clients (server waiting) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in sc["sse_latency"]:
            server = r.get("server") or {}
            cpu = r.get("cpu")
            cores = (
                f"{cpu['server_cores']}, {cpu['client_cores']} ({cpu['server_runqueue_share']:.0%})"
                if cpu
                else "—"
            )
            lines.append(
                f"| {r['subscribers']} | {r['shape']} | {r.get('client', 'line')} "
                f"| {r['write_throughput']:.0f} "
                f"({r['target_rate']:.0f}) | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} "
                f"| {r['matched']}/{r['expected_recorded']} "
                f"| {server.get('read_lag_p99_ms')} / {server.get('fanout_p99_ms')}"
                f" / {server.get('wake_to_write_p99_ms')} "
                f"| {cores} |"
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
