"""The outbox: a write that asks for a push records its deliveries in its own transaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import AppKeys
from tests.support.helpers import (
    assert_error,
    complete,
    create_child,
    create_job,
    create_parent,
    progress,
)

LIVE_TOKEN = "a1" * 40
DEVICE_TOKEN = "b2" * 32


async def registered_job(client: httpx.AsyncClient, keys: AppKeys) -> dict[str, Any]:
    job = await create_job(client, userId="u1", title="Render")
    pk = keys.auth(keys.public)
    body = {"userId": "u1", "deviceId": "phone", "jobId": job["id"], "token": LIVE_TOKEN}
    assert (await client.post("/devices/live-activity", json=body, headers=pk)).status_code == 201
    device = {"userId": "u1", "deviceId": "phone", "platform": "ios", "token": DEVICE_TOKEN}
    assert (await client.post("/devices", json=device, headers=pk)).status_code == 201
    return job


async def outbox(db: asyncpg.Connection, job_id: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT kind, event, token, payload::text AS payload FROM push_deliveries"
        " WHERE job_id = $1 ORDER BY id",
        job_id,
    )
    return [dict(r) for r in rows]


async def test_a_write_without_push_updates_a_registered_live_activity_only(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    """The SDK's ``push.liveActivity`` defaults to on: a worker that sends no ``push`` still
    moves the lock screen, and ends it. The user's devices get nothing unasked."""
    job = await registered_job(client, keys)
    await progress(client, job["id"], 10)
    rows = await outbox(db, job["id"])
    assert [(r["kind"], r["event"], r["token"]) for r in rows] == [
        ("liveactivity", "update", LIVE_TOKEN)
    ]
    assert json.loads(rows[0]["payload"])["aps"]["content-state"]["progress"] == 10
    await complete(client, job["id"])
    events = [(r["kind"], r["event"]) for r in await outbox(db, job["id"])]
    assert events[-1] == ("liveactivity", "end")
    assert {kind for kind, _ in events} == {"liveactivity"}


