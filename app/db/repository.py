"""The SQL of jobs and their events (the write path and the reads of the API). Every method
runs on the caller's connection or transaction; the rest of app/db/ holds the other tables' SQL."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import (
    ARRAY,
    BigInteger,
    String,
    Text,
    TextClause,
    any_,
    bindparam,
    column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import BindParameter, ClauseElement

from app.db import eta_digests
from app.db.driver import Driver, Lease
from app.db.tables import eta_samples, eta_stats, jobs

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose data a request may touch: one app in one mode."""

    app_id: str
    mode: str


class UniqueViolation(Exception):
    """An insert hit a unique constraint."""


@dataclass(frozen=True, slots=True)
class Staged:
    """A row change kept for a write's final statement: ``UPDATE table SET values WHERE key``
    (or, with ``insert``, an INSERT of ``values`` that skips a taken child slot)."""

    table: str
    key: Row
    values: Row
    insert: bool = False
    # The row version (xmin) the change was computed from: the change applies only if the
    # row is still that version (an optimistic write, see ``Repository.write``).
    version: int | None = None
    # An insert of a child made without a transaction: it applies only if this parent is
    # still live and unfinished, share-locked inside the statement (a concurrent cancel
    # either sees the child or makes the insert apply to nothing).
    parent_guard: str | None = None


_TABLES = {t.name: t for t in (jobs, eta_stats, eta_samples)}


# Statements are built once, with named parameters, so every execution hits SQLAlchemy's
# compiled cache and the connection's prepared statement cache.
_OWNED = "app_id = :app_id AND mode = :mode AND expires_at > :now"
_GET_JOB = select(jobs).where(
    jobs.c.id == bindparam("id"),
    jobs.c.app_id == bindparam("app_id"),
    jobs.c.mode == bindparam("mode"),
    jobs.c.expires_at > bindparam("now"),
)
_LIST_JOBS = (
    select(jobs)
    .where(
        jobs.c.user_id == bindparam("user_id"),
        jobs.c.app_id == bindparam("app_id"),
        jobs.c.mode == bindparam("mode"),
        jobs.c.expires_at > bindparam("now"),
    )
    .order_by(jobs.c.id.desc())
    .limit(bindparam("limit"))
)
_LIST_JOBS_BEFORE = _LIST_JOBS.where(jobs.c.id < bindparam("before_id"))
# A subscriber token limited to some jobs lists those and their children.
_ONLY = bindparam("only", type_=ARRAY(String))
_LIST_JOBS_ONLY = _LIST_JOBS.where(
    (jobs.c.id == any_(_ONLY)) | (jobs.c.parent_job_id == any_(_ONLY))
)
_LIST_JOBS_ONLY_BEFORE = _LIST_JOBS_ONLY.where(jobs.c.id < bindparam("before_id"))
_LIST_CHILDREN = (
    select(jobs).where(jobs.c.parent_job_id == bindparam("parent_id")).order_by(jobs.c.child_index)
)
_FIND_CHILD = select(jobs).where(
    jobs.c.parent_job_id == bindparam("parent_id"), jobs.c.child_index == bindparam("index")
)

# A locked job comes with its ETA key's statistics (LEFT JOIN: none yet), so a progress
# write needs no separate read of ``eta_stats`` (a parent's key ends in ``#parent``, see
# ``app.domain.eta``). ``eta_*`` columns are split off the row.
# The key's completion samples not yet folded into its statistics come along, in order
# (``eta_pending``): the estimate applies them on top of the stored statistics.
_ETA_KEY_OF_J = """coalesce(nullif(j.workflow_id, ''), j.job_type)
                     || CASE WHEN j.total_children IS NULL THEN '' ELSE '#parent' END"""
