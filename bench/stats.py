"""Percentiles and summaries shared by the load generator and the report."""

from __future__ import annotations

from typing import Any


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank; None when there are no values."""
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def summarize(latencies: list[float], elapsed: float) -> dict[str, Any]:
    """Throughput (per second) and latency percentiles (milliseconds) of one run."""
    values = sorted(latencies)

    def ms(q: float) -> float | None:
        v = percentile(values, q)
        return None if v is None else round(v * 1000, 3)

    return {
        "requests": len(values),
        "seconds": round(elapsed, 3),
        "throughput": round(len(values) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": ms(0.50),
        "p90_ms": ms(0.90),
        "p99_ms": ms(0.99),
        "max_ms": None if not values else round(values[-1] * 1000, 3),
    }


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return None if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den
