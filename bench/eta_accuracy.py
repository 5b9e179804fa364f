"""ETA accuracy: our estimate vs the plain rate rule, per family of job shapes and checkpoint.

Reproducible (seeded). Each family is one ETA key whose jobs run one after another on a
simulated clock through the real ``JobService`` against a real PostgreSQL (embedded, or the
server named by ``SEENN_TEST_DATABASE_URL``), each write in its own transaction. At the
first progress update reaching 10/25/50/75 % we record the remaining time the job shows
(``estimatedCompletionAt - now``) and its ``etaConfidence``, and what the plain rule gives on
the same update (``remaining = (100 - progress) / rate``, rate = progress / time since the
job was created: no family has a queue wait), and compare both with the true remaining
time. Every job counts, including a key's first ones.

Reported: MAPE per family and checkpoint (ours / plain) and the worst cell against the
plain rule; calibration of ``etaConfidence`` (predicted against the observed share of
estimates within ±20 % of the true remaining time); the Spearman correlation between
``etaConfidence`` and the absolute error at each checkpoint; each goal met or missed.

    .venv/bin/python -m bench.eta_accuracy [--seeds 7,8,9] [--held-out 11,12,13] [--jobs 60]

The estimator was tuned while looking at the first seeds only; the held-out seeds are
reported apart, as a check that the figures do not owe to that tuning.

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
from app.domain.estimator import TOLERANCE, plain_remaining
from app.domain.service import JobService
from app.settings import Settings

CHECKPOINTS = (10, 25, 50, 75)
RESULTS = Path(__file__).resolve().parent / "results"
Curve = Callable[[float], float]  # fraction of the job's time → fraction of its work
# Goals: no cell more than this many MAPE points worse than the plain rule; overall error
# under this share of the plain rule's; Spearman(confidence, |error|) at most this.
WORST_CELL_POINTS = 3.0
OVERALL_RATIO = 1 / 3
SPEARMAN_MAX = -0.3


@dataclass
class SimJob:
    """One simulated job: true duration (s), the progress reports its worker sends
    (seconds after creation, percent) and its given estimate. ``zero_first``: the worker
    reports 0 % as it starts (at creation)."""

    total_s: float
    reports: list[tuple[float, int]]
    estimated_ms: int | None = None
    zero_first: bool = True


@dataclass
class Scenario:
    name: str
    description: str
    jobs: list[SimJob]


@dataclass
class Sample:
    ours: float  # absolute relative error of the remaining time shown
    plain: float
    confidence: float | None


@dataclass
class Tally:
    samples: dict[int, list[Sample]] = field(default_factory=lambda: {c: [] for c in CHECKPOINTS})
    # Per job: the largest move of the shown completion time between consecutive updates
    # from 10 % on, as a share of the job's duration (ours, plain).
    jumps: list[tuple[float, float]] = field(default_factory=list)


# --- job shapes ------------------------------------------------------------------------------


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


def ticking(rng: random.Random, total_s: float, curve: Curve) -> list[tuple[float, int]]:
    """A worker that reports its progress about every 2 % of its time."""
    reports, t = [], 0.0
    while True:
        t += total_s / 50 * rng.uniform(0.5, 1.5)
        if t >= total_s:
            return reports
        reports.append((t, min(99, int(100 * curve(t / total_s)))))


def _job(rng: random.Random, total_s: float, curve: Curve, **kw: Any) -> SimJob:
    return SimJob(total_s, ticking(rng, total_s, curve), **kw)


def steady(rng: random.Random, n: int) -> Scenario:
    jobs = [
        _job(rng, 60 * math.exp(rng.gauss(0, 0.3)), curve_from_speeds(wobbly(rng)))
        for _ in range(n)
    ]
    return Scenario("steady", "median 60 s, ±30 % spread, mildly uneven pace", jobs)


def even(rng: random.Random, n: int) -> Scenario:
    jobs = [
        _job(rng, 60 * math.exp(rng.gauss(0, 0.5)), curve_from_speeds(wobbly(rng, spread=0.05)))
        for _ in range(n)
    ]
    return Scenario("even", "median 60 s, ±50 % spread, evenly paced (±5 %)", jobs)


def two_sizes(rng: random.Random, n: int) -> Scenario:
    jobs = []
    for _ in range(n):
        median = rng.choice((20, 120))  # e.g. a thumbnail or a full render, one jobType
        jobs.append(
            _job(rng, median * math.exp(rng.gauss(0, 0.15)), curve_from_speeds(wobbly(rng)))
        )
    return Scenario("two_sizes", "half the jobs about 20 s, half about 120 s (±15 %)", jobs)


def slow_start(rng: random.Random, n: int) -> Scenario:
    jobs = []
    for _ in range(n):
        setup_time = rng.uniform(0.15, 0.35)  # e.g. loading a model: little visible progress
        setup_work = rng.uniform(0.02, 0.06)
        curve = piecewise([(0, 0), (setup_time, setup_work), (1, 1)])
        jobs.append(_job(rng, 90 * math.exp(rng.gauss(0, 0.3)), curve, estimated_ms=90_000))
    return Scenario(
        "slow_start",
        "median 90 s, created with estimatedDuration 90 s; 15-35 % of the time spent under"
        " 6 % progress",
        jobs,
    )


def pauses(rng: random.Random, n: int) -> Scenario:
    jobs = []
    for _ in range(n):
        work = 60 * math.exp(rng.gauss(0, 0.3))
        stops = sorted(
            (rng.uniform(0.1, 0.9), work * rng.uniform(0.1, 0.5))
            for _ in range(rng.choice((0, 1, 1, 2)))
        )
        total = work + sum(p for _, p in stops)
        points, clock, done = [(0.0, 0.0)], 0.0, 0.0
        for at, pause in stops:
            clock += (at - done) * work
            points.append((clock / total, at))
            clock += pause
            points.append((clock / total, at))
            done = at
        points.append((1.0, 1.0))
        jobs.append(_job(rng, total, piecewise(points)))
    return Scenario("pauses", "median 60 s of work plus 0-2 random pauses of 10-50 % each", jobs)


def steps(rng: random.Random, n: int) -> Scenario:
    jobs = []
    for _ in range(n):
        items = rng.randint(4, 12)  # a loop over a job's items, reporting after each one
        times = [8 * math.exp(rng.gauss(0, 0.3)) for _ in range(items)]
        reports, clock = [], 0.0
        for done, seconds in enumerate(times[:-1], 1):
            clock += seconds
            reports.append((clock, 100 * done // items))
        jobs.append(SimJob(sum(times), reports, zero_first=False))
    return Scenario(
        "steps",
        "a loop over 4-12 items of about 8 s (±30 %) each, reporting only after each item"
        " (no 0 % report: the estimate runs from creation)",
        jobs,
    )


def speed_change(rng: random.Random, n: int) -> Scenario:
    jobs = []
    for i in range(n):
        median = 60 if i < n // 2 else 150  # e.g. the workflow switched to a heavier model
        jobs.append(_job(rng, median * math.exp(rng.gauss(0, 0.2)), curve_from_speeds(wobbly(rng))))
    return Scenario(
        "speed_change", "median 60 s for the first half of the history, 150 s after", jobs
    )


FAMILIES = (steady, even, two_sizes, slow_start, pauses, steps, speed_change)


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
        body: dict[str, Any] = {"jobType": scenario.name, "userId": "bench", "title": "sim"}
        if job.estimated_ms is not None:
            body["estimatedDuration"] = job.estimated_ms
        cmd = CreateJob.model_validate(body)
        created = await _tx(engine, owner, clock, lambda s, c=cmd: s.create(c))
        job_id = created["id"]
        end = clock + timedelta(seconds=job.total_s)
        if job.zero_first:
            zero = UpdateProgress(progress=0)
            await _tx(engine, owner, clock, lambda s, j=job_id, u=zero: s.progress(j, u))
        pending = list(CHECKPOINTS)
        last: tuple[datetime, float] | None = None
        jump = (0.0, 0.0)
        for at_s, value in job.reports:
            t = clock + timedelta(seconds=at_s)
            update = UpdateProgress(progress=value)
            shown = await _tx(engine, owner, t, lambda s, j=job_id, u=update: s.progress(j, u))
            eta_at = shown.get("estimated_completion_at")
            plain_left = plain_remaining(value, _ms(t - clock))
            if value >= CHECKPOINTS[0] and eta_at is not None and plain_left is not None:
                plain_at = _ms(t - clock) + plain_left
                if last is not None:
                    jump = (
                        max(jump[0], _ms(abs(eta_at - last[0])) / 1000 / job.total_s),
                        max(jump[1], abs(plain_at - last[1]) / 1000 / job.total_s),
                    )
                last = (eta_at, plain_at)
            while pending and value >= pending[0]:
                checkpoint = pending.pop(0)
                truth = _ms(end - t)
                plain = plain_remaining(value, _ms(t - clock))
                eta = shown.get("estimated_completion_at")
                if truth <= 0 or plain is None or eta is None:
                    continue
                tally.samples[checkpoint].append(
                    Sample(
                        abs(_ms(eta - t) - truth) / truth,
                        abs(plain - truth) / truth,
                        shown.get("eta_confidence"),
                    )
                )
        tally.jumps.append(jump)
        await _tx(engine, owner, end, lambda s, j=job_id: s.complete(j, CompleteJob()))
        clock = end + timedelta(seconds=rng.uniform(1, 10))
    return tally, clock


# --- what can be known ---------------------------------------------------------------------


def _weighted_median(values: list[float], weights: list[float]) -> float:
    pairs = sorted(zip(values, weights, strict=True))
    half, seen = sum(weights) / 2, 0.0
    for value, weight in pairs:
        seen += weight
        if seen >= half:
            return value
    return pairs[-1][0]


def oracle_floor(jobs: int = 20_000, seed: int = 99, neighbours: int = 200) -> dict[str, Any]:
    """MAPE per family and checkpoint of an estimator that knows each family's distribution.

    It sees what ours sees at the checkpoint, the progress and the time since creation, and
    answers with the MAPE-optimal remaining time (the 1/R-weighted median) among the
    ``neighbours`` of ``jobs`` simulated jobs of the family whose rate-implied duration is
    closest. No estimator that uses only progress and elapsed time does better on average; one
    that reads the whole report history can (e.g. a pause already taken), a little.
    """
    out: dict[str, Any] = {}
    for family in FAMILIES:
        scenario = family(random.Random(seed), jobs)
        points: dict[int, list[tuple[float, float, float]]] = {c: [] for c in CHECKPOINTS}
        for job in scenario.jobs:
            pending = list(CHECKPOINTS)
            for at_s, value in job.reports:
                while pending and value >= pending[0]:
                    c = pending.pop(0)
                    left = job.total_s - at_s
                    plain = plain_remaining(value, at_s)
                    if left > 0 and plain is not None:
                        points[c].append((math.log(at_s + plain), left, plain))
        out[scenario.name] = {}
        for c, rows in points.items():
            rows.sort()
            ours, theirs = [], []
            for i in range(0, len(rows), neighbours):
                group = rows[i : i + neighbours]
                ratios = [left / plain for _, left, plain in group]
                best = _weighted_median(ratios, [1 / left for _, left, _ in group])
                ours += [abs(best * plain - left) / left for _, left, plain in group]
                theirs += [abs(plain - left) / left for _, left, plain in group]
            out[scenario.name][c] = {"floor": _mape(ours), "plain": _mape(theirs)}
    everything = [out[n][c] for n in out for c in CHECKPOINTS]
    floor = statistics.fmean(x["floor"] or 0.0 for x in everything)
    plain = statistics.fmean(x["plain"] or 0.0 for x in everything)
    out["all"] = {
        "floor": round(floor, 1),
        "plain": round(plain, 1),
        "ratio": round(floor / plain, 3),
    }
    return out


# --- statistics -----------------------------------------------------------------------------


def _mape(values: list[float]) -> float | None:
    return round(100 * statistics.fmean(values), 1) if values else None


def _ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on ranks, ties averaged)."""
    if len(xs) < 3:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else round(sxy / math.sqrt(sxx * syy), 3)


