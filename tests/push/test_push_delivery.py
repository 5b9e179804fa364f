"""Push delivery end to end: server processes, their outbox workers, and a local APNs.

The APNs stand-in (``tests/support/fake_apns.py``) is a real HTTP/2 server over TLS (a CA made by
``trustme``) that checks the provider JWT against the public half of a test key, the APNs
headers and the payload, as Apple does. The servers under test use their own database, so
the session's server (which has no APNs settings) never touches their outbox.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.db.engine import plain_url
from app.db.migrate import upgrade
from tests.conftest import AppKeys, make_app
from tests.support.harness import ROOT, ServerProcess, create_database, free_port, start_server

TEAM, KEY_ID, BUNDLE = "TEAM123456", "KEY1234567", "io.seenn.example"
APPLE_EPOCH = datetime(2001, 1, 1, tzinfo=UTC)


@dataclass
class Apns:
    """A running APNs stand-in."""

    url: str
    process: subprocess.Popen[bytes]
    client: httpx.AsyncClient

    async def received(self, token: str | None = None) -> list[dict[str, Any]]:
        items = (await self.client.get(f"{self.url}/_received")).json()
        return [i for i in items if token is None or i["token"] == token]

    async def rejected(self) -> list[dict[str, Any]]:
        return (await self.client.get(f"{self.url}/_rejected")).json()

    def stop(self) -> None:
        self.process.kill()  # a test stand-in: nothing to drain
        self.process.wait(10)


@dataclass
class Credentials:
    directory: Path
    ca: trustme.CA

    @property
    def env(self) -> dict[str, str]:
        return {
            "SEENN_APNS_KEY": str(self.directory / "AuthKey.p8"),
            "SEENN_APNS_KEY_ID": KEY_ID,
            "SEENN_APNS_TEAM_ID": TEAM,
            "SEENN_APNS_BUNDLE_ID": BUNDLE,
            "SEENN_APNS_ENVIRONMENT": "sandbox",
            "SEENN_APNS_CA_FILE": str(self.directory / "ca.pem"),
            "SEENN_PUSH_BATCH_SIZE": "5",
            "SEENN_PUSH_POLL_INTERVAL_SECONDS": "0.05",
            "SEENN_PUSH_RETRY_BASE_SECONDS": "0.2",
            "SEENN_PUSH_RETRY_MAX_SECONDS": "0.5",
            "SEENN_PUSH_MAX_ATTEMPTS": "50",
        }

    def start_apns(self, port: int, delay: float = 0.0) -> Apns:
        d = self.directory
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.fake_apns",
                "--port",
                str(port),
                "--cert",
                str(d / "server.pem"),
                "--key",
                str(d / "server.key"),
                "--public-key",
                str(d / "public.pem"),
                "--team",
                TEAM,
                "--key-id",
                KEY_ID,
                "--bundle",
                BUNDLE,
                "--delay",
                str(delay),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=open(d / f"apns-{port}.log", "wb"),  # closed with the process
        )
        context = ssl.create_default_context(cafile=str(d / "ca.pem"))
        client = httpx.AsyncClient(http2=True, verify=context, timeout=10)
        return Apns(f"https://127.0.0.1:{port}", process, client)


async def wait_until_up(apns: Apns) -> None:
    for _ in range(300):
        if apns.process.poll() is not None:
            raise RuntimeError("the APNs stand-in exited")
        try:
            await apns.received()
            return
        except httpx.TransportError:
            await asyncio.sleep(0.05)
    raise RuntimeError("the APNs stand-in did not start")


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    directory = tmp_path_factory.mktemp("apns")
    key = ec.generate_private_key(ec.SECP256R1())
    (directory / "AuthKey.p8").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / "public.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(directory / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    for extra in cert.cert_chain_pems[1:]:
        with open(directory / "server.pem", "ab") as f:
            f.write(extra.bytes())
    return Credentials(directory, ca)


@pytest.fixture(scope="module")
def push_database(database_url: str) -> str:
    url = create_database(database_url, "seenn_push")
    upgrade(url)
    return url


@pytest.fixture(scope="module")
async def apns(credentials: Credentials) -> AsyncIterator[Apns]:
    # A little latency per request, so that two replicas' batches overlap in time.
    stand_in = credentials.start_apns(free_port(), delay=0.02)
    await wait_until_up(stand_in)
    yield stand_in
    stand_in.stop()
    await stand_in.client.aclose()


@pytest.fixture(scope="module")
def pusher(
    push_database: str, credentials: Credentials, apns: Apns, workdir: Path
) -> Iterator[ServerProcess]:
    env = {**credentials.env, "SEENN_APNS_URL": apns.url}
    server = start_server(push_database, workdir / "push-logs", env=env)
    yield server
    server.stop()


@pytest.fixture
async def app_keys(push_database: str) -> AppKeys:
    return await make_app(push_database)


@pytest.fixture
async def api(pusher: ServerProcess, app_keys: AppKeys) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"{pusher.url}/v1", headers=app_keys.auth(), timeout=30
    ) as c:
        yield c


@pytest.fixture
async def pdb(push_database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(plain_url(push_database))
    yield conn
    await conn.close()


async def fresh_database(database_url: str, prefix: str) -> str:
    """A migrated database of its own: no other server's worker takes its deliveries."""
    url = await asyncio.to_thread(create_database, database_url, prefix)
    await asyncio.to_thread(upgrade, url)
    return url


