"""The REST API end to end over real HTTP against real PostgreSQL."""

import re
from datetime import UTC, datetime, timedelta

import httpx

from tests.support.helpers import assert_error, complete, create_job, fail, progress

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def test_create_returns_the_job_with_omitted_optional_fields(client, keys):
    response = await client.post(
        "/jobs",
        json={
            "jobType": "video-generation",
            "userId": "user_123",
            "title": "Creating your video...",
            "metadata": {"prompt": "a cat"},
            "queue": {"position": 5, "total": 20, "queueName": "priority"},
            "stage": {"name": "initializing", "current": 1, "total": 3},
            "push": {"title": "ignored"},
            "somethingNew": 1,
        },
    )
    assert response.status_code == 201
    job = response.json()
    assert len(job["id"]) == 26
    assert job["appId"] == keys.app_id
    assert job["status"] == "pending" and job["progress"] == 0
    assert job["metadata"] == {"prompt": "a cat"}
    assert job["queue"] == {"position": 5, "total": 20, "queueName": "priority"}
    assert job["stage"] == {"name": "initializing", "current": 1, "total": 3}
    for absent in (
        "children",
        "parent",
        "result",
        "error",
        "startedAt",
        "completedAt",
        "message",
        "estimatedCompletionAt",
        "childProgressMode",
        "push",
    ):
        assert absent not in job
    assert None not in job.values()
    assert ISO_MS.match(job["createdAt"]) and ISO_MS.match(job["updatedAt"])


async def test_get_returns_what_create_returned(client):
    job = await create_job(client)
    response = await client.get(f"/jobs/{job['id']}")
    assert response.status_code == 200
    assert response.json() == job


async def test_progress_starts_job_and_merges_metadata(client):
    job = await create_job(client, metadata={"a": 1, "b": 2}, queue={"position": 3, "total": 9})
    updated = await progress(
        client,
        job["id"],
        50,
        message="Processing frames...",
        metadata={"b": 3, "c": 4},
        stage={"name": "rendering", "current": 2, "total": 3, "description": "frames"},
        queue={"position": 0},
    )
    assert updated["status"] == "running" and updated["progress"] == 50
    assert updated["message"] == "Processing frames..."
    assert updated["metadata"] == {"a": 1, "b": 3, "c": 4}
    assert updated["stage"]["name"] == "rendering"
    assert updated["queue"] == {"position": 0}  # replaced as a whole, not merged
    assert ISO_MS.match(updated["startedAt"])
    again = await progress(client, job["id"], 60)
    assert again["startedAt"] == updated["startedAt"]
    assert again["message"] == "Processing frames..." and again["queue"] == {"position": 0}


async def test_progress_zero_also_moves_pending_to_running(client):
    job = await create_job(client)
    assert (await progress(client, job["id"], 0))["status"] == "running"


async def test_complete_sets_progress_100_result_and_completed_at(client):
    job = await create_job(client)
    done = await complete(
        client,
        job["id"],
        result={"type": "video", "url": "https://cdn/x.mp4"},
        message="Video ready!",
        liveActivity={"x": 1},
    )
    assert done["status"] == "completed" and done["progress"] == 100
    assert done["result"] == {"type": "video", "url": "https://cdn/x.mp4"}
    assert ISO_MS.match(done["completedAt"])


async def test_complete_without_body(client):
    job = await create_job(client)
    response = await client.post(f"/jobs/{job['id']}/complete")
    assert response.status_code == 200 and response.json()["status"] == "completed"


async def test_fail_stores_error_and_retryable(client):
    job = await create_job(client)
    failed = await fail(
        client,
        job["id"],
        error={"code": "PROCESSING_ERROR", "message": "Failed", "details": {"reason": "oom"}},
        retryable=True,
    )
    assert failed["status"] == "failed"
    assert failed["error"] == {
        "code": "PROCESSING_ERROR",
        "message": "Failed",
        "details": {"reason": "oom"},
    }
    assert failed["retryable"] is True


async def test_fail_retryable_defaults_to_false(client):
    job = await create_job(client)
    failed = await fail(client, job["id"])
    assert failed["retryable"] is False
    # Only what the worker sent: no null for the error's fields it left out.
    assert failed["error"] == {"code": "BOOM", "message": "it broke"}
    stored = (await client.get(f"/jobs/{job['id']}")).json()
    assert stored["error"] == {"code": "BOOM", "message": "it broke"}