# The key's digest comes whole only when this process does not hold its version
# (``eta_known``, see ``app.db.eta_digests``): on a learned key's writes, only the version.
_WITH_ETA = f"""
    SELECT j.*, s.count AS eta_count, s.eta_key AS eta_key,
           (s.digest->>'t')::bigint AS eta_version,
           CASE WHEN (s.digest->>'t')::bigint = ANY(CAST(:eta_known AS BIGINT[])) THEN NULL
                ELSE s.digest END AS eta_digest,
           s.default_duration AS eta_default_duration,
           (SELECT jsonb_agg(x.sample ORDER BY x.id) FROM eta_samples x
            WHERE x.app_id = j.app_id AND x.mode = j.mode
              AND x.eta_key = {_ETA_KEY_OF_J}) AS eta_pending
    FROM jobs j LEFT JOIN eta_stats s
      ON s.app_id = j.app_id AND s.mode = j.mode
     AND s.eta_key = {_ETA_KEY_OF_J}
"""
# Declared result columns let SQLAlchemy cache the result metadata with the statement.
_JOINED = (
    *jobs.c,
    column("eta_count", BigInteger),
    column("eta_key", Text),
    column("eta_version", BigInteger),
    column("eta_digest", JSONB),
    column("eta_default_duration", BigInteger),
    column("eta_pending", JSONB),
)
# Untyped: asyncpg encodes the list for the CAST; SQLAlchemy's ARRAY would copy it first.
_KNOWN: BindParameter[Any] = bindparam("eta_known")
# A live job, and its live parent if it is a child, in one statement, locked parent first
# (rows are locked in the order of ORDER BY): the parent comes first, the job
# (``j.id = :id``) last. A job that is not a child has no parent row (``= NULL`` is never
# true). The parent's id is a scalar subquery (an InitPlan, computed once), not a join: when
# a row was updated while the statement waited for its lock, PostgreSQL rechecks the WHERE
# clause on the new version with the rest of the plan held fixed, and a semi-join over a
# UNION ALL lost the job's row in that recheck (the write then answered 404).
_LOCK_FAMILY = (
    text(
        _WITH_ETA
        + "WHERE ((j.id = :id AND j."
        + _OWNED.replace(" AND ", " AND j.")
        + ") OR j.id = (SELECT c.parent_job_id FROM jobs c WHERE c.id = :id AND c."
        + _OWNED.replace(" AND ", " AND c.")
        + ")) AND j.expires_at > :now ORDER BY j.id = :id FOR UPDATE OF j"
    )
    .columns(*_JOINED)
    .bindparams(_KNOWN)
)
# A job that is not a child, unlocked, with the row's version (its xmin).
_READ_PLAIN = (
    text(
        _WITH_ETA.replace("SELECT j.*,", "SELECT j.*, j.xmin::text::bigint AS row_version,")
        + "WHERE j.id = :id AND j.parent_job_id IS NULL AND j."
        + _OWNED.replace(" AND ", " AND j.")
    )
    .columns(*_JOINED, column("row_version", BigInteger))
    .bindparams(_KNOWN)
)
_SHARE_LOCK_OWNED = text("SELECT * FROM jobs WHERE id = :id AND " + _OWNED + " FOR SHARE")
_ETA_COLUMNS = ("eta_count", "eta_digest", "eta_default_duration", "eta_pending")


def _owned(owner: Owner, job_id: str, now: datetime) -> dict[str, Any]:
    """Parameters of the statements that find one live job of the owner's app and mode."""
    return {"id": job_id, "app_id": owner.app_id, "mode": owner.mode, "now": now}


def _with_digests(rows: list[Row], held: eta_digests.Held) -> bool:
    """Give each joined row its key's digest: kept (and held from now on) when it came
    whole, else the one ``held`` (what the statement was told) has for the row's key and
    the version read with it. False when ``held`` has that version only for another key:
    the statement must run again with ``eta_known`` empty."""
    for row in rows:
        version, key = row.pop("eta_version"), row.pop("eta_key")
        if version is None:
            continue
        if row["eta_digest"] is not None:
            eta_digests.put(row["app_id"], row["mode"], key, version, row["eta_digest"])
            continue
        row["eta_digest"] = held.get(row["app_id"], row["mode"], key, version)
        if row["eta_digest"] is None:
            return False
    return True


def _split_eta(job: Row) -> tuple[Row, Row | None]:
    """A joined row (with its digest, see ``_with_digests``) as (job, its key's stats or
    None)."""
    count, digest, default, pending = (job.pop(c) for c in _ETA_COLUMNS)
    if count is None and pending is None:
        return job, None
    return job, {
        "count": count or 0,
        "digest": digest,
        "default_duration": default,
        "pending": pending or [],
    }