async def metric(server: ServerProcess, line_start: str) -> float:
    """The value of the first exposition line of ``server`` starting with ``line_start``."""
    async with httpx.AsyncClient(timeout=10) as c:
        text = (await c.get(f"{server.url}/metrics")).text
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def token_for(n: int) -> str:
    return f"{n:08x}" + "ab" * 32


async def job_with_activity(
    api: httpx.AsyncClient, keys: AppKeys, token: str, **fields: Any
) -> dict[str, Any]:
    body = {"jobType": "render", "userId": "u1", "title": "Render", **fields}
    created = await api.post("/jobs", json=body)
    assert created.status_code == 201, created.text
    job = created.json()
    register = {"userId": "u1", "deviceId": "iphone", "jobId": job["id"], "token": token}
    pk = keys.auth(keys.public)
    assert (await api.post("/devices/live-activity", json=register, headers=pk)).status_code == 201
    return job


async def settled(api: httpx.AsyncClient, job_id: str, count: int = 1) -> list[dict[str, Any]]:
    """The job's deliveries once at least ``count`` exist and none is queued or in flight."""
    for _ in range(600):
        pushes = (await api.get(f"/jobs/{job_id}/pushes")).json()["pushes"]
        if len(pushes) >= count and all(p["status"] not in ("pending", "sending") for p in pushes):
            return pushes
        await asyncio.sleep(0.05)
    raise AssertionError(f"deliveries of {job_id} did not settle: {pushes}")


