"""The PNG plots of a run's results (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(results: dict[str, Any], out: Path) -> list[str]:
    """PNG plots; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: list[str] = []
    sc = results["scenarios"]
    conc = [int(c) for c in results["limits"]]

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(
        conc,
        [results["limits"][str(c)]["pg_update"]["throughput"] for c in conc],
        "k--o",
        label="limit: asyncpg UPDATE",
    )
    ax[0].plot(
        conc,
        [results["limits"][str(c)]["echo"]["throughput"] for c in conc],
        "k:o",
        label="limit: ASGI echo",
    )
    for name in ("create", "progress", "get", "list", "complete"):
        if name in sc:
            rows = sc[name]
            ax[0].plot(
                [r["concurrency"] for r in rows], [r["throughput"] for r in rows], "-o", label=name
            )
            ax[1].plot(
                [r["concurrency"] for r in rows],
                [r["p99_ms"] for r in rows],
                "-o",
                label=f"{name} p99",
            )
    for a, title, ylabel in ((ax[0], "Throughput", "requests/s"), (ax[1], "p99 latency", "ms")):
        a.set_xscale("log", base=2)
        a.set_xlabel("concurrency")
        a.set_ylabel(ylabel)
        a.set_title(title)
        a.set_yscale("log")  # the limits sit an order of magnitude above the API
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "throughput_latency.png", dpi=110)
    plt.close(fig)
    files.append("throughput_latency.png")

    if "child_progress" in sc:
        rows = sc["child_progress"]
        fig, a = plt.subplots(figsize=(5.5, 4))
        a.plot(
            [r["children"] for r in rows],
            [r["ms_per_write"] for r in rows],
            "-o",
            label="ms per write",
        )
        a.plot(
            [r["children"] for r in rows], [r["p50_ms"] for r in rows], "-o", label="p50 latency ms"
        )
        a.set_xscale("log")
        a.set_ylim(bottom=0)
        a.set_xlabel("children of the parent")
        a.set_title("Child progress cost")
        a.legend()
        a.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "child_progress.png", dpi=110)
        plt.close(fig)
        files.append("child_progress.png")

    if sc.get("sse_latency"):
        fig, a = plt.subplots(figsize=(5.5, 4))
        for shape, mark in (("same_user", "o"), ("distinct_users", "s")):
            rows = [
                r
                for r in sc["sse_latency"]
                if r["shape"] == shape
                and r.get("client", "line") == "line"
                and r["p50_ms"] is not None
            ]
            if rows:
                a.plot(
                    [r["subscribers"] for r in rows],
                    [r["p50_ms"] for r in rows],
                    f"-{mark}",
                    label=f"{shape} p50",
                )
                a.plot(
                    [r["subscribers"] for r in rows],
                    [r["p99_ms"] for r in rows],
                    f"--{mark}",
                    label=f"{shape} p99",
                )
        for r in sc["sse_latency"]:
            if "replica" in r["shape"] and r["p50_ms"] is not None:
                a.plot(
                    [r["subscribers"]] * 2, [r["p50_ms"], r["p99_ms"]], "k^", label="other replica"
                )
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("subscribers")
        a.set_ylabel("ms")
        a.set_title("SSE delivery latency")
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "sse_latency.png", dpi=110)
        plt.close(fig)
        files.append("sse_latency.png")

    if "sse_memory" in sc:
        pts = sc["sse_memory"]["points"]
        fig, a = plt.subplots(figsize=(5.5, 4))
        a.plot([p["connections"] for p in pts], [p["rss_kb"] / 1024 for p in pts], "-o")
        a.set_xlabel("idle SSE connections")
        a.set_ylabel("server RSS (MB)")
        a.set_title(f"Memory: {sc['sse_memory']['kb_per_connection']} kB per connection")
        a.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "sse_memory.png", dpi=110)
        plt.close(fig)
        files.append("sse_memory.png")
    return files


# ---------------------------------------------------------------- main