# Bumps the user's stream counter (row-locked until commit: the last lock a write takes)
# and inserts the events with the seqs it reserved, so a stream stays gapless.
_APPEND_CTES = """
    s AS (
        INSERT INTO event_streams AS es (app_id, mode, user_id, last_seq)
        SELECT :app_id, :mode, :user_id, :n WHERE {guard}
        ON CONFLICT (app_id, mode, user_id) DO UPDATE SET last_seq = es.last_seq + :n
        RETURNING stream_id, last_seq
    ),
    appended AS (
        INSERT INTO events (stream_id, seq, job_id, event, payload, created_at)
        SELECT s.stream_id, s.last_seq - :n + e.ord, e.job_id, e.event, e.payload::jsonb, :now
        FROM s, unnest(:job_ids, :names, :payloads)
             WITH ORDINALITY AS e(job_id, event, payload, ord)
        RETURNING seq
    )
"""
_EVENT_PARAMS = (
    bindparam("job_ids", type_=ARRAY(Text)),
    bindparam("names", type_=ARRAY(Text)),
    bindparam("payloads", type_=ARRAY(Text)),
)
# One result row per event appended (the events metric counts rows of INSERT INTO events).
_APPEND_EVENTS = text(
    "WITH" + _APPEND_CTES.format(guard="true") + "SELECT s.stream_id, s.last_seq FROM s, appended"
).bindparams(*_EVENT_PARAMS)


# table, key, values, insert, versioned (or, for an insert, guarded by its parent)
Shape = tuple[str, tuple[str, ...], tuple[str, ...], bool, bool]


@lru_cache(maxsize=512)
def _write_statement(shapes: tuple[Shape, ...]) -> TextClause:
    """One statement: each staged row change, then the events appended.

    Updated rows are already row-locked by this transaction, so the only lock it takes is
    the stream counter's, last. Cached per shape: a handful of shapes cover every write.
    The third column counts the rows changed (an insert into a taken slot changes none).

    A versioned change (``Staged.version``) applies only to the row version it was computed
    from, and then the rows inserted after it (an ETA sample) and the events are written
    only if every change applied: otherwise the statement changes nothing and returns no
    row (data-modifying CTEs all run, so each insert carries that condition itself). Sent
    outside a transaction, such a statement is a whole write on its own, committed as it
    ends, with no lock held while the application computes.
    """
    ctes: list[str] = []
    params: list[BindParameter[Any]] = []
    versioned = False
    for i, (name, key, columns, inserting, has_version) in enumerate(shapes):
        table = _TABLES[name]
        if inserting:
            values = f"VALUES ({', '.join(f':c{i}_{c}' for c in columns)})"
            if has_version:  # guarded by the parent, share-locked in the statement
                versioned = True
                values = (
                    f"SELECT {', '.join(f':c{i}_{c}' for c in columns)} WHERE EXISTS ("
                    f"SELECT 1 FROM jobs p WHERE p.id = :c{i}_parent"
                    f" AND p.expires_at > :now AND p.status IN ('pending', 'running')"
                    " FOR SHARE)"
                )
                params.append(bindparam(f"c{i}_parent", type_=String))
            elif name != "jobs" and versioned:
                # A row that follows the versioned changes before it (an ETA sample): it is
                # inserted only if they all applied, so a lost race leaves nothing behind.
                before = " + ".join(f"(SELECT count(*) FROM c{j})" for j in range(i))
                values = values.replace("VALUES (", "SELECT ", 1)[:-1] + f" WHERE {before} = {i}"
            # A child whose slot is taken inserts nothing (see ``UniqueViolation``).
            skip = " ON CONFLICT (parent_job_id, child_index) DO NOTHING" if name == "jobs" else ""
            ctes.append(
                f"c{i} AS (INSERT INTO {name} ({', '.join(columns)}) {values}{skip} RETURNING 1)\n"
            )
        else:
            sets = ", ".join(f"{c} = :c{i}_{c}" for c in columns)
            where = " AND ".join(f"{k} = :c{i}_k_{k}" for k in key)
            if has_version:
                versioned = True
                where += f" AND xmin::text::bigint = :c{i}_version"
                params.append(bindparam(f"c{i}_version", type_=BigInteger))
            ctes.append(f"c{i} AS (UPDATE {name} SET {sets} WHERE {where} RETURNING 1)\n")
            params += [bindparam(f"c{i}_k_{k}", type_=table.c[k].type) for k in key]
        params += [bindparam(f"c{i}_{c}", type_=table.c[c].type) for c in columns]
    changed = " + ".join(f"(SELECT count(*) FROM c{i})" for i in range(len(shapes)))
    guard = f"{changed} = {len(shapes)}" if versioned else "true"
    sql = (
        f"WITH {', '.join(ctes)}, {_APPEND_CTES.format(guard=guard)}"
        f"SELECT s.stream_id, s.last_seq, {changed} AS changed FROM s, appended"
    )
    return text(sql).bindparams(*params, *_EVENT_PARAMS)