async def test_progress_with_live_activity_push_reaches_apns_once_with_the_content_state(
    api: httpx.AsyncClient, app_keys: AppKeys, apns: Apns, pusher: ServerProcess
) -> None:
    token = token_for(1)
    eta = datetime(2030, 5, 17, 12, 30, 15, 250_000, tzinfo=UTC)
    job = await job_with_activity(api, app_keys, token)
    body = {
        "progress": 40,
        "message": "Encoding video",
        "stage": {"name": "encode", "current": 2, "total": 4},
        "estimatedCompletionAt": "2030-05-17T12:30:15.250Z",
        "push": {"liveActivity": True, "silent": False},
    }
    response = await api.post(f"/jobs/{job['id']}/progress", json=body)
    assert response.status_code == 200, response.text
    pushes = await settled(api, job["id"])
    assert [(p["kind"], p["event"], p["status"]) for p in pushes] == [
        ("liveactivity", "update", "sent")
    ]
    received = await apns.received(token)
    assert len(received) == 1
    headers = received[0]["headers"]
    assert headers["apns-topic"] == f"{BUNDLE}.push-type.liveactivity"
    assert headers["apns-push-type"] == "liveactivity"
    assert headers["apns-priority"] == "10"
    assert headers["apns-id"] == pushes[0]["apnsId"]
    aps = received[0]["payload"]["aps"]
    assert aps["event"] == "update"
    updated_at = datetime.fromisoformat(response.json()["updatedAt"].replace("Z", "+00:00"))
    assert aps["timestamp"] == int(updated_at.timestamp())
    assert aps["content-state"] == {
        "progress": 40,
        "status": "running",
        "message": "Encoding video",
        "stageName": "encode",
        "stageIndex": 2,
        "stageTotal": 4,
        # JSONDecoder's default (.deferredToDate): seconds since 2001-01-01 UTC.
        "estimatedEndTime": (eta - APPLE_EPOCH).total_seconds(),
    }
    assert "dismissal-date" not in aps
    assert not await apns.rejected()
    assert await metric(pusher, 'seenn_push_deliveries_sent_total{kind="liveactivity"}') >= 1
    async with httpx.AsyncClient(timeout=10) as c:
        assert "\nseenn_push_outbox_depth " in (await c.get(f"{pusher.url}/metrics")).text


async def test_a_burst_of_100_updates_is_coalesced(
    api: httpx.AsyncClient, app_keys: AppKeys, apns: Apns, pdb: asyncpg.Connection
) -> None:
    token = token_for(2)
    job = await job_with_activity(api, app_keys, token)
    for value in range(1, 101):
        body = {"progress": value, "push": {"silent": False}}
        assert (await api.post(f"/jobs/{job['id']}/progress", json=body)).status_code == 200
    pushes = await settled(api, job["id"])
    rows = await pdb.fetch(
        "SELECT not_before, coalesced FROM push_deliveries WHERE job_id = $1 ORDER BY id",
        job["id"],
    )
    # Every write is in exactly one delivery; each delivery is a second after the last one.
    assert sum(1 + r["coalesced"] for r in rows) == 100
    assert len(rows) < 100
    gaps = [b["not_before"] - a["not_before"] for a, b in zip(rows, rows[1:], strict=False)]
    assert all(gap >= timedelta(seconds=1) for gap in gaps), gaps
    received = await apns.received(token)
    assert len(received) == len(rows) == sum(p["status"] == "sent" for p in pushes)
    # The last state always arrives.
    assert received[-1]["payload"]["aps"]["content-state"]["progress"] == 100
    seen = [r["payload"]["aps"]["content-state"]["progress"] for r in received]
    assert seen == sorted(seen)


async def test_complete_sends_end_with_a_dismissal_date_and_the_cta(
    api: httpx.AsyncClient, app_keys: AppKeys, apns: Apns
) -> None:
    token = token_for(3)
    job = await job_with_activity(api, app_keys, token)
    body = {
        "result": {"url": "https://cdn.example.com/v.mp4"},
        "message": "Done",
        "liveActivity": {
            "ctaButton": {"text": "Watch", "deepLink": "app://v/1", "style": "primary"}
        },
        "push": {"liveActivity": True, "silent": False},
    }
    assert (await api.post(f"/jobs/{job['id']}/complete", json=body)).status_code == 200
    pushes = await settled(api, job["id"])
    assert [(p["event"], p["status"]) for p in pushes] == [("end", "sent")]
    (received,) = await apns.received(token)
    aps = received["payload"]["aps"]
    assert aps["event"] == "end"
    assert aps["dismissal-date"] == aps["timestamp"] + 300
    assert aps["content-state"] == {
        "progress": 100,
        "status": "completed",
        "message": "Done",
        "resultUrl": "https://cdn.example.com/v.mp4",
        "ctaButtonText": "Watch",
        "ctaDeepLink": "app://v/1",
        "ctaButtonStyle": "primary",
    }