_BINS = ((0.0, 0.3), (0.3, 0.5), (0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.01))


def calibration(samples: list[Sample]) -> list[dict[str, Any]]:
    """Reliability table: per confidence bin, mean predicted vs share within tolerance."""
    rows = []
    for low, high in _BINS:
        inside = [s for s in samples if s.confidence is not None and low <= s.confidence < high]
        if inside:
            predicted = statistics.fmean(s.confidence or 0.0 for s in inside)
            hits = statistics.fmean(1.0 if s.ours <= TOLERANCE else 0.0 for s in inside)
            rows.append(
                {
                    "bin": f"{low:.1f}-{min(high, 1.0):.1f}",
                    "n": len(inside),
                    "predicted": round(predicted, 3),
                    "observed": round(hits, 3),
                }
            )
    return rows


def _every(tally: Tally) -> list[Sample]:
    return [s for c in CHECKPOINTS for s in tally.samples[c]]


def summarise(tallies: dict[str, Tally]) -> dict[str, Any]:
    cells: dict[str, Any] = {}
    everything = Tally()
    for name, tally in tallies.items():
        cells[name] = {}
        for c in CHECKPOINTS:
            got = tally.samples[c]
            cells[name][c] = {
                "ours": _mape([s.ours for s in got]),
                "plain": _mape([s.plain for s in got]),
                "n": len(got),
            }
            everything.samples[c] += got
    cells["all"] = {
        c: {
            "ours": _mape([s.ours for s in everything.samples[c]]),
            "plain": _mape([s.plain for s in everything.samples[c]]),
            "n": len(everything.samples[c]),
        }
        for c in CHECKPOINTS
    }
    worst = max(
        (
            (cell["ours"] - cell["plain"], name, c)
            for name in tallies
            for c, cell in cells[name].items()
            if cell["ours"] is not None and cell["plain"] is not None
        ),
        default=(0.0, "", 0),
    )
    # Per checkpoint, the family where we do worst against the plain rule (README's row).
    worst_at = {}
    for c in CHECKPOINTS:
        name = max(
            (n for n in tallies if cells[n][c]["ours"] is not None),
            key=lambda n: cells[n][c]["ours"] - cells[n][c]["plain"],
        )
        worst_at[c] = {
            "family": name,
            "ours": cells[name][c]["ours"],
            "plain": cells[name][c]["plain"],
            "points_worse": round(cells[name][c]["ours"] - cells[name][c]["plain"], 1),
        }
    per_family_worst = {
        name: max(
            (
                (cells[name][c]["ours"] - cells[name][c]["plain"], c)
                for c in CHECKPOINTS
                if cells[name][c]["ours"] is not None
            ),
            default=(0.0, 0),
        )
        for name in tallies
    }
    all_samples = _every(everything)
    overall_ours = statistics.fmean(s.ours for s in all_samples)
    overall_plain = statistics.fmean(s.plain for s in all_samples)
    # The family where the plain rule fails most, and the ratio over all the others.
    hardest = max(tallies, key=lambda n: statistics.fmean(s.plain for s in _every(tallies[n])))
    rest = [s for n in tallies if n != hardest for s in _every(tallies[n])]
    per_family: dict[str, Any] = {}
    jumps = {
        name: {
            "ours": round(100 * statistics.median(j[0] for j in tally.jumps), 1),
            "plain": round(100 * statistics.median(j[1] for j in tally.jumps), 1),
        }
        for name, tally in tallies.items()
        if tally.jumps
    }
    for name, tally in tallies.items():
        per_family[name] = {}
        for c in CHECKPOINTS:
            rated = [s for s in tally.samples[c] if s.confidence is not None]
            per_family[name][c] = {
                "confidence": round(statistics.fmean(s.confidence or 0.0 for s in rated), 2)
                if rated
                else None,
                "observed": round(statistics.fmean(s.ours <= TOLERANCE for s in rated), 2)
                if rated
                else None,
                "spearman": spearman([s.confidence or 0.0 for s in rated], [s.ours for s in rated]),
            }
    rank = {}
    for c in CHECKPOINTS:
        rated = [s for s in everything.samples[c] if s.confidence is not None]
        rank[c] = {
            "spearman": spearman([s.confidence or 0.0 for s in rated], [s.ours for s in rated]),
            "n": len(rated),
            "of": len(everything.samples[c]),
        }
    return {
        "mape_percent": cells,
        "worst_cell": {"points_worse": round(worst[0], 1), "family": worst[1], "at": worst[2]},
        "worst_per_checkpoint": worst_at,
        "worst_per_family": {
            k: {"points_worse": round(v[0], 1), "at": v[1]} for k, v in per_family_worst.items()
        },
        "overall": {
            "ours": round(100 * overall_ours, 1),
            "plain": round(100 * overall_plain, 1),
            "ratio": round(overall_ours / overall_plain, 3),
            "without": hardest,
            "ours_without": round(100 * statistics.fmean(s.ours for s in rest), 1),
            "plain_without": round(100 * statistics.fmean(s.plain for s in rest), 1),
            "ratio_without": round(
                statistics.fmean(s.ours for s in rest) / statistics.fmean(s.plain for s in rest), 3
            ),
            # The ratio the other families would need for the goal with no error at all on
            # the hardest one.
            "rest_ratio_needed": round(
                OVERALL_RATIO * sum(s.plain for s in all_samples) / sum(s.plain for s in rest), 3
            ),
        },
        "per_family_confidence": per_family,
        "jumps_percent": jumps,
        "spearman": rank,
        "calibration": {str(c): calibration(everything.samples[c]) for c in CHECKPOINTS}
        | {"all": calibration(all_samples)},
    }


