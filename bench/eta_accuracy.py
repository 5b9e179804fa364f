"""ETA accuracy: our estimate vs the plain rate rule, on simulated jobs run through the service.

Reproducible (seeded). Each scenario is one ETA key whose jobs run one after another on a
simulated clock through the real ``JobService`` against a real PostgreSQL (embedded, or the
server named by ``SEENN_TEST_DATABASE_URL``), each write in its own transaction. At the
first progress update reaching 10/25/50/75 % we record the remaining time the job shows
(``estimatedCompletionAt - now``) and what the plain rule gives on the same update
(``remaining = (100 - progress) / rate``, rate = progress / time since ``startedAt``), and
compare both with the true remaining time. Every job counts, including a key's first ones.

    .venv/bin/python -m bench.eta_accuracy [--seeds 7,8,9] [--jobs 60]

Writes ``bench/results/eta_accuracy.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_engine
from app.db.repository import Owner, Repository
from app.domain.commands import CompleteJob, CreateJob, UpdateProgress
from app.domain.estimator import plain_remaining
from app.domain.service import JobService
from app.settings import Settings

CHECKPOINTS = (10, 25, 50, 75)
RESULTS = Path(__file__).resolve().parent / "results"
Curve = Callable[[float], float]  # fraction of the job's time → fraction of its work


@dataclass
class SimJob:
    """One simulated job: its true total duration (s), progress curve and given estimate."""

    total_s: float
    curve: Curve
    estimated_ms: int | None = None


@dataclass
class Scenario:
    name: str
    description: str
    jobs: list[SimJob]


@dataclass
class Tally:
    ours: dict[int, list[float]] = field(default_factory=lambda: {c: [] for c in CHECKPOINTS})
    plain: dict[int, list[float]] = field(default_factory=lambda: {c: [] for c in CHECKPOINTS})


# --- progress curves -------------------------------------------------------------------------


def piecewise(points: list[tuple[float, float]]) -> Curve:
    """A monotone curve through (time fraction, work fraction) points from (0,0) to (1,1)."""

    def curve(u: float) -> float:
        for (u0, w0), (u1, w1) in zip(points, points[1:], strict=False):
            if u <= u1:
                return w0 + (w1 - w0) * (u - u0) / (u1 - u0) if u1 > u0 else w1
        return 1.0

    return curve


def wobbly(rng: random.Random, segments: int = 8, spread: float = 0.25) -> list[float]:
    """Relative speeds of consecutive segments of work (a job never runs perfectly evenly)."""
    return [math.exp(rng.gauss(0, spread)) for _ in range(segments)]


def curve_from_speeds(speeds: list[float]) -> Curve:
    """Equal shares of work done at the given relative speeds (time per share ∝ 1/speed)."""
    times = [1 / s for s in speeds]
    total = sum(times)
    points = [(0.0, 0.0)]
    elapsed = 0.0
    for i, t in enumerate(times, 1):
        elapsed += t
        points.append((elapsed / total, i / len(times)))
    return piecewise(points)


def steady(rng: random.Random, n: int) -> Scenario:
    jobs = [
        SimJob(60 * math.exp(rng.gauss(0, 0.3)), curve_from_speeds(wobbly(rng))) for _ in range(n)
    ]
    return Scenario("steady", "median 60 s, ±30 % spread, mildly uneven pace", jobs)


def slow_start(rng: random.Random, n: int) -> Scenario:
    jobs = []
    for _ in range(n):
        setup_time = rng.uniform(0.15, 0.35)  # e.g. loading a model: little visible progress
        setup_work = rng.uniform(0.02, 0.06)
        curve = piecewise([(0, 0), (setup_time, setup_work), (1, 1)])
        jobs.append(SimJob(90 * math.exp(rng.gauss(0, 0.3)), curve, estimated_ms=90_000))
    return Scenario(
        "slow_start",
        "median 90 s, created with estimatedDuration 90 s; 15-35 % of the time spent under"
        " 6 % progress",
        jobs,
    )


def stalls(rng: random.Random, n: int) -> Scenario:
    jobs = []
    for _ in range(n):
        work = 60 * math.exp(rng.gauss(0, 0.3))
        pauses = sorted(
            (rng.uniform(0.1, 0.9), work * rng.uniform(0.1, 0.5))
            for _ in range(rng.choice((0, 1, 1, 2)))
        )
        total = work + sum(p for _, p in pauses)
        points, clock, done = [(0.0, 0.0)], 0.0, 0.0
        for at, pause in pauses:
            clock += (at - done) * work
            points.append((clock / total, at))
            clock += pause
            points.append((clock / total, at))
            done = at
        points.append((1.0, 1.0))
        jobs.append(SimJob(total, piecewise(points)))
    return Scenario("stalls", "median 60 s of work plus 0-2 pauses of 10-50 % each", jobs)


def speed_change(rng: random.Random, n: int) -> Scenario:
    jobs = []
    for i in range(n):
        median = 60 if i < n // 2 else 150  # e.g. the workflow switched to a heavier model
        jobs.append(SimJob(median * math.exp(rng.gauss(0, 0.2)), curve_from_speeds(wobbly(rng))))
    return Scenario(
        "speed_change", "median 60 s for the first half of the history, 150 s after", jobs
    )


# --- the simulation -----------------------------------------------------------------------


async def _tx(engine: AsyncEngine, owner: Owner, now: datetime, action: Any) -> Any:
    async with engine.begin() as conn:
        service = JobService(Repository(conn), owner, now)
        result = await action(service)
        await service.flush_events()
        return result


def _ms(delta: timedelta) -> float:
    return delta.total_seconds() * 1000


async def run_scenario(
    engine: AsyncEngine, owner: Owner, scenario: Scenario, start: datetime, rng: random.Random
) -> tuple[Tally, datetime]:
    tally, clock = Tally(), start
    for job in scenario.jobs:
        body = {"jobType": scenario.name, "userId": "bench", "title": "simulated"}
        if job.estimated_ms is not None:
            body["estimatedDuration"] = job.estimated_ms
        cmd = CreateJob.model_validate(body)
        created = await _tx(engine, owner, clock, lambda s, c=cmd: s.create(c))
        end = clock + timedelta(seconds=job.total_s)
        started_at = clock
        # The worker reports 0 % as it starts, then its progress every ~2 % of its time.
        await _tx(
            engine,
            owner,
            clock,
            lambda s, j=created["id"]: s.progress(j, UpdateProgress(progress=0)),
        )
        pending = list(CHECKPOINTS)
        t = clock
        while pending:
            t = t + timedelta(seconds=job.total_s / 50 * rng.uniform(0.5, 1.5))
            if t >= end:
                break
            value = min(99, int(100 * job.curve(_ms(t - started_at) / 1000 / job.total_s)))
            shown = await _tx(
                engine,
                owner,
                t,
                lambda s, v=value, j=created["id"]: s.progress(j, UpdateProgress(progress=v)),
            )
            while pending and value >= pending[0]:
                checkpoint = pending.pop(0)
                truth = _ms(end - t)
                plain = plain_remaining(value, _ms(t - started_at))
                eta = shown.get("estimated_completion_at")
                if truth <= 0 or plain is None or eta is None:
                    continue
                tally.ours[checkpoint].append(abs(_ms(eta - t) - truth) / truth)
                tally.plain[checkpoint].append(abs(plain - truth) / truth)
        await _tx(engine, owner, end, lambda s, j=created["id"]: s.complete(j, CompleteJob()))
        clock = end + timedelta(seconds=rng.uniform(1, 10))
    return tally, clock


def _mape(values: list[float]) -> float | None:
    return round(100 * statistics.fmean(values), 1) if values else None


def summarise(tallies: dict[str, Tally]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    everything = Tally()
    for name, tally in tallies.items():
        out[name] = {
            c: {
                "ours": _mape(tally.ours[c]),
                "plain": _mape(tally.plain[c]),
                "n": len(tally.ours[c]),
            }
            for c in CHECKPOINTS
        }
        for c in CHECKPOINTS:
            everything.ours[c] += tally.ours[c]
            everything.plain[c] += tally.plain[c]
    out["all"] = {
        c: {
            "ours": _mape(everything.ours[c]),
            "plain": _mape(everything.plain[c]),
            "n": len(everything.ours[c]),
        }
        for c in CHECKPOINTS
    }
    return out


def markdown(
    summary: dict[str, Any], scenarios: list[Scenario], seeds: list[int], jobs: int
) -> str:
    lines = [
        "# ETA accuracy: blended estimate vs the plain rate rule",
        "",
        f"Seeds {', '.join(map(str, seeds))}; {jobs} jobs per scenario and seed, run through the",
        "real `JobService` on real PostgreSQL with a simulated clock",
        "(`python -m bench.eta_accuracy`). Mean absolute percentage error of the remaining",
        "time shown at the first progress update reaching each checkpoint (lower is better),",
        "ours / plain. Every job counts, including each key's first ones (no history yet).",
        "",
        "| scenario | " + " | ".join(f"{c} %" for c in CHECKPOINTS) + " |",
        "| --- | " + " | ".join("---" for _ in CHECKPOINTS) + " |",
    ]
    for name in [s.name for s in scenarios] + ["all"]:
        cells = [f"{summary[name][c]['ours']} / {summary[name][c]['plain']}" for c in CHECKPOINTS]
        label = f"**{name}**" if name == "all" else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Scenarios:", ""]
    lines += [f"- `{s.name}`: {s.description}." for s in scenarios]
    return "\n".join(lines) + "\n"


async def main_async(url: str, seeds: list[int], jobs: int) -> dict[str, Any]:
    engine = create_engine(url, Settings())
    tallies: dict[str, Tally] = {}
    scenarios: list[Scenario] = []
    try:
        for seed in seeds:
            rng = random.Random(seed)
            scenarios = [f(rng, jobs) for f in (steady, slow_start, stalls, speed_change)]
            owner = Owner(f"bench_eta_{seed}", "test")
            clock = datetime(2026, 1, 1, tzinfo=UTC)
            for scenario in scenarios:
                tally, clock = await run_scenario(
                    engine, owner, scenario, clock, random.Random(f"{seed}:{scenario.name}")
                )
                merged = tallies.setdefault(scenario.name, Tally())
                for c in CHECKPOINTS:
                    merged.ours[c] += tally.ours[c]
                    merged.plain[c] += tally.plain[c]
    finally:
        await engine.dispose()
    summary = summarise(tallies)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "eta_accuracy.json").write_text(
        json.dumps({"seeds": seeds, "jobs": jobs, "mape_percent": summary}, indent=2) + "\n"
    )
    (RESULTS / "eta_accuracy.md").write_text(markdown(summary, scenarios, seeds, jobs))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="7,8,9", help="comma-separated seeds")
    parser.add_argument("--jobs", type=int, default=60, help="jobs per scenario and seed")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    from tests.harness import provision_database

    with tempfile.TemporaryDirectory() as tmp:
        url, handle = provision_database(Path(tmp))
        summary = asyncio.run(main_async(url, seeds, args.jobs))
        del handle
    print((RESULTS / "eta_accuracy.md").read_text())
    worse = [c for c in CHECKPOINTS if summary["all"][c]["ours"] >= summary["all"][c]["plain"]]
    if worse:
        print(f"ours does NOT beat plain at checkpoints {worse}")


if __name__ == "__main__":
    main()
