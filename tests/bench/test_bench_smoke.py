"""The benchmark suite keeps working: ``python -m bench.run --quick`` writes well-formed output.

This checks shapes and correctness (every request answered without error), never speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.harness import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
API_SCENARIOS = ("create", "progress", "get", "list", "complete")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _check_row(row: dict[str, object]) -> None:
    for key in ("throughput", "requests", "p50_ms", "p99_ms"):
        assert _is_number(row[key]), (key, row)
    assert row["requests"] > 0, row
    assert row["errors"] == 0, row  # an error in a tiny run is a bug, not a slow machine


def test_quick_run_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True
    assert results["machine"]["cores"] >= 1
    for c, limit in results["limits"].items():
        assert int(c) > 0
        _check_row(limit["pg_update"])
        _check_row(limit["echo"])

    scenarios = results["scenarios"]
    for name in API_SCENARIOS:
        assert scenarios[name], name
        for row in scenarios[name]:
            _check_row(row)
            assert _is_number(row["ratio_to_limit"])
    children = scenarios["child_progress"]
    assert [r["children"] for r in children] == results["sizes"]["child_counts"]
    for row in children:
        _check_row(row)

    eta = scenarios["eta_progress"]
    assert eta["history"] == results["sizes"]["eta_history"]
    assert [r["concurrency"] for r in eta["rows"]] == results["sizes"]["concurrencies"]
    for row in eta["rows"]:
        for side in ("cold", "learned"):
            assert row[side]["requests"] > 0 and row[side]["errors"] == 0, row
            assert _is_number(row[side]["throughput"]), row
        assert _is_number(row["throughput_ratio"]), row

    batch = scenarios["create_batch"]
    assert batch["errors"] == 0, batch
    assert batch["statuses"] == {"201": results["sizes"]["batch_children"]}
    assert batch["parent_children_total"] == results["sizes"]["batch_children"]

    assert "sse_skipped" not in results, results["sse_skipped"]  # the server has GET /v1/sse
    assert scenarios["sse_latency"]
    for row in scenarios["sse_latency"]:
        assert row["connected"] == row["subscribers"], row
        assert row["write_errors"] == 0, row
        assert row["matched"] > 0, row
        assert row["server"]["events_delivered"] > 0, row
    # One user's largest fan-out is also measured by the lean client, every stream timed.
    spread = [r for r in scenarios["sse_latency"] if r["client"].startswith("spread")]
    assert [(r["subscribers"], r["shape"]) for r in spread] == [
        (max(results["sizes"]["sse_subscribers"]), "same_user")
    ]
    assert 0 < spread[0]["matched"] <= spread[0]["expected_recorded"], spread[0]
    # ... with the cores each side used while the writer ran, so the report can tell the
    # client's share of a latency from the server's.
    cpu = spread[0]["cpu"]
    assert cpu["server_cores"] > 0 and cpu["client_cores"] > 0, cpu
    assert 0 <= cpu["server_runqueue_share"] <= 1, cpu
    n = max(results["sizes"]["sse_subscribers"])
    compared = [t for t in results["targets"] if t["target"].startswith(f"SSE p99, {n} ")]
    assert len(compared) == 1 and "line client / lean spread client" in compared[0]["target"]
    assert scenarios["fanout"]["events_received"] > 0
    points = scenarios["sse_memory"]["points"]
    assert [p["connections"] for p in points] == results["sizes"]["memory_steps"]
    assert all(p["rss_kb"] > 0 for p in points)

    targets = results["targets"]
    assert targets and all({"target", "measured", "goal", "met"} <= set(t) for t in targets)

    markdown = (out / "results.md").read_text()
    assert markdown.startswith("# Benchmark results")
    assert "## Targets" in markdown and "## API scenarios" in markdown
    assert "## Progress on a type with ETA history" in markdown
    assert results["plots"]
    for name in results["plots"]:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f"`{name}`" in markdown