def _closed(overall: dict[str, Any], floor: dict[str, Any]) -> int:
    """How much of the gap between the plain rule and the floor our estimate closes, in %."""
    gap = floor["all"]["plain"] - floor["all"]["floor"]
    return round(100 * (overall["plain"] - overall["ours"]) / gap) if gap > 0 else 0


def _floor_without(floor: dict[str, Any], hardest: str) -> float:
    """The floor's overall ratio to the plain rule without the hardest family."""
    cells = [floor[n][c] for n in floor if n not in ("all", hardest) for c in CHECKPOINTS]
    return round(
        statistics.fmean(x["floor"] for x in cells) / statistics.fmean(x["plain"] for x in cells),
        3,
    )


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _mape_table(summary: dict[str, Any], names: list[str]) -> list[str]:
    cells = summary["mape_percent"]
    lines = [
        "| family | " + " | ".join(f"{c} %" for c in CHECKPOINTS) + " | worst vs plain |",
        "| --- | " + " | ".join("---" for _ in CHECKPOINTS) + " | --- |",
    ]
    for name in [*names, "all"]:
        row = [f"{cells[name][c]['ours']} / {cells[name][c]['plain']}" for c in CHECKPOINTS]
        if name == "all":
            label, tail = "**all**", ""
        else:
            label = name
            w = summary["worst_per_family"][name]
            tail = f"{w['points_worse']:+.1f} at {w['at']} %"
        lines.append(f"| {label} | " + " | ".join(row) + f" | {tail} |")
    at = summary["worst_per_checkpoint"]
    lines.append(
        "| worst cell vs plain | "
        + " | ".join(
            f"{at[c]['family']} {at[c]['ours']} / {at[c]['plain']} ({at[c]['points_worse']:+.1f})"
            for c in CHECKPOINTS
        )
        + " | |"
    )
    overall = summary["overall"]
    lines += [
        "",
        f"Overall (every checkpoint of every job): ours {overall['ours']} %, plain "
        f"{overall['plain']} %, ratio {overall['ratio']}; without `{overall['without']}`"
        f" (where the plain rule fails most) the ratio is {overall['ratio_without']}.",
    ]
    return lines


