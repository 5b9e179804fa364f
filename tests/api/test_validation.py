"""Every validation range of the specification, at and past its bounds."""

from datetime import datetime, timedelta

import pytest

from tests.support.helpers import assert_error, create_job, create_parent

BASE = {"jobType": "video", "userId": "user_1", "title": "t"}


def json_of_size(size: int) -> dict:
    """A metadata object whose compact JSON is exactly ``size`` bytes."""
    overhead = len('{"k":""}')
    return {"k": "x" * (size - overhead)}


OK_AND_BAD = [
    ("jobType", "j" * 100, "j" * 101),
    ("jobType", "j", ""),
    ("userId", "u" * 255, "u" * 256),
    ("userId", "u", ""),
    ("title", "t" * 200, "t" * 201),
    ("title", "t", ""),
    ("workflowId", "w" * 100, "w" * 101),
    ("ttlSeconds", 60, 59),
    ("ttlSeconds", 2_592_000, 2_592_001),
    ("estimatedDuration", 1000, 999),
    ("estimatedDuration", 86_400_000, 86_400_001),
    ("metadata", json_of_size(10 * 1024), json_of_size(10 * 1024 + 1)),
    ("totalChildren", 1, 0),
    ("totalChildren", 1000, 1001),
    ("childProgressMode", "sequential", "fastest"),
    ("estimatedCompletionAt", "2030-01-01T00:00:00Z", "tomorrow"),
    ("queue", {"position": 0}, {"position": -1}),
    ("stage", {"name": "s", "current": 1, "total": 3}, {"name": "", "current": 1, "total": 3}),
    # The clients cast current and total to int: both are required.
    ("stage", {"name": "s", "current": 0, "total": 1}, {"name": "s", "current": 1}),
    ("stage", {"name": "s", "current": 0, "total": 1}, {"name": "s"}),
]


@pytest.mark.parametrize(("field", "ok", "bad"), OK_AND_BAD)
async def test_create_bounds(client, field, ok, bad):
    extra = {"totalChildren": 2} if field == "childProgressMode" else {}
    good = await client.post("/jobs", json={**BASE, **extra, field: ok})
    assert good.status_code == 201, good.text
    response = await client.post("/jobs", json={**BASE, **extra, field: bad})
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert error["details"]["errors"][0]["field"].startswith(field)


@pytest.mark.parametrize("missing", ["jobType", "userId", "title"])
async def test_required_fields(client, missing):
    body = {k: v for k, v in BASE.items() if k != missing}
    assert_error(await client.post("/jobs", json=body), 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "wrong",
    [
        {"title": 5},
        {"ttlSeconds": "60"},
        {"ttlSeconds": 60.5},
        {"totalChildren": True},
        {"metadata": [1, 2]},
        {"metadata": "x"},
    ],
)
async def test_wrong_types(client, wrong):
    assert_error(await client.post("/jobs", json={**BASE, **wrong}), 400, "VALIDATION_ERROR")


async def test_child_index_bounds(client):
    parent = await create_parent(client, 1000)
    child = {**BASE, "userId": parent["userId"], "parentJobId": parent["id"]}
    assert (await client.post("/jobs", json={**child, "childIndex": 0})).status_code == 201
    assert (await client.post("/jobs", json={**child, "childIndex": 999})).status_code == 201
    assert_error(
        await client.post("/jobs", json={**child, "childIndex": -1}), 400, "VALIDATION_ERROR"
    )
    assert_error(
        await client.post("/jobs", json={**child, "childIndex": 10_000}), 400, "VALIDATION_ERROR"
    )
    assert_error(
        await client.post("/jobs", json={**child, "childIndex": 1000}), 400, "INVALID_CHILD_INDEX"
    )


@pytest.mark.parametrize(
    "body",
    [
        {"parentJobId": "01HXYZ123456789ABCDEFGHJKM"},
        {"childIndex": 0},
        {"totalChildren": 2, "parentJobId": "01HXYZ123456789ABCDEFGHJKM", "childIndex": 0},
        {"childProgressMode": "average"},
        {"parentJobId": "not-a-ulid", "childIndex": 0},
    ],
)
async def test_inconsistent_parent_child_fields(client, body):
    assert_error(await client.post("/jobs", json={**BASE, **body}), 400, "VALIDATION_ERROR")


