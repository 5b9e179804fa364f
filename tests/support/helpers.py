"""Small factories so each test shows only what it is about."""

from __future__ import annotations

from typing import Any

import httpx


async def create_job(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"jobType": "video-generation", "userId": "user_1", "title": "A job", **fields}
    response = await client.post("/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def create_parent(client: httpx.AsyncClient, total: int, **fields: Any) -> dict[str, Any]:
    return await create_job(client, jobType="batch", title="Pack", totalChildren=total, **fields)


async def create_child(
    client: httpx.AsyncClient, parent: dict[str, Any], index: int, **fields: Any
) -> dict[str, Any]:
    body = {"jobType": "image", "title": f"Child {index}", "userId": parent["userId"], **fields}
    return await create_job(client, parentJobId=parent["id"], childIndex=index, **body)


async def post(client: httpx.AsyncClient, path: str, body: Any = None) -> httpx.Response:
    return await client.post(path, json=body) if body is not None else await client.post(path)


async def progress(client: httpx.AsyncClient, job_id: str, value: int, **fields: Any) -> dict:
    response = await client.post(f"/jobs/{job_id}/progress", json={"progress": value, **fields})
    assert response.status_code == 200, response.text
    return response.json()


async def complete(client: httpx.AsyncClient, job_id: str, **fields: Any) -> dict[str, Any]:
    response = await client.post(f"/jobs/{job_id}/complete", json=fields)
    assert response.status_code == 200, response.text
    return response.json()


async def fail(client: httpx.AsyncClient, job_id: str, **fields: Any) -> dict[str, Any]:
    body = {"error": {"code": "BOOM", "message": "it broke"}, **fields}
    response = await client.post(f"/jobs/{job_id}/fail", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is the spec's envelope with ``status`` and ``code``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]