def markdown(
    summary: dict[str, Any],
    scenarios: list[Scenario],
    seeds: list[int],
    jobs: int,
    held: dict[str, Any] | None = None,
    held_seeds: list[int] | None = None,
) -> str:
    worst = summary["worst_cell"]
    overall = summary["overall"]
    rank = summary["spearman"]
    names = [s.name for s in scenarios]
    lines = [
        "# ETA accuracy: our estimate vs the plain rate rule",
        "",
        f"Seeds {', '.join(map(str, seeds))}; {jobs} jobs per family and seed, run through the",
        "real `JobService` on real PostgreSQL with a simulated clock",
        "(`python -m bench.eta_accuracy`). Mean absolute percentage error of the remaining",
        "time shown at the first progress update reaching each checkpoint (lower is better),",
        "**ours / plain**; the last column is our worst cell minus the plain rule's at the same",
        "checkpoint. Every job counts, including each key's first ones (no history yet).",
        "",
        *_mape_table(summary, names),
        "",
    ]
    if held is not None:
        hr = held["spearman"]
        lines += [
            "## Held-out seeds",
            "",
            f"Seeds {', '.join(map(str, held_seeds or []))}, never looked at while the"
            " estimator was tuned (the figures above were):",
            "",
            *_mape_table(held, names),
            f"Worst cell {held['worst_cell']['points_worse']:+.1f}"
            f" ({held['worst_cell']['family']} at {held['worst_cell']['at']} %); Spearman"
            " (confidence, |error|) at "
            + ", ".join(f"{c} %: {hr[c]['spearman']}" for c in CHECKPOINTS)
            + ".",
            "",
        ]
    lines += [
        "Stability: per job, the largest move of the shown completion time between two"
        " consecutive updates from 10 % on, as a share of the job's duration; median over the"
        " family's jobs, ours / plain: "
        + "; ".join(
            f"{n} {j['ours']} / {j['plain']} %" for n, j in summary["jumps_percent"].items()
        )
        + ".",
        "",
    ]
    floor = summary.get("floor")
    if floor:
        lines += [
            "## What can be known",
            "",
            "MAPE of an estimator that knows each family's distribution exactly (20,000"
            " simulated jobs), sees what ours sees at the checkpoint (progress and time since"
            " creation) and answers with the error-minimising remaining time among the 200"
            " simulated jobs whose rate-implied duration is closest; **floor / plain**:",
            "",
            "| family | " + " | ".join(f"{c} %" for c in CHECKPOINTS) + " |",
            "| --- | " + " | ".join("---" for _ in CHECKPOINTS) + " |",
        ]
        for name in names:
            lines.append(
                f"| {name} | "
                + " | ".join(
                    f"{floor[name][c]['floor']} / {floor[name][c]['plain']}" for c in CHECKPOINTS
                )
                + " |"
            )
        lines += [
            "",
            f"Overall: floor {floor['all']['floor']} %, plain {floor['all']['plain']} %, ratio"
            f" **{floor['all']['ratio']}**.",
            "",
        ]
    lines += [
        "## Confidence",
        "",
        "`etaConfidence` claims the probability that the estimate lands within"
        f" ±{round(TOLERANCE * 100)} % of the true remaining time. Spearman correlation"
        " between the confidence shown and the absolute error (jobs whose estimate carries a"
        " confidence, i.e. from the key's fifth completion on):",
        "",
        "| checkpoint | Spearman | jobs with a confidence |",
        "| --- | --- | --- |",
    ]
    for c in CHECKPOINTS:
        lines.append(f"| {c} % | {rank[c]['spearman']} | {rank[c]['n']} of {rank[c]['of']} |")
    lines += [
        "",
        "Reliability (all checkpoints): mean confidence shown against the observed share of"
        f" those estimates within ±{round(TOLERANCE * 100)} %:",
        "",
        "| confidence | estimates | predicted | observed |",
        "| --- | --- | --- | --- |",
    ]
    for row in summary["calibration"]["all"]:
        lines.append(f"| {row['bin']} | {row['n']} | {row['predicted']} | {row['observed']} |")
    lines += [
        "",
        "Per family: mean confidence shown / observed share within the tolerance, and the"
        " Spearman correlation within the family:",
        "",
        "| family | " + " | ".join(f"{c} %" for c in CHECKPOINTS) + " |",
        "| --- | " + " | ".join("---" for _ in CHECKPOINTS) + " |",
    ]
    for name in [s.name for s in scenarios]:
        row = summary["per_family_confidence"][name]
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{row[c]['confidence']} / {row[c]['observed']} (ρ {row[c]['spearman']})"
                for c in CHECKPOINTS
            )
            + " |"
        )
    spearman_ok = all(
        rank[c]["spearman"] is not None and rank[c]["spearman"] <= SPEARMAN_MAX for c in CHECKPOINTS
    )
    lines += [
        "",
        "## Goals",
        "",
        f"- No family more than {WORST_CELL_POINTS:g} MAPE points worse than the plain rule at"
        f" any checkpoint: worst cell {worst['points_worse']:+.1f} ({worst['family']} at"
        f" {worst['at']} %): {_verdict(worst['points_worse'] <= WORST_CELL_POINTS)}.",
        f"- Overall error under {OVERALL_RATIO:.2f} of the plain rule's: ratio"
        f" {overall['ratio']}: {_verdict(overall['ratio'] < OVERALL_RATIO)}.",
    ]
    if overall["ratio"] >= OVERALL_RATIO:
        lines.append(
            (
                f"  Cause: even the estimator that knows each family's distribution exactly"
                f" reaches only {floor['all']['ratio']} (above): on these families the goal is"
                " out of reach for any estimator that sees progress and elapsed time. Ours"
                f" closes {_closed(overall, floor)} % of the gap between the plain rule and"
                " that floor, learning online from at most 20 jobs of history."
            )
            if floor
            else "  Cause:"
        )
        lines.append(
            f"  Outside `{overall['without']}` the plain rule's error is"
            f" {overall['plain_without']} % against our {overall['ours_without']} %"
            f" (ratio {overall['ratio_without']}). Even with no error at all on"
            f" `{overall['without']}`, the goal would need a ratio of"
            f" {overall['rest_ratio_needed']} on the other families"
            + (
                f", where the floor's own ratio is {_floor_without(floor, overall['without'])}"
                if floor
                else ""
            )
            + ": their error is mostly pace still to come or pauses not yet taken, which"
            " nothing seen at the checkpoint predicts. The overall ratio is set by how much of"
            " the plain rule's error comes from shapes it misreads, i.e. by the mix of"
            " families."
        )
    lines.append(
        f"- Spearman(confidence, |error|) ≤ {SPEARMAN_MAX} at every checkpoint:"
        f" {', '.join(str(rank[c]['spearman']) for c in CHECKPOINTS)}:"
        f" {_verdict(spearman_ok)}."
    )
    missed = [
        c for c in CHECKPOINTS if rank[c]["spearman"] is None or rank[c]["spearman"] > SPEARMAN_MAX
    ]
    for c in missed:
        within = [row[c]["spearman"] for row in summary["per_family_confidence"].values()]
        shares = [row[c]["observed"] for row in summary["per_family_confidence"].values()]
        known = [w for w in within if w is not None]
        seen = ", ".join(str(x) for x in sorted(x for x in shares if x is not None))
        lines.append(
            f"  Cause at {c} %: within each family the correlation is between"
            f" {min(known, default=0)} and {max(known, default=0)}: nothing observable at that"
            " point ranks one key's jobs, so the ranking comes from differences between"
            f" families, whose shares within the tolerance there are {seen}. The confidence"
            " is calibrated per family (table above); it cannot rank families whose errors"
            " are alike."
        )
    lines += [
        "",
        "Families:",
        "",
    ]
    lines += [f"- `{s.name}`: {s.description}." for s in scenarios]
    return "\n".join(lines) + "\n"