_CANCEL_CHILDREN = text(
    """
    WITH old AS (
        SELECT id, status FROM jobs
        WHERE parent_job_id = :parent_id AND status IN ('pending', 'running')
        ORDER BY id
        FOR UPDATE
    )
    UPDATE jobs AS j
    SET status = 'cancelled', updated_at = :now, completed_at = :now,
        estimated_completion_at = NULL, eta_confidence = NULL, eta_based_on = NULL
    FROM old WHERE j.id = old.id
    RETURNING j.*, old.status AS old_status
    """
)


class Repository:
    """Queries over one connection. Callers own the transaction.

    The statements of every request's path run through :class:`Driver` (asyncpg on the
    same pooled connection and transaction); the rare ones through SQLAlchemy.
    """

    def __init__(self, conn: AsyncConnection | Lease) -> None:
        self._source = conn
        self.driver = Driver(conn)

    @property
    def conn(self) -> AsyncConnection:
        """The connection as SQLAlchemy's, for the statements that run through it."""
        source = self._source
        return source.conn if isinstance(source, Lease) else source

    # --- jobs -------------------------------------------------------------------------

    async def get_job(self, owner: Owner, job_id: str, now: datetime) -> Row | None:
        params = _owned(owner, job_id, now)
        return await self.driver.fetchrow(_GET_JOB, params)

    async def read_plain_job(
        self, owner: Owner, job_id: str, now: datetime
    ) -> tuple[Row, Row | None] | None:
        """A job that is not a child, unlocked, with its ETA key's statistics: the job
        carries ``row_version``, for a versioned change (``Staged.version``)."""
        rows = await self._read_with_eta(_READ_PLAIN, _owned(owner, job_id, now))
        return _split_eta(rows[0]) if rows else None

    async def lock_family(
        self, owner: Owner, job_id: str, now: datetime
    ) -> tuple[tuple[Row, Row | None], tuple[Row, Row | None] | None] | None:
        """Lock a live job, and first its parent if it is a child (the parent live too), in
        one statement: ``((job, stats), (parent, stats) or None)``; None if not found."""
        rows = await self._read_with_eta(_LOCK_FAMILY, _owned(owner, job_id, now))
        if not rows or rows[-1]["id"] != job_id:
            return None
        if rows[-1]["parent_job_id"] is None:
            return _split_eta(rows[-1]), None
        if len(rows) != 2:
            return None  # a child whose parent is gone is as gone as the parent
        return _split_eta(rows[1]), _split_eta(rows[0])

    async def _read_with_eta(self, stmt: ClauseElement, params: Row) -> list[Row]:
        """Run a statement of ``_WITH_ETA``, each row with its key's digest, sent whole only
        when this process lacks its version. Once more, all sent whole, only when a version
        it named is held for another key alone: two keys whose completions were the same."""
        held = eta_digests.held()
        rows = await self.driver.fetch(stmt, {**params, "eta_known": held.versions})
        if not _with_digests(rows, held):
            rows = await self.driver.fetch(stmt, {**params, "eta_known": []})
            _with_digests(rows, held)
        return rows

    async def share_lock_job(self, owner: Owner, job_id: str, now: datetime) -> Row | None:
        """Share-lock a live job (a parent taking a new child: a cancel cannot miss it)."""
        params = _owned(owner, job_id, now)
        return await self.driver.fetchrow(_SHARE_LOCK_OWNED, params)

    async def cancel_unfinished_children(self, parent_id: str, now: datetime) -> list[Row]:
        """Cancel every unfinished child; rows carry ``old_status``."""
        return await self.driver.fetch(_CANCEL_CHILDREN, {"parent_id": parent_id, "now": now})

    async def list_jobs(
        self,
        owner: Owner,
        user_id: str,
        before_id: str | None,
        limit: int,
        now: datetime,
        only: Collection[str] | None = None,
    ) -> list[Row]:
        """A user's jobs, newest first; with ``only``, just those jobs and their children."""
        params = {
            "user_id": user_id,
            "app_id": owner.app_id,
            "mode": owner.mode,
            "now": now,
            "limit": limit,
        }
        stmt = _LIST_JOBS
        if before_id is not None:
            stmt, params["before_id"] = _LIST_JOBS_BEFORE, before_id
        if only is not None:
            stmt = _LIST_JOBS_ONLY_BEFORE if before_id is not None else _LIST_JOBS_ONLY
            params["only"] = list(only)
        return await self.driver.fetch(stmt, params)

    async def list_children(self, parent_id: str) -> list[Row]:
        return await self.driver.fetch(_LIST_CHILDREN, {"parent_id": parent_id})

    async def find_child(self, parent_id: str, child_index: int) -> Row | None:
        params = {"parent_id": parent_id, "index": child_index}
        return await self.driver.fetchrow(_FIND_CHILD, params)

    # --- events -----------------------------------------------------------------------

    async def append_events(
        self,
        owner: Owner,
        user_id: str,
        items: Sequence[tuple[str, str, dict[str, Any]]],
        now: datetime,
    ) -> tuple[int, int]:
        """Append ``(event, job_id, payload)`` items to the user's stream, in order.

        The stream counter row stays locked until commit, so a stream's events become
        visible in sequence order with no gaps. Returns ``(stream_id, last_seq)``.
        """
        params = _event_params(owner, user_id, items, now)
        row = await self.driver.fetchrow(_APPEND_EVENTS, params)
        assert row is not None, "no events to append"
        return row["stream_id"], row["last_seq"]

    async def write(
        self,
        owner: Owner,
        user_id: str,
        changes: Sequence[Staged],
        items: Sequence[tuple[str, str, dict[str, Any]]],
        now: datetime,
    ) -> tuple[int, int] | None:
        """Apply the staged row changes and append ``items``, in one statement.

        Returns ``(stream_id, last_seq)`` like :meth:`append_events`; raises
        ``UniqueViolation`` when a staged child insert found its slot taken. Returns None,
        having changed nothing, when a versioned change found its row changed since, or a
        guarded child insert found its slot taken or its parent gone or finished.
        """
        if not changes:
            return await self.append_events(owner, user_id, items, now)
        params = _event_params(owner, user_id, items, now)
        shapes = []
        for i, change in enumerate(changes):
            versioned = change.version is not None or change.parent_guard is not None
            shapes.append(
                (change.table, tuple(change.key), tuple(change.values), change.insert, versioned)
            )
            params.update((f"c{i}_k_{k}", v) for k, v in change.key.items())
            params.update((f"c{i}_{c}", v) for c, v in change.values.items())
            if change.version is not None:
                params[f"c{i}_version"] = change.version
            if change.parent_guard is not None:
                params[f"c{i}_parent"] = change.parent_guard
        row = await self.driver.fetchrow(_write_statement(tuple(shapes)), params)
        if row is None and any(s.version is not None or s.parent_guard for s in changes):
            return None
        assert row is not None, "no events to append"
        if row["changed"] != len(changes):
            if any(change.insert for change in changes):
                raise UniqueViolation("child slot taken")
            raise RuntimeError(f"changed {row['changed']} of {len(changes)} locked rows")
        return row["stream_id"], row["last_seq"]


def _event_params(
    owner: Owner, user_id: str, items: Sequence[tuple[str, str, dict[str, Any]]], now: datetime
) -> Row:
    return {
        "app_id": owner.app_id,
        "mode": owner.mode,
        "user_id": user_id,
        "n": len(items),
        "job_ids": [job_id for _, job_id, _ in items],
        "names": [name for name, _, _ in items],
        "payloads": [orjson.dumps(payload).decode() for _, _, payload in items],
        "now": now,
    }
