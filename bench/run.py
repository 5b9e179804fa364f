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
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.plots import plot
from bench.processes import ROOT, log
from bench.report import evaluate, machine, write_markdown
from bench.scenarios import QUICK, Bench, Sizes, sse_available


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
