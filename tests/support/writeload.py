"""A steady write load that remembers what the server acknowledged, and the checks that the
database holds all of it (used by the crash and database-restart tests).

Every job is written by one task at a time, so per job at most one write is in flight:
the database must hold the last acknowledged state, or the state of the write that was in
flight (committed, but its answer lost).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from tests.support.oracle import parent_state

State = tuple[str, int]  # (status, progress); progress -1: any (a failed job keeps its own)


def matches(stored: State, expected: State | None) -> bool:
    return expected is not None and stored[0] == expected[0] and expected[1] in (-1, stored[1])


@dataclass
class Ledger:
    """What was acknowledged (2xx), what may have happened (answer lost), and every status."""

    acked: dict[str, State] = field(default_factory=dict)
    maybe: dict[str, State] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    unexpected: list[str] = field(default_factory=list)
    ack_times: list[float] = field(default_factory=list)
    replayed: int = 0  # answers replayed from an Idempotency-Key record
    resolved_by_reading: int = 0  # retries whose 4xx showed the 503'd attempt had committed

    @property
    def writes_acked(self) -> int:
        return len(self.ack_times)


class Stopped(Exception):
    """The server went away (crash test) or the load is over."""


@dataclass
class WriteLoad:
    """Plain jobs and parents with children, written by concurrent tasks until ``stop``."""

    client: httpx.AsyncClient
    ledger: Ledger = field(default_factory=Ledger)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    retry_unavailable: bool = False  # database-restart test: 503s are retried
    idempotent: bool = False  # send an Idempotency-Key with each write (kept across retries)
    user_id: str = "load_user"

    async def _send(self, path: str, body: dict[str, Any]) -> httpx.Response | None:
        """POST until answered; None when the answer was lost (the server is gone).

        With ``retry_unavailable`` a 503 is retried. The 503'd attempt may still have
        committed, which the retry reveals as INVALID_JOB_STATE or DUPLICATE_CHILD_INDEX;
        the response is marked ``after_unavailable`` so callers can resolve that.
        """
        after_unavailable = False
        headers = {"Idempotency-Key": uuid.uuid4().hex} if self.idempotent else {}
        while True:
            try:
                response = await self.client.post(path, json=body, headers=headers)
            except httpx.TransportError:
                self.ledger.transport_errors += 1
                return None
            self.ledger.statuses[response.status_code] += 1
            if response.headers.get("Idempotent-Replayed"):
                self.ledger.replayed += 1
            if response.status_code != 503 or not self.retry_unavailable:
                response.extensions["after_unavailable"] = after_unavailable
                return response
            after_unavailable = True
            await asyncio.sleep(0.05)

    def _ack(self, job_id: str, state: State) -> None:
        self.ledger.acked[job_id] = state
        self.ledger.maybe.pop(job_id, None)
        self.ledger.ack_times.append(time.monotonic())

    async def _write(self, job_id: str, path: str, body: dict[str, Any], after: State) -> bool:
        """One state change of an existing job; False when the load must end."""
        self.ledger.maybe[job_id] = after
        response = await self._send(path, body)
        if response is None:
            raise Stopped
        if response.status_code == 200:
            self._ack(job_id, after)
            return True
        if response.extensions.get("after_unavailable") and response.status_code == 400:
            # An earlier attempt committed: the server says the job already moved on.
            got = (await self.client.get(f"/jobs/{job_id}")).json()
            if matches((got["status"], got["progress"]), after):
                self.ledger.resolved_by_reading += 1
                self._ack(job_id, after)
                return True
        self.ledger.unexpected.append(f"{path} -> {response.status_code} {response.text[:200]}")
        return False

    async def _create(self, body: dict[str, Any]) -> dict[str, Any] | None:
        response = await self._send("/jobs", body)
        if response is None:
            raise Stopped
        if response.status_code == 201:
            job: dict[str, Any] = response.json()
            self._ack(job["id"], ("pending", 0))
            return job
        if response.extensions.get("after_unavailable") and response.status_code == 409:
            existing = response.json()["error"]["details"]["existingJobId"]
            self.ledger.resolved_by_reading += 1
            self._ack(existing, ("pending", 0))
            return {"id": existing}
        self.ledger.unexpected.append(f"create -> {response.status_code} {response.text[:200]}")
        return None

    async def plain_worker(self, n: int) -> None:
        """Create a job, report progress 10..90, then complete or fail it; repeat."""
        try:
            while not self.stop.is_set():
                job = await self._create(
                    {"jobType": "load", "userId": self.user_id, "title": f"plain {n}"}
                )
                if job is None:
                    return
                for value in range(10, 100, 20):
                    if not await self._write(
                        job["id"],
                        f"/jobs/{job['id']}/progress",
                        {"progress": value},
                        ("running", value),
                    ):
                        return
                await self._finish(job["id"], fail=n % 3 == 0)
        except Stopped:
            return

    async def _finish(self, job_id: str, fail: bool) -> bool:
        if fail:
            body = {"error": {"code": "E_LOAD", "message": "failed on purpose"}}
            return await self._write(job_id, f"/jobs/{job_id}/fail", body, ("failed", -1))
        return await self._write(job_id, f"/jobs/{job_id}/complete", {}, ("completed", 100))

    async def child_worker(self, parent: dict[str, Any], index: int) -> None:
        """One child of ``parent``: create, progress 25/50/75, then complete (or fail)."""
        try:
            child = await self._create(
                {
                    "jobType": "load-child",
                    "userId": parent["userId"],
                    "title": f"c{index}",
                    "parentJobId": parent["id"],
                    "childIndex": index,
                }
            )
            if child is None:
                return
            for value in (25, 50, 75):
                if self.stop.is_set():
                    return
                if not await self._write(
                    child["id"],
                    f"/jobs/{child['id']}/progress",
                    {"progress": value},
                    ("running", value),
                ):
                    return
                await asyncio.sleep(0.05)
            if not self.stop.is_set():
                await self._finish(child["id"], fail=index % 4 == 3)
        except Stopped:
            return

    async def parents(self, count: int, children: int) -> list[dict[str, Any]]:
        made = []
        for i in range(count):
            job = await self._create(
                {
                    "jobType": "load-batch",
                    "userId": self.user_id,
                    "title": f"batch {i}",
                    "totalChildren": children,
                    "childProgressMode": "sequential" if i % 2 else "average",
                }
            )
            assert job is not None
            made.append(job)
        return made

    async def run_parent(self, parent: dict[str, Any], children: int) -> None:
        """The children of one parent, a few at a time, until done or stopped."""
        for start in range(0, children, 4):
            if self.stop.is_set():
                return
            await asyncio.gather(
                *(self.child_worker(parent, i) for i in range(start, min(start + 4, children)))
            )


# --- checks against the database ---------------------------------------------------------


async def assert_acknowledged_writes_durable(db: asyncpg.Connection, ledger: Ledger) -> None:
    """Every acknowledged job exists with its acknowledged state (or the in-flight one)."""
    rows = await db.fetch(
        "SELECT id, status, progress, parent_job_id, total_children FROM jobs"
        " WHERE id = ANY($1::text[])",
        list(ledger.acked),
    )
    found = {r["id"]: r for r in rows}
    missing = set(ledger.acked) - set(found)
    assert not missing, f"acknowledged jobs lost: {sorted(missing)[:5]}"
    wrong = []
    for job_id, state in ledger.acked.items():
        row = found[job_id]
        if row["total_children"] is not None:
            continue  # a parent's state follows its children: checked by recount
        stored = (row["status"], row["progress"])
        if not matches(stored, state) and not matches(stored, ledger.maybe.get(job_id)):
            wrong.append((job_id, state, ledger.maybe.get(job_id), stored))
    assert not wrong, f"acknowledged states lost (acked, in flight, stored): {wrong[:5]}"


_PARENTS = """
SELECT p.id, p.child_progress_mode AS mode, p.status, p.progress, p.total_children,
       p.completed_children, p.failed_children, p.running_children, p.cancelled_children,
       p.child_progress_sum,
       coalesce(array_agg(c.status) FILTER (WHERE c.id IS NOT NULL), '{}') AS child_statuses,
       coalesce(array_agg(c.progress) FILTER (WHERE c.id IS NOT NULL), '{}') AS child_progress