async def test_progress_bounds(client):
    job = await create_job(client)
    for ok in (0, 100):
        assert (
            await client.post(f"/jobs/{job['id']}/progress", json={"progress": ok})
        ).status_code == 200
    job = await create_job(client)
    for bad in (-1, 101, 50.5, "50", None):
        response = await client.post(f"/jobs/{job['id']}/progress", json={"progress": bad})
        assert_error(response, 400, "VALIDATION_ERROR")
    assert_error(await client.post(f"/jobs/{job['id']}/progress", json={}), 400, "VALIDATION_ERROR")
    big = json_of_size(10 * 1024 + 1)
    assert_error(
        await client.post(f"/jobs/{job['id']}/progress", json={"progress": 1, "metadata": big}),
        400,
        "VALIDATION_ERROR",
    )
    assert (await client.get(f"/jobs/{job['id']}")).json()["status"] == "pending"


async def test_result_limit_is_100_kb(client):
    ok = await create_job(client)
    response = await client.post(
        f"/jobs/{ok['id']}/complete", json={"result": json_of_size(100 * 1024)}
    )
    assert response.status_code == 200
    bad = await create_job(client)
    response = await client.post(
        f"/jobs/{bad['id']}/complete", json={"result": json_of_size(100 * 1024 + 1)}
    )
    assert_error(response, 400, "VALIDATION_ERROR")
    assert (await client.get(f"/jobs/{bad['id']}")).json()["status"] == "pending"


async def test_fail_requires_an_error_object(client):
    job = await create_job(client)
    for body in (
        {},
        {"error": "boom"},
        {"error": {"code": "X"}},
        {"error": {"message": "m"}},
        {"error": {"code": "X", "message": "m"}, "retryable": "yes"},
    ):
        assert_error(
            await client.post(f"/jobs/{job['id']}/fail", json=body), 400, "VALIDATION_ERROR"
        )
    assert (await client.get(f"/jobs/{job['id']}")).json()["status"] == "pending"


async def test_unstorable_strings_are_rejected(client):
    for body in (
        {**BASE, "title": "ok", "metadata": {"k": "a\x00b"}},
        {**BASE, "metadata": {"a\x00": 1}},
        {**BASE, "userId": "a\x00b"},
        {**BASE, "title": "a\x00b"},
    ):
        assert_error(await client.post("/jobs", json=body), 400, "VALIDATION_ERROR")
    raw = b'{"jobType":"v","userId":"u","title":"\\ud800"}'
    response = await client.post("/jobs", content=raw, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "VALIDATION_ERROR")
    listed = await client.get("/jobs", params={"userId": "u"})
    assert listed.json() == {"jobs": []}


async def test_null_ttl_means_the_default_30_days(client):
    job = await create_job(client, ttlSeconds=None)
    created = datetime.fromisoformat(job["createdAt"])
    assert datetime.fromisoformat(job["expiresAt"]) - created == timedelta(days=30)


@pytest.mark.parametrize(
    "result",
    [{"type": 5}, {"url": 123}, {"data": "30s"}, {"data": [1, 2]}],
    ids=["type", "url", "data-string", "data-list"],
)
async def test_result_fields_read_by_the_clients_must_have_their_types(client, result):
    job = await create_job(client)
    response = await client.post(f"/jobs/{job['id']}/complete", json={"result": result})
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert error["details"]["errors"][0]["field"].startswith("result")
    assert (await client.get(f"/jobs/{job['id']}")).json()["status"] == "pending"
    ok = {"type": "video", "url": "https://cdn.example/v.mp4", "data": {"s": 30}, "extra": [1]}
    done = await client.post(f"/jobs/{job['id']}/complete", json={"result": ok})
    assert done.status_code == 200 and done.json()["result"] == ok


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data", None],
)
async def test_a_body_sent_without_the_json_content_type_names_the_header(client, content_type):
    """``curl -d`` without ``-H 'Content-Type: application/json'`` sends a form: the error
    says which header is missing, and nothing is created."""
    raw = b'{"jobType":"video","userId":"user_ctype","title":"t"}'
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post("/jobs", content=raw, headers=headers)
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert "Content-Type: application/json" in error["message"]
    assert error["details"]["errors"][0]["field"] == "body"
    assert "Content-Type: application/json" in error["details"]["errors"][0]["message"]
    listed = await client.get("/jobs", params={"userId": "user_ctype"})
    assert listed.json()["jobs"] == []
    # The same body sent as JSON is accepted.
    for media_type in ("application/json", "application/json; charset=utf-8"):
        created = await client.post("/jobs", content=raw, headers={"Content-Type": media_type})
        assert created.status_code == 201, created.text