async def test_every_write_to_a_terminal_job_is_invalid_job_state(client):
    for finish in ("complete", "fail", "cancel"):
        job = await create_job(client)
        body = {"error": {"code": "X", "message": "y"}} if finish == "fail" else {}
        assert (await client.post(f"/jobs/{job['id']}/{finish}", json=body)).status_code == 200
        for action, payload in (
            ("progress", {"progress": 10}),
            ("complete", {}),
            ("fail", {"error": {"code": "X", "message": "y"}}),
            ("cancel", {}),
        ):
            response = await client.post(f"/jobs/{job['id']}/{action}", json=payload)
            error = assert_error(response, 400, "INVALID_JOB_STATE")
            ended = {"complete": "completed", "fail": "failed", "cancel": "cancelled"}[finish]
            assert error["details"] == {"id": job["id"], "status": ended}
        assert (await client.get(f"/jobs/{job['id']}")).json()["status"] != "running"


async def test_estimated_completion_at_is_normalised_to_utc_millis(client):
    job = await create_job(client, estimatedCompletionAt="2030-01-22T15:00:00+02:00")
    assert job["estimatedCompletionAt"] == "2030-01-22T13:00:00.000Z"
    updated = await progress(client, job["id"], 10, estimatedCompletionAt="2030-01-22T16:00:00Z")
    assert updated["estimatedCompletionAt"] == "2030-01-22T16:00:00.000Z"
    done = await complete(client, job["id"])
    assert "estimatedCompletionAt" not in done


async def test_estimated_duration_gives_an_eta(client):
    before = datetime.now(UTC)
    job = await create_job(client, estimatedDuration=120_000)
    eta = datetime.fromisoformat(job["estimatedCompletionAt"].replace("Z", "+00:00"))
    assert before + timedelta(seconds=119) <= eta <= datetime.now(UTC) + timedelta(seconds=121)