FROM jobs p LEFT JOIN jobs c ON c.parent_job_id = p.id
WHERE p.app_id = $1 AND p.total_children IS NOT NULL
GROUP BY p.id
"""


async def assert_parents_match_recount(db: asyncpg.Connection, app_id: str) -> int:
    """Every parent's stored counters, progress and status are what the contract's rules
    (``tests/support/oracle.py``) give for its children as stored.

    Returns the number of parents checked.
    """
    rows = await db.fetch(_PARENTS, app_id)
    for r in rows:
        children = list(zip(r["child_statuses"], r["child_progress"], strict=True))
        expected = parent_state(r["mode"], r["total_children"], children)
        counters = expected["children"]
        assert isinstance(counters, dict)
        stored = {
            "status": r["status"],
            "progress": r["progress"],
            "completed": r["completed_children"],
            "failed": r["failed_children"],
            "running": r["running_children"],
            "cancelled": r["cancelled_children"],
        }
        want = {
            "status": expected["status"],
            "progress": expected["progress"],
            **{k: counters[k] for k in ("completed", "failed", "running", "cancelled")},
        }
        assert stored == want, (r["id"], stored, want, children)
        points = sum(100 if s == "completed" else p for s, p in children)
        assert r["child_progress_sum"] == points, (r["id"], r["child_progress_sum"], points)
    return len(rows)


async def assert_event_streams_gapless(db: asyncpg.Connection, app_id: str) -> int:
    """Each of the app's event streams holds exactly the events 1..last_seq. Returns events."""
    rows = await db.fetch(
        "SELECT s.stream_id, s.last_seq, count(e.seq) AS n, min(e.seq) AS lo, max(e.seq) AS hi"
        " FROM event_streams s LEFT JOIN events e USING (stream_id)"
        " WHERE s.app_id = $1 GROUP BY s.stream_id, s.last_seq",
        app_id,
    )
    for r in rows:
        assert (r["n"], r["lo"], r["hi"]) == (r["last_seq"], 1, r["last_seq"]), dict(r)
    return sum(r["n"] for r in rows)