async def _run_seeds(url: str, seeds: list[int], jobs: int) -> dict[str, Tally]:
    """Every family of every seed, each its own key on its own simulated clock, run
    concurrently (keys share nothing, so the order of their writes does not matter)."""
    engine = create_engine(url, Settings())
    runs = []
    for seed in seeds:
        rng = random.Random(seed)
        owner = Owner(f"bench_eta_{seed}", "test")
        for scenario in [f(rng, jobs) for f in FAMILIES]:
            start = datetime(2026, 1, 1, tzinfo=UTC)
            runs.append(
                (
                    scenario.name,
                    run_scenario(
                        engine, owner, scenario, start, random.Random(f"{seed}:{scenario.name}")
                    ),
                )
            )
    tallies: dict[str, Tally] = {}
    try:
        done = await asyncio.gather(*(run for _, run in runs))
    finally:
        await engine.dispose()
    for (name, _), (tally, _clock) in zip(runs, done, strict=True):
        merged = tallies.setdefault(name, Tally())
        for c in CHECKPOINTS:
            merged.samples[c] += tally.samples[c]
        merged.jumps += tally.jumps
    return tallies


async def main_async(
    url: str, seeds: list[int], jobs: int, held_out: list[int] | None = None
) -> dict[str, Any]:
    """Run the seeds (and the held-out seeds, reported apart) and write the results."""
    summary = summarise(await _run_seeds(url, seeds, jobs))
    held = summarise(await _run_seeds(url, held_out, jobs)) if held_out else None
    summary["floor"] = oracle_floor()
    scenarios = [f(random.Random(0), 1) for f in FAMILIES]
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"seeds": seeds, "jobs": jobs, **summary}
    if held is not None:
        payload["held_out"] = {"seeds": held_out, **held}
    (RESULTS / "eta_accuracy.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / "eta_accuracy.md").write_text(
        markdown(summary, scenarios, seeds, jobs, held, held_out or [])
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="7,8,9", help="comma-separated seeds")
    parser.add_argument(
        "--held-out",
        default="11,12,13",
        help="comma-separated seeds never used while tuning the estimator, reported apart"
        " ('' for none)",
    )
    parser.add_argument("--jobs", type=int, default=60, help="jobs per family and seed")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    held_out = [int(s) for s in args.held_out.split(",") if s.strip()]
    from tests.support.harness import provision_database

    with tempfile.TemporaryDirectory() as tmp:
        url, handle = provision_database(Path(tmp))
        asyncio.run(main_async(url, seeds, args.jobs, held_out))
        del handle
    print((RESULTS / "eta_accuracy.md").read_text())


if __name__ == "__main__":
    main()