async def test_a_job_without_a_live_activity_queues_nothing_without_push(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job = await create_job(client, userId="u1", title="Render")
    await progress(client, job["id"], 10)
    await complete(client, job["id"])
    assert await outbox(db, job["id"]) == []


async def test_a_parents_live_activity_follows_its_children(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    """A parent's state moves only through its children's writes: its Live Activity is
    updated by them, and ended when the last child ends."""
    parent = await create_parent(client, 2, userId="u1")
    body = {"userId": "u1", "deviceId": "phone", "jobId": parent["id"], "token": LIVE_TOKEN}
    pk = keys.auth(keys.public)
    assert (await client.post("/devices/live-activity", json=body, headers=pk)).status_code == 201
    first = await create_child(client, parent, 0, userId="u1")
    second = await create_child(client, parent, 1, userId="u1")
    await progress(client, first["id"], 50)
    rows = await outbox(db, parent["id"])
    assert [(r["kind"], r["event"]) for r in rows] == [("liveactivity", "update")]
    # average mode: (50 + 0) / 2
    assert json.loads(rows[0]["payload"])["aps"]["content-state"]["progress"] == 25
    await complete(client, first["id"])
    await complete(client, second["id"])
    rows = await outbox(db, parent["id"])
    assert (rows[-1]["kind"], rows[-1]["event"]) == ("liveactivity", "end")
    state = json.loads(rows[-1]["payload"])["aps"]["content-state"]
    assert (state["status"], state["progress"]) == ("completed", 100)
    # The children have no Live Activity of their own: nothing queued for them.
    assert await outbox(db, first["id"]) == []


async def test_a_write_with_push_queues_each_kind_it_asks_for(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    job = await registered_job(client, keys)
    push = {"alert": {"title": "Halfway", "body": "50% done"}, "richPush": {"senderName": "Bot"}}
    updated = await progress(client, job["id"], 50, message="Encoding", push=push)
    rows = await outbox(db, job["id"])
    assert sorted((r["kind"], r["event"], r["token"]) for r in rows) == [
        ("alert", None, DEVICE_TOKEN),
        ("background", None, DEVICE_TOKEN),
        ("liveactivity", "update", LIVE_TOKEN),
    ]
    listed = (await client.get(f"/jobs/{job['id']}/pushes")).json()["pushes"]
    live = next(p for p in listed if p["kind"] == "liveactivity")
    # A cold type still has a rate from creation, so the job carries an estimate; the widget
    # decodes it as a Swift Date: seconds since 2001-01-01T00:00:00Z.
    eta = datetime.fromisoformat(updated["estimatedCompletionAt"].replace("Z", "+00:00"))
    assert live["payload"]["aps"]["content-state"] == {
        "progress": 50,
        "status": "running",
        "message": "Encoding",
        "estimatedEndTime": pytest.approx(
            (eta - datetime(2001, 1, 1, tzinfo=UTC)).total_seconds(), abs=0.001
        ),
    }
    assert live["payload"]["aps"]["alert"] == {"title": "Halfway", "body": "50% done"}
    alert = next(p for p in listed if p["kind"] == "alert")
    assert alert["payload"]["aps"]["mutable-content"] == 1
    assert alert["payload"]["seenn"]["senderName"] == "Bot"


async def test_push_options_can_turn_kinds_off(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    job = await registered_job(client, keys)
    await progress(client, job["id"], 5, push={"liveActivity": False, "silent": False})
    assert await outbox(db, job["id"]) == []
    await progress(client, job["id"], 6, push={"liveActivity": True, "silent": False})
    assert [r["kind"] for r in await outbox(db, job["id"])] == ["liveactivity"]


async def test_a_rejected_write_queues_nothing(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    job = await registered_job(client, keys)
    await complete(client, job["id"])
    queued = await outbox(db, job["id"])  # the Live Activity's end
    late = await client.post(
        f"/jobs/{job['id']}/progress", json={"progress": 60, "push": {"liveActivity": True}}
    )
    assert_error(late, 400, "INVALID_JOB_STATE")
    assert await outbox(db, job["id"]) == queued


async def test_malformed_push_options_are_rejected(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    job = await registered_job(client, keys)
    for push in (
        {"liveActivity": "yes"},
        {"alert": {"body": "no title"}},
        {"richPush": {}},
        {"alert": {"title": "t", "body": "b", "badge": -1}},
    ):
        response = await client.post(
            f"/jobs/{job['id']}/progress", json={"progress": 1, "push": push}
        )
        assert_error(response, 400, "VALIDATION_ERROR")
    bad_cta = {"liveActivity": {"ctaButton": {"text": "Open"}}}
    assert_error(
        await client.post(f"/jobs/{job['id']}/complete", json=bad_cta), 400, "VALIDATION_ERROR"
    )
    assert (await client.get(f"/jobs/{job['id']}")).json()["progress"] == 0
    assert await outbox(db, job["id"]) == []


async def test_a_live_activity_payload_fits_in_apns_4_kb(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    job = await registered_job(client, keys)
    long = "x" * 2000
    await progress(client, job["id"], 99, message=long)
    body = {
        "result": {"url": "https://cdn.example.com/" + "a" * 5000},
        "message": long,
        "liveActivity": {"ctaButton": {"text": "t" * 100, "deepLink": "app://" + "d" * 1990}},
        "push": {"silent": False, "alert": {"title": "T" * 200, "body": "B" * 1000}},
    }
    await complete(client, job["id"], **body)
    rows = {r["kind"]: r for r in await outbox(db, job["id"])}
    assert set(rows) == {"liveactivity", "alert"}
    assert all(len(r["payload"].encode()) <= 4096 for r in rows.values())
    row = rows["liveactivity"]
    state = json.loads(row["payload"])["aps"]["content-state"]
    assert state["progress"] == 100 and state["status"] == "completed"
    assert "resultUrl" not in state and "ctaDeepLink" not in state and "ctaButtonText" not in state
    assert state["message"].endswith("…") and len(state["message"]) == 400


async def test_cancelling_a_parent_ends_its_childrens_live_activities(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    parent = await create_parent(client, 2, userId="u1")
    watched = await create_child(client, parent, 0, userId="u1")
    other = await create_child(client, parent, 1, userId="u1")
    body = {"userId": "u1", "deviceId": "phone", "jobId": watched["id"], "token": LIVE_TOKEN}
    pk = keys.auth(keys.public)
    assert (await client.post("/devices/live-activity", json=body, headers=pk)).status_code == 201
    assert (await client.post(f"/jobs/{parent['id']}/cancel", json={})).status_code == 200
    rows = await outbox(db, watched["id"])
    assert [(r["kind"], r["event"]) for r in rows] == [("liveactivity", "end")]
    assert json.loads(rows[0]["payload"])["aps"]["content-state"]["status"] == "cancelled"
    assert await outbox(db, other["id"]) == []


@pytest.mark.parametrize("finish", ["fail", "cancel"])
async def test_failing_or_cancelling_with_push_queues_what_it_asks_for(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection, finish: str
) -> None:
    job = await registered_job(client, keys)
    body: dict[str, Any] = {"push": {"alert": {"title": "Stopped", "body": "no"}}}
    if finish == "fail":
        body["error"] = {"code": "X", "message": "y"}
    response = await client.post(f"/jobs/{job['id']}/{finish}", json=body)
    assert response.status_code == 200, response.text
    kinds = sorted((r["kind"], r["event"]) for r in await outbox(db, job["id"]))
    assert kinds == [("alert", None), ("background", None), ("liveactivity", "end")]


async def test_complete_passes_its_cta_button_and_message_to_the_live_activity(
    client: httpx.AsyncClient, keys: AppKeys, db: asyncpg.Connection
) -> None:
    """``liveActivity.ctaButton`` of a ``complete`` reaches the ended Live Activity with every
    field it sets, and the completion's ``message`` replaces the last progress message."""
    job = await registered_job(client, keys)
    await progress(client, job["id"], 90, message="Encoding")
    cta = {
        "text": "Open video",
        "deepLink": "myapp://videos/42",
        "style": "outline",
        "backgroundColor": "#000000",
        "textColor": "#FFFFFF",
        "cornerRadius": 12,
    }
    done = await complete(client, job["id"], message="Ready", liveActivity={"ctaButton": cta})
    assert done["message"] == "Ready"
    rows = await outbox(db, job["id"])
    assert [(r["kind"], r["event"]) for r in rows][-1] == ("liveactivity", "end")
    assert json.loads(rows[-1]["payload"])["aps"]["content-state"] == {
        "progress": 100,
        "status": "completed",
        "message": "Ready",
        "ctaButtonText": "Open video",
        "ctaDeepLink": "myapp://videos/42",
        "ctaButtonStyle": "outline",
        "ctaBackgroundColor": "#000000",
        "ctaTextColor": "#FFFFFF",
        "ctaCornerRadius": 12,
    }