async def test_fail_ends_the_activity_and_alerts_and_silent_pushes_reach_the_device(
    api: httpx.AsyncClient, app_keys: AppKeys, apns: Apns
) -> None:
    token, device = token_for(4), "cafe" * 16
    job = await job_with_activity(api, app_keys, token)
    register = {"userId": "u1", "deviceId": "iphone", "platform": "ios", "token": device}
    assert (await api.post("/devices", json=register)).status_code == 201
    body = {
        "error": {"code": "E_GPU", "message": "GPU lost"},
        "push": {"alert": {"title": "Render failed", "body": "Tap to retry", "badge": 1}},
    }
    assert (await api.post(f"/jobs/{job['id']}/fail", json=body)).status_code == 200
    await settled(api, job["id"], count=3)
    (end,) = await apns.received(token)
    assert end["payload"]["aps"]["content-state"]["errorMessage"] == "GPU lost"
    assert end["payload"]["aps"]["alert"] == {"title": "Render failed", "body": "Tap to retry"}
    to_device = {r["headers"]["apns-push-type"]: r for r in await apns.received(device)}
    assert set(to_device) == {"alert", "background"}
    assert to_device["background"]["headers"]["apns-priority"] == "5"
    assert to_device["background"]["headers"]["apns-topic"] == BUNDLE
    assert to_device["background"]["payload"]["aps"] == {"content-available": 1}
    assert to_device["alert"]["payload"]["aps"]["alert"]["title"] == "Render failed"
    assert to_device["alert"]["payload"]["aps"]["badge"] == 1
    assert to_device["alert"]["payload"]["seenn"]["status"] == "failed"


async def test_a_410_deletes_the_token(
    api: httpx.AsyncClient,
    app_keys: AppKeys,
    apns: Apns,
    pdb: asyncpg.Connection,
    pusher: ServerProcess,
) -> None:
    token = "dead" + "00" * 32
    job = await job_with_activity(api, app_keys, token)
    body = {"progress": 10, "push": {"silent": False}}
    assert (await api.post(f"/jobs/{job['id']}/progress", json=body)).status_code == 200
    (push,) = await settled(api, job["id"])
    assert (push["status"], push["lastStatus"], push["lastReason"]) == (
        "failed",
        410,
        "Unregistered",
    )
    remaining = await pdb.fetchval(
        "SELECT count(*) FROM live_activity_tokens WHERE job_id = $1", job["id"]
    )
    assert remaining == 0
    # Later writes have no token to push to.
    body = {"progress": 20, "push": {"silent": False}}
    assert (await api.post(f"/jobs/{job['id']}/progress", json=body)).status_code == 200
    assert len((await api.get(f"/jobs/{job['id']}/pushes")).json()["pushes"]) == 1
    assert [r for r in await apns.rejected() if r["token"] == token] == [
        {"token": token, "status": 410, "reason": "Unregistered"}
    ]
    failed = 'seenn_push_deliveries_failed_total{kind="liveactivity",reason="Unregistered"}'
    assert await metric(pusher, failed) >= 1
    assert await metric(pusher, "seenn_push_tokens_deleted_total") >= 1


async def test_without_apns_settings_devices_are_stored_and_pushes_skipped_with_one_log_line(
    database_url: str, workdir: Path
) -> None:
    url = await fresh_database(database_url, "seenn_push_off")
    keys = await make_app(url)
    env = {"SEENN_LOG_LEVEL": "info", "SEENN_PUSH_POLL_INTERVAL_SECONDS": "0.05"}
    server = start_server(url, workdir / "push-off", env=env)
    try:
        async with httpx.AsyncClient(
            base_url=f"{server.url}/v1", headers=keys.auth(), timeout=30
        ) as c:
            job = await job_with_activity(c, keys, token_for(9))
            body = {"progress": 30, "push": {"liveActivity": True}}
            assert (await c.post(f"/jobs/{job['id']}/progress", json=body)).status_code == 200
            (push,) = await settled(c, job["id"])
            assert (push["status"], push["lastReason"]) == ("skipped", "APNs is not configured")
        assert await metric(server, "seenn_push_deliveries_skipped_total") == 1
    finally:
        server.stop()
    said = [line for line in server.log().splitlines() if "APNs is not configured" in line]
    assert len(said) == 1, said


