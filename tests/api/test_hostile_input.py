"""Hostile input: every malformed, out-of-range or malicious request gets a 4xx in the
envelope and changes nothing in the database.

Each case runs against a real server process; the app's rows (jobs, event streams, events)
and the database-wide row counts are compared before and after.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.conftest import AppKeys
from tests.support.harness import ServerProcess
from tests.support.helpers import assert_error, create_child, create_job, create_parent, progress

JSON = {"Content-Type": "application/json"}
INJECTIONS = [
    "'; DROP TABLE jobs; --",
    "' OR '1'='1",
    '" OR ""="',
    "1; SELECT pg_sleep(10)",
    "$1",
    "%' UNION SELECT * FROM api_keys --",
    "\\'; TRUNCATE events; --",
]


@dataclass
class Target:
    """The jobs a case may aim at."""

    job: dict[str, Any]
    parent: dict[str, Any]
    child: dict[str, Any]


@dataclass
class Case:
    """One hostile request: a JSON value (``body``) or raw bytes (``raw``)."""

    method: str
    path: str
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 400
    code: str = "VALIDATION_ERROR"

    def url(self, t: Target) -> str:
        return self.path.format(job=t.job["id"], parent=t.parent["id"], child=t.child["id"])


def _create(**fields: Any) -> dict[str, Any]:
    return {"jobType": "video", "userId": "user_1", "title": "A job", **fields}


def _nested(depth: int) -> bytes:
    """A JSON object nested ``depth`` levels deep (built as text: no recursion anywhere)."""
    return b'{"k":' * depth + b'"leaf"' + b"}" * depth


def _raw(prefix: str, value: bytes, suffix: str) -> bytes:
    return prefix.encode() + value + suffix.encode()


def _cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}

    def add(name: str, case: Case) -> None:
        assert name not in cases
        cases[name] = case

    # Wrong types.
    for name, value in {
        "string": "50",
        "bool": True,
        "float": 50.5,
        "null": None,
        "list": [50],
        "object": {"$gt": 1},
    }.items():
        add(f"progress-{name}", Case("POST", "/jobs/{job}/progress", {"progress": value}))
    for fld, value in {
        "jobType": 123,
        "userId": ["u"],
        "title": {"t": 1},
        "metadata": "x",
        "metadata-list": [1],
        "totalChildren": "3",
        "ttlSeconds": 60.5,
        "queue": "1st",
        "stage": [],
        "estimatedCompletionAt": 12345678,
        "workflowId": False,
    }.items():
        add(
            f"create-{fld}-wrong-type", Case("POST", "/jobs", _create(**{fld.split("-")[0]: value}))
        )
    add("fail-error-string", Case("POST", "/jobs/{job}/fail", {"error": "boom"}))
    add(
        "fail-code-number", Case("POST", "/jobs/{job}/fail", {"error": {"code": 1, "message": "m"}})
    )
    add(
        "fail-retryable-string",
        Case(
            "POST", "/jobs/{job}/fail", {"error": {"code": "E", "message": "m"}, "retryable": "yes"}
        ),
    )
    add("complete-result-list", Case("POST", "/jobs/{job}/complete", {"result": [1, 2]}))
    add("cancel-reason-number", Case("POST", "/jobs/{job}/cancel", {"reason": 7}))
    for name, body in {"array": [], "string": "x", "number": 1, "true": True}.items():
        add(f"top-level-{name}", Case("POST", "/jobs", body))

    # Out-of-range numbers.
    for name, value in {"negative": -1, "over-100": 101}.items():
        add(f"progress-{name}", Case("POST", "/jobs/{job}/progress", {"progress": value}))
    for name, literal in {"int64": b"9223372036854775808", "huge": b"1" + b"0" * 30}.items():
        add(
            f"progress-{name}",
            Case(
                "POST", "/jobs/{job}/progress", raw=b'{"progress": ' + literal + b"}", headers=JSON
            ),
        )
    for fld, value in {
        "totalChildren": 0,
        "totalChildren-over": 1001,
        "ttlSeconds": 0,
        "ttlSeconds-over": 10**12,
        "estimatedDuration": -5,
    }.items():
        add(f"create-{fld}-range", Case("POST", "/jobs", _create(**{fld.split("-")[0]: value})))
    add(
        "child-index-negative",
        Case("POST", "/jobs", _create(parentJobId="{parent}", childIndex=-1)),
    )
    add(
        "child-index-beyond-total",
        Case(
            "POST",
            "/jobs",
            _create(parentJobId="{parent}", childIndex=2),
            code="INVALID_CHILD_INDEX",
        ),
    )
    add(
        "queue-position-negative",
        Case("POST", "/jobs/{job}/progress", {"progress": 5, "queue": {"position": -1}}),
    )
    for name, value in {
        "year-0": "0000-01-01T00:00:00Z",
        "year-9999": "9999-12-31T23:59:59Z",
        "not-a-date": "tomorrow",
        "month-13": "2026-13-01T00:00:00Z",
    }.items():
        add(f"eta-{name}", Case("POST", "/jobs", _create(estimatedCompletionAt=value)))
    add(
        "number-overflows-double",
        Case("POST", "/jobs/{job}/progress", raw=b'{"progress": 1e400}', headers=JSON),
    )

    # Too long, too big, too deep.
    add("title-too-long", Case("POST", "/jobs", _create(title="t" * 201)))
    add("user-id-too-long", Case("POST", "/jobs", _create(userId="u" * 256)))
    add("metadata-over-10k", Case("POST", "/jobs", _create(metadata={"blob": "x" * 11_000})))
    add("result-over-100k", Case("POST", "/jobs/{job}/complete", {"result": {"b": "x" * 110_000}}))
    add(
        "body-over-limit",
        Case(
            "POST",
            "/jobs",
            raw=b'{"pad": "' + b"x" * 1_100_000 + b'"}',
            headers=JSON,
            status=413,
            code="PAYLOAD_TOO_LARGE",
        ),
    )
    add(
        "json-nested-2000",
        Case("POST", "/jobs", raw=b'{"metadata":' + b"[" * 2000 + b"]" * 2000 + b"}", headers=JSON),
    )
    create = '{"jobType": "v", "userId": "u", "title": "t", "metadata": '
    for depth in (33, 254, 600, 1000):
        add(
            f"metadata-nested-{depth}",
            Case("POST", "/jobs", raw=_raw(create, _nested(depth), "}"), headers=JSON),
        )
    add(
        "list-in-metadata-nested-40",
        Case(
            "POST", "/jobs", raw=_raw(create + '{"a": ', b"[" * 40 + b"]" * 40, "}}"), headers=JSON
        ),
    )
    add(
        "result-nested-600",
        Case(
            "POST", "/jobs/{job}/complete", raw=_raw('{"result": ', _nested(600), "}"), headers=JSON
        ),
    )
    add(
        "error-details-nested-254",
        Case(
            "POST",
            "/jobs/{job}/fail",
            raw=_raw('{"error": {"code": "E", "message": "m", "details": ', _nested(254), "}}"),
            headers=JSON,
        ),
    )
    add(
        "progress-metadata-nested-100",
        Case(
            "POST",
            "/jobs/{job}/progress",
            raw=_raw('{"progress": 5, "metadata": ', _nested(100), "}"),
            headers=JSON,
        ),
    )

    # Bytes and characters PostgreSQL or UTF-8 cannot carry.
    add(
        "invalid-utf8",
        Case(
            "POST", "/jobs", raw=b'{"jobType":"v","userId":"u\xff\xfe","title":"t"}', headers=JSON
        ),
    )
    add(
        "overlong-utf8",
        Case("POST", "/jobs", raw=b'{"jobType":"v","userId":"\xc0\xaf","title":"t"}', headers=JSON),
    )
    add(
        "lone-surrogate",
        Case("POST", "/jobs", raw=b'{"jobType":"v","userId":"u","title":"\\ud800"}', headers=JSON),
    )
    add(
        "lone-low-surrogate-key",
        Case(
            "POST",
            "/jobs",
            raw=b'{"jobType":"v","userId":"u","title":"t","metadata":{"\\udc00":1}}',
            headers=JSON,
        ),
    )
    for fld in ("title", "userId", "jobType", "workflowId"):
        add(f"nul-in-{fld}", Case("POST", "/jobs", _create(**{fld: "a\u0000b"})))
    add("nul-in-metadata-key", Case("POST", "/jobs", _create(metadata={"a\u0000": 1})))
    add("nul-in-metadata-value", Case("POST", "/jobs", _create(metadata={"a": ["x\u0000"]})))
    add(
        "nul-in-nested-metadata",
        Case("POST", "/jobs", _create(metadata={"a": {"b": {"c\u0000": 1}}})),
    )
    add(
        "nul-in-message", Case("POST", "/jobs/{job}/progress", {"progress": 5, "message": "\u0000"})
    )
    add(
        "nul-in-stage-name",
        Case("POST", "/jobs/{job}/progress", {"progress": 5, "stage": {"name": "s\u0000"}}),
    )
    add("nul-in-result", Case("POST", "/jobs/{job}/complete", {"result": {"k": "\u0000"}}))
    add(
        "nul-in-error-message",
        Case("POST", "/jobs/{job}/fail", {"error": {"code": "E", "message": "\u0000"}}),
    )
    add(
        "nul-in-error-details-key",
        Case(
            "POST",
            "/jobs/{job}/fail",
            {"error": {"code": "E", "message": "m", "details": {"\u0000": 1}}},
        ),
    )
    add("nul-in-cancel-reason", Case("POST", "/jobs/{job}/cancel", {"reason": "r\u0000"}))
    for ch in ("\u0001", "\n", "\u001b", "\u007f"):
        add(f"control-{ord(ch):02x}-in-userId", Case("POST", "/jobs", _create(userId=f"u{ch}")))
    add(
        "control-in-error-code",
        Case("POST", "/jobs/{job}/fail", {"error": {"code": "E\u0007", "message": "m"}}),
    )
    add("nul-in-query", Case("GET", "/jobs?userId=a%00b"))
    add("control-in-query", Case("GET", "/jobs?userId=a%01b"))
    add("invalid-utf8-in-query", Case("GET", "/jobs?userId=a%FFb"))

    # Malformed JSON, wrong content types, empty bodies.
    for name, raw in {
        "truncated": b'{"jobType": "v"',
        "trailing-garbage": b'{"progress": 5} x',
        "nan": b'{"progress": NaN}',
        "infinity": b'{"progress": Infinity}',
        "single-quotes": b"{'progress': 5}",
        "bom": b'\xef\xbb\xbf{"progress": 5}',
    }.items():
        add(f"json-{name}", Case("POST", "/jobs/{job}/progress", raw=raw, headers=JSON))
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        add(
            f"content-type-{ctype.split('/')[1]}",
            Case(
                "POST",
                "/jobs/{job}/progress",
                raw=b'{"progress": 5}',
                headers={"Content-Type": ctype},
            ),
        )
    add(
        "form-body",
        Case(
            "POST",
            "/jobs",
            raw=b"jobType=v&userId=u&title=t",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
    )
    for path in ("/jobs", "/jobs/{job}/progress", "/jobs/{job}/fail"):
        add(
            f"empty-body-{path.rsplit('/', 1)[1] or 'create'}",
            Case("POST", path, raw=b"", headers=JSON),
        )
    add("empty-object-create", Case("POST", "/jobs", {}))

    # Injection in path and query parameters (strings in bodies: see the round-trip test).
    for i, attack in enumerate(INJECTIONS):
        quoted = httpx.URL("/x/" + attack).raw_path.decode()[3:]
        add(f"sqli-path-{i}", Case("GET", f"/jobs/{quoted}"))
        add(f"sqli-path-write-{i}", Case("POST", f"/jobs/{quoted}/progress", {"progress": 5}))
        add(f"sqli-limit-{i}", Case("GET", "/jobs?userId=user_1&limit=" + quoted))
        cursor = httpx.URL("/?c=" + attack).query.decode()[2:]
        add(f"sqli-cursor-{i}", Case("GET", "/jobs?userId=user_1&cursor=" + cursor))
    add(
        "sqli-forged-cursor",
        Case(
            "GET",
            "/jobs?userId=user_1&cursor=djE6JyBPUiAnMSc9JzE",  # base64("v1:' OR '1'='1")
        ),
    )
    add(
        "cursor-trailing-newline",
        Case(
            "GET",
            # base64("v1:01ARZ3NDEKTSV4RRFFQ69G5FAV\n"): a ULID, then a newline
            "/jobs?userId=user_1&cursor=djE6MDFBUlozTkRFS1RTVjRSUkZGUTY5RzVGQVYK",
        ),
    )
    add("sse-job-id-trailing-newline", Case("GET", "/sse?userId=user_1&jobId={job}%0A"))
    add("path-traversal", Case("GET", "/jobs/..%2F..%2Fetc%2Fpasswd", status=404, code="NOT_FOUND"))
    return cases


CASES = _cases()


@pytest.fixture
async def target(client: httpx.AsyncClient) -> Target:
    job = await create_job(client)
    await progress(client, job["id"], 10, metadata={"keep": "me"})
    parent = await create_parent(client, 2)
    child = await create_child(client, parent, 0)
    return Target(job, parent, child)


async def _mark(db: asyncpg.Connection) -> tuple[Any, int]:
    """A point to count new rows from: the time (to the millisecond, as the server stores
    it), and the newest event stream."""
    row = await db.fetchrow(
        "SELECT date_trunc('milliseconds', now()) AS at,"
        " coalesce((SELECT max(stream_id) FROM event_streams), 0) AS stream"
    )
    return row["at"], row["stream"]


async def _snapshot(db: asyncpg.Connection, app_id: str, mark: tuple[Any, int]) -> Any:
    """The app's rows, and the rows added anywhere since ``mark``.

    Only additions are counted database-wide: the session server's sweeper may delete
    other tests' expired rows at any moment, so whole-table counts could change by
    themselves.
    """
    jobs = await db.fetch("SELECT * FROM jobs WHERE app_id = $1 ORDER BY id", app_id)
    streams = await db.fetch(
        "SELECT stream_id, last_seq FROM event_streams WHERE app_id = $1 ORDER BY 1", app_id
    )
    counts = await db.fetchrow(
        "SELECT (SELECT count(*) FROM jobs WHERE created_at >= $1) AS jobs,"
        " (SELECT count(*) FROM events WHERE created_at >= $1) AS events,"
        " (SELECT count(*) FROM event_streams WHERE stream_id > $2) AS streams,"
        " (SELECT count(*) FROM api_keys WHERE created_at >= $1) AS keys",
        *mark,
    )
    return [tuple(r) for r in jobs], [tuple(r) for r in streams], tuple(counts)


def _fill(value: Any, t: Target) -> Any:
    """Substitute target ids into ``{parent}``-style placeholders inside JSON bodies."""
    if isinstance(value, str):
        return value.replace("{parent}", t.parent["id"]).replace("{job}", t.job["id"])
    if isinstance(value, dict):
        return {k: _fill(v, t) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, t) for v in value]
    return value


@pytest.mark.parametrize("name", list(CASES))
async def test_hostile_request_is_rejected_with_envelope_and_changes_nothing(
    name: str, client: httpx.AsyncClient, db: asyncpg.Connection, keys: AppKeys, target: Target
) -> None:
    case = CASES[name]
    mark = await _mark(db)
    before = await _snapshot(db, keys.app_id, mark)
    if case.raw is not None:
        content = case.raw
    elif case.body is not None or case.method == "POST":
        content = orjson.dumps(_fill(case.body, target))
    else:
        content = None
    headers = {**(JSON if content is not None else {}), **case.headers}
    response = await client.request(case.method, case.url(target), content=content, headers=headers)
    if name.startswith("sqli-path-") and response.status_code == 404:
        assert_error(response, 404, "NOT_FOUND")  # a path that names no route
    else:
        assert_error(response, case.status, case.code)
    assert await _snapshot(db, keys.app_id, mark) == before, name


async def test_chunked_body_over_limit_is_413_and_changes_nothing(
    server: ServerProcess, db: asyncpg.Connection, keys: AppKeys
) -> None:
    """A body with no Content-Length is counted as it streams in; the client that keeps
    sending still receives the 413 (the server reads and drops the rest first)."""
    mark = await _mark(db)
    before = await _snapshot(db, keys.app_id, mark)
    url = httpx.URL(server.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        b"POST /v1/jobs HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {keys.secret}\r\n".encode()
        + b"Transfer-Encoding: chunked\r\n\r\n"
    )
    pieces = [b'{"jobType":"v","userId":"u","title":"t","metadata":{"pad":"']
    pieces += [b"x" * 65_536] * 24 + [b'"}}']
    for piece in pieces:
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert orjson.loads(body)["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert await _snapshot(db, keys.app_id, mark) == before


@pytest.mark.parametrize("attack", INJECTIONS)
async def test_injection_strings_are_stored_verbatim_and_reach_nothing_else(
    attack: str, client: httpx.AsyncClient, db: asyncpg.Connection, keys: AppKeys
) -> None:
    """Valid strings that look like SQL are data: stored and returned unchanged, never run."""
    other = await create_job(client, userId="someone_else")
    mark = await _mark(db)
    counts_before = (await _snapshot(db, keys.app_id, mark))[2]
    job = await create_job(
        client,
        userId=attack,
        jobType=attack[:100],
        title=attack,
        workflowId=attack[:100],
        metadata={attack: attack},
    )
    done = await client.post(
        f"/jobs/{job['id']}/fail",
        json={"error": {"code": attack[:100], "message": attack, "details": {attack: [attack]}}},
    )
    assert done.status_code == 200, done.text
    listed = (await client.get("/jobs", params={"userId": attack})).json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    got = listed[0]
    assert (got["userId"], got["title"], got["metadata"]) == (attack, attack, {attack: attack})
    assert got["error"]["details"] == {attack: [attack]}
    stored = await db.fetchrow("SELECT user_id, title FROM jobs WHERE id = $1", job["id"])
    assert tuple(stored) == (attack, attack)
    # Exactly one job and its events were added; the other user's job is untouched.
    jobs_before, events_before = counts_before[0], counts_before[1]
    counts_after = (await _snapshot(db, keys.app_id, mark))[2]
    assert counts_after[0] == jobs_before + 1 and counts_after[1] == events_before + 2
    assert (await client.get(f"/jobs/{other['id']}")).json() == other
