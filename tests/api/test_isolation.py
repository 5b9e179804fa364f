"""Keys see only their own app and mode; public keys are read-only."""

import httpx

from tests.conftest import make_app
from tests.support.helpers import assert_error, create_job, create_parent


async def test_public_key_reads_but_cannot_write(server, client, keys):
    job = await create_job(client)
    parent = await create_parent(client, 1)
    async with httpx.AsyncClient(
        base_url=f"{server.url}/v1", headers=keys.auth(keys.public)
    ) as public:
        assert (await public.get(f"/jobs/{job['id']}")).status_code == 200
        assert (await public.get("/jobs", params={"userId": job["userId"]})).status_code == 200
        assert (await public.get(f"/jobs/{parent['id']}/children")).status_code == 200
        writes = [
            ("/jobs", {"jobType": "x", "userId": "u", "title": "t"}),
            (f"/jobs/{job['id']}/progress", {"progress": 5}),
            (f"/jobs/{job['id']}/complete", {}),
            (f"/jobs/{job['id']}/fail", {"error": {"code": "X", "message": "m"}}),
            (f"/jobs/{job['id']}/cancel", {}),
        ]
        for path, body in writes:
            assert_error(await public.post(path, json=body), 403, "FORBIDDEN")
    assert (await client.get(f"/jobs/{job['id']}")).json()["status"] == "pending"


async def test_other_app_and_other_mode_get_404(server, client, keys, database_url):
    job = await create_job(client)
    other = await make_app(database_url)
    for key in (other.secret, other.public, keys.live_secret):
        async with httpx.AsyncClient(
            base_url=f"{server.url}/v1", headers={"Authorization": f"Bearer {key}"}
        ) as c:
            error = assert_error(await c.get(f"/jobs/{job['id']}"), 404, "NOT_FOUND")
            assert error["details"] == {"id": job["id"]}
            listed = await c.get("/jobs", params={"userId": job["userId"]})
            assert listed.json() == {"jobs": []}
            if key != other.public:
                response = await c.post(f"/jobs/{job['id']}/progress", json={"progress": 9})
                assert_error(response, 404, "NOT_FOUND")
    assert (await client.get(f"/jobs/{job['id']}")).json()["progress"] == 0


async def test_child_cannot_attach_to_another_apps_parent(server, client, database_url):
    parent = await create_parent(client, 2)
    other = await make_app(database_url)
    async with httpx.AsyncClient(base_url=f"{server.url}/v1", headers=other.auth()) as c:
        response = await c.post(
            "/jobs",
            json={
                "jobType": "x",
                "userId": parent["userId"],
                "title": "t",
                "parentJobId": parent["id"],
                "childIndex": 0,
            },
        )
        assert_error(response, 400, "INVALID_PARENT")


async def test_missing_and_unknown_keys_are_401(server):
    async with httpx.AsyncClient(base_url=f"{server.url}/v1") as c:
        assert_error(await c.get("/jobs", params={"userId": "u"}), 401, "UNAUTHORIZED")
        for header in ("Bearer sk_test_" + "a" * 32, "Bearer nope", "Basic abc", "Bearer"):
            response = await c.get(
                "/jobs", params={"userId": "u"}, headers={"Authorization": header}
            )
            assert_error(response, 401, "UNAUTHORIZED")