async def test_a_server_restart_loses_no_queued_delivery(
    database_url: str, credentials: Credentials, workdir: Path
) -> None:
    push_database = await fresh_database(database_url, "seenn_restart")
    app_keys = await make_app(push_database)
    port = free_port()  # nothing listens there yet: every attempt fails and is retried
    env = {**credentials.env, "SEENN_APNS_URL": f"https://127.0.0.1:{port}"}
    logs = workdir / "push-restart"
    server = start_server(push_database, logs, env=env)
    token = token_for(5)
    try:
        async with httpx.AsyncClient(
            base_url=f"{server.url}/v1", headers=app_keys.auth(), timeout=30
        ) as c:
            job = await job_with_activity(c, app_keys, token)
            body = {"progress": 70, "push": {"silent": False}}
            assert (await c.post(f"/jobs/{job['id']}/progress", json=body)).status_code == 200
            for _ in range(600):
                (push,) = (await c.get(f"/jobs/{job['id']}/pushes")).json()["pushes"]
                if push["attempts"] >= 1 and push["status"] == "pending":
                    break
                await asyncio.sleep(0.05)
            assert push["status"] == "pending" and push["lastReason"] == "ConnectError", push
        retried = 'seenn_push_deliveries_retried_total{kind="liveactivity"}'
        assert await metric(server, retried) >= 1
    finally:
        server.stop()
    stand_in = credentials.start_apns(port)
    try:
        await wait_until_up(stand_in)
        server = start_server(push_database, logs, env=env)
        try:
            async with httpx.AsyncClient(
                base_url=f"{server.url}/v1", headers=app_keys.auth(), timeout=30
            ) as c:
                (push,) = await settled(c, job["id"])
        finally:
            server.stop()
        assert push["status"] == "sent"
        received = await stand_in.received(token)
        assert [r["headers"]["apns-id"] for r in received] == [push["apnsId"]]
        assert received[0]["payload"]["aps"]["content-state"]["progress"] == 70
    finally:
        stand_in.stop()
        await stand_in.client.aclose()


async def test_two_replicas_never_send_the_same_delivery_twice(
    pusher: ServerProcess,
    push_database: str,
    credentials: Credentials,
    apns: Apns,
    app_keys: AppKeys,
    api: httpx.AsyncClient,
    workdir: Path,
) -> None:
    env = {**credentials.env, "SEENN_APNS_URL": apns.url}
    second = start_server(push_database, workdir / "push-replica", env=env)
    try:
        pk = app_keys.auth(app_keys.public)
        jobs = []
        for n in range(30):
            job = await api.post("/jobs", json={"jobType": "r", "userId": "u2", "title": "t"})
            jobs.append(job.json())
            device = {
                "userId": "u2",
                "deviceId": f"d{n}",
                "platform": "ios",
                "token": token_for(100 + n),
            }
            assert (await api.post("/devices", json=device, headers=pk)).status_code == 201
        # Every job's write queues one alert and one silent push to each of the 30 devices.
        alert = {"alert": {"title": "t", "body": "b"}}
        writes = [
            api.post(f"/jobs/{job['id']}/progress", json={"progress": 1, "push": alert})
            for job in jobs[:10]
        ]
        assert all(r.status_code == 200 for r in await asyncio.gather(*writes))
        pushes: list[dict[str, Any]] = []
        for job in jobs[:10]:
            pushes += await settled(api, job["id"], count=60)
    finally:
        second.stop()
    assert len(pushes) == 600 and all(p["status"] == "sent" for p in pushes)
    ids = {p["apnsId"] for p in pushes}
    received = [r for r in await apns.received() if r["headers"]["apns-id"] in ids]
    sent_ids = [r["headers"]["apns-id"] for r in received]
    assert len(sent_ids) == len(set(sent_ids)) == 600
    # Both replicas took part (each sends over its own HTTP/2 connection).
    assert len({tuple(r["peer"]) for r in received}) >= 2