async def test_ttl_defaults_to_thirty_days(client):
    job = await create_job(client)
    created = datetime.fromisoformat(job["createdAt"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(job["expiresAt"].replace("Z", "+00:00"))
    assert expires - created == timedelta(days=30)
    short = await create_job(client, ttlSeconds=60)
    assert short["expiresAt"] != job["expiresAt"]


async def test_get_unknown_job_is_404_with_id_in_details(client):
    missing = "01HXYZ123456789ABCDEFGHJKM"
    error = assert_error(await client.get(f"/jobs/{missing}"), 404, "NOT_FOUND")
    assert error["details"] == {"id": missing}
    for action in ("progress", "complete", "fail", "cancel"):
        body = {"progress": 1, "error": {"code": "X", "message": "y"}}
        response = await client.post(f"/jobs/{missing}/{action}", json=body)
        assert assert_error(response, 404, "NOT_FOUND")["details"] == {"id": missing}
    assert_error(await client.get(f"/jobs/{missing}/children"), 404, "NOT_FOUND")


async def test_a_malformed_job_id_is_an_unknown_job(client):
    # The SDK's own example: jobs.get('nonexistent') raises NotFoundError (from details.id).
    for bad in ("nonexistent", "01hxyz123456789abcdefghjkm", "' OR 1=1 --", "0" * 27):
        response = await client.get(f"/jobs/{bad}")
        assert assert_error(response, 404, "NOT_FOUND")["details"] == {"id": bad}
    assert_error(await client.get("/jobs/nonexistent/children"), 404, "NOT_FOUND")
    for action, body in (("progress", {"progress": 5}), ("complete", {}), ("cancel", {})):
        response = await client.post(f"/jobs/nonexistent/{action}", json=body)
        assert assert_error(response, 404, "NOT_FOUND")["details"] == {"id": "nonexistent"}
    # Even with a body that is itself invalid: there is no such job to validate it against.
    response = await client.post("/jobs/nonexistent/fail", json={"error": 3})
    assert_error(response, 404, "NOT_FOUND")
    # Authentication still comes first.
    response = await client.get("/jobs/nonexistent", headers={"Authorization": "Bearer nope"})
    assert_error(response, 401, "UNAUTHORIZED")


async def test_list_is_newest_first_with_opaque_cursor_and_no_gaps(client):
    created = [await create_job(client, userId="lister", title=f"job {i}") for i in range(7)]
    await create_job(client, userId="someone-else")
    page1 = (await client.get("/jobs", params={"userId": "lister", "limit": 3})).json()
    assert [j["id"] for j in page1["jobs"]] == [j["id"] for j in reversed(created)][:3]
    # Jobs created between pages must not shift later pages.
    newer = await create_job(client, userId="lister", title="newer")
    page2 = (
        await client.get(
            "/jobs", params={"userId": "lister", "limit": 3, "cursor": page1["nextCursor"]}
        )
    ).json()
    page3 = (
        await client.get(
            "/jobs", params={"userId": "lister", "limit": 3, "cursor": page2["nextCursor"]}
        )
    ).json()
    seen = [j["id"] for page in (page1, page2, page3) for j in page["jobs"]]
    assert seen == [j["id"] for j in reversed(created)]
    assert "nextCursor" not in page3
    assert newer["id"] not in seen


async def test_list_default_limit_is_20_and_last_page_omits_cursor(client):
    for _ in range(21):
        await create_job(client, userId="many")
    first = (await client.get("/jobs", params={"userId": "many"})).json()
    assert len(first["jobs"]) == 20 and "nextCursor" in first
    rest = await client.get("/jobs", params={"userId": "many", "cursor": first["nextCursor"]})
    assert len(rest.json()["jobs"]) == 1 and "nextCursor" not in rest.json()
    empty = (await client.get("/jobs", params={"userId": "nobody"})).json()
    assert empty == {"jobs": []}


async def test_list_validation(client):
    assert_error(await client.get("/jobs"), 400, "VALIDATION_ERROR")
    for limit in (0, 101, "ten"):
        response = await client.get("/jobs", params={"userId": "u", "limit": limit})
        assert_error(response, 400, "VALIDATION_ERROR")
    for limit in (1, 100):
        assert (
            await client.get("/jobs", params={"userId": "u", "limit": limit})
        ).status_code == 200
    for cursor in ("garbage", "djE6bm90LWEtdWxpZA", "!!!"):
        response = await client.get("/jobs", params={"userId": "u", "cursor": cursor})
        assert_error(response, 400, "VALIDATION_ERROR")


async def test_expired_job_reads_as_404(client, db):
    job = await create_job(client, ttlSeconds=60)
    await db.execute(
        "UPDATE jobs SET expires_at = now() - interval '1 second' WHERE id = $1", job["id"]
    )
    assert_error(await client.get(f"/jobs/{job['id']}"), 404, "NOT_FOUND")
    assert_error(
        await client.post(f"/jobs/{job['id']}/progress", json={"progress": 5}), 404, "NOT_FOUND"
    )
    listed = (await client.get("/jobs", params={"userId": job["userId"]})).json()["jobs"]
    assert job["id"] not in [j["id"] for j in listed]


async def test_unknown_routes_and_methods_use_the_envelope(client):
    assert_error(await client.get("/nothing-here"), 404, "NOT_FOUND")
    assert_error(await client.delete("/jobs"), 405, "METHOD_NOT_ALLOWED")
    assert_error(await client.put("/jobs/01HXYZ123456789ABCDEFGHJKM"), 405, "METHOD_NOT_ALLOWED")


async def test_malformed_json_is_a_validation_error(client):
    response = await client.post(
        "/jobs", content=b'{"jobType": "x",', headers={"Content-Type": "application/json"}
    )
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert "JSON" in error["message"]


async def test_oversized_body_is_413_with_envelope(client):
    huge = b'{"jobType":"x","userId":"u","title":"t","metadata":{"a":"' + b"x" * 2_000_000 + b'"}}'
    response = await client.post(
        "/jobs", content=huge, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


async def test_responses_are_json_even_for_server_side_routes(server):
    async with httpx.AsyncClient(base_url=server.url) as raw:
        response = await raw.get("/v1/jobs/01HXYZ123456789ABCDEFGHJKM")
        assert response.headers["content-type"].startswith("application/json")
        assert_error(response, 401, "UNAUTHORIZED")


async def test_a_token_for_some_jobs_lists_only_those_and_their_children(client):
    listed = await create_job(client, userId="u_scoped")
    parent = await create_job(client, userId="u_scoped", totalChildren=1)
    body = {"jobType": "t", "userId": "u_scoped", "title": "c", "parentJobId": parent["id"]}
    child = await create_job(client, **body, childIndex=0)
    await create_job(client, userId="u_scoped")  # not in the token
    minted = await client.post(
        "/tokens", json={"userId": "u_scoped", "jobIds": [listed["id"], parent["id"]]}
    )
    assert minted.status_code == 200, minted.text
    bearer = {"Authorization": f"Bearer {minted.json()['token']}"}
    page = await client.get("/jobs", params={"userId": "u_scoped"}, headers=bearer)
    assert page.status_code == 200, page.text
    assert [j["id"] for j in page.json()["jobs"]] == [child["id"], parent["id"], listed["id"]]
    assert "nextCursor" not in page.json()
