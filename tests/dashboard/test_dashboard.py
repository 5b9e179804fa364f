"""The dashboard in a real browser (Debian's Chromium driven by Playwright), against the real
server and PostgreSQL: sign-in, live updates without reload, a parent's children, cancel,
read-only public keys, wrong keys, sign-out, ETA reset and key revocation. Also the session
and CSRF rules over plain HTTP, and /docs without a CDN.

Live updates must show within 2 s of the API call (the dashboard's stated bound).
Set SEENN_UPDATE_SCREENSHOTS=1 to refresh docs/screenshots/ from this run.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import AppKeys
from tests.support.harness import ROOT, create_key
from tests.support.helpers import (
    assert_error,
    complete,
    create_child,
    create_job,
    create_parent,
    fail,
)
from tests.support.helpers import progress as report_progress

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect

CHROMIUM = os.environ.get("SEENN_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LIVE = 2000  # ms: a job's change shows in the browser within this, without a reload
SCREENSHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[object]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/test.sh installs Debian's chromium)")
    async with playwright_api.async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


async def sign_in(browser, server, key: str, viewport: dict | None = None):
    """A new browser context signed in with ``key``; returns (context, page)."""
    context = await browser.new_context(viewport=viewport or {"width": 1280, "height": 800})
    page = await context.new_page()
    await page.goto(f"{server.url}/dashboard")
    assert page.url.endswith("/dashboard/login")  # not signed in: sent to the form
    await page.fill("input[name=apiKey]", key)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{server.url}/dashboard")
    return context, page


async def live(page) -> None:
    """Wait until the page's event stream is connected, and mark the document: the mark
    survives only if nothing reloads the page."""
    await expect(page.locator("#stream-state")).to_have_attribute("data-state", "connected")
    await page.evaluate("window.__noReload = 'still here'")


async def assert_not_reloaded(page) -> None:
    assert await page.evaluate("window.__noReload") == "still here"


def row(page, job_id: str):
    return page.locator(f'tr[data-job-id="{job_id}"]')


async def test_sign_in_then_a_new_job_appears_and_its_bar_moves_without_reload(
    browser, server, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    context, page = await sign_in(browser, server, keys.secret)
    try:
        cookie = next(c for c in await context.cookies() if c["name"] == "seenn_dashboard")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/dashboard"
        assert keys.secret not in page.url and keys.secret not in await page.content()
        assert await page.evaluate("JSON.stringify(window.localStorage)") == "{}"
        await live(page)

        job = await create_job(client, title="Render intro", userId="alice")
        line = row(page, job["id"])
        await expect(line).to_be_visible(timeout=LIVE)
        await expect(line.locator('[data-f="status"]')).to_have_text("pending", timeout=LIVE)

        stage = {"name": "encode", "current": 2, "total": 4}
        queue = {"position": 3, "total": 9}
        await report_progress(
            client, job["id"], 37, message="Encoding frames", stage=stage, queue=queue
        )
        await expect(line.locator("progress")).to_have_js_property("value", 37, timeout=LIVE)
        await expect(line.locator('[data-f="pct"]')).to_have_text("37%", timeout=LIVE)
        await expect(line.locator('[data-f="status"]')).to_have_text("running", timeout=LIVE)
        await expect(line.locator('[data-f="stage"]')).to_have_text("encode (2/4)", timeout=LIVE)
        await expect(line.locator('[data-f="queue"]')).to_have_text("#3 of 9", timeout=LIVE)
        await expect(line.locator('[data-f="message"]')).to_have_text("Encoding frames")

        # No layout jump: a long message and a new stage leave the row and its bar in place.
        before = (await line.bounding_box(), await line.locator("progress").bounding_box())
        long = "Encoding frames " * 20
        stage = {"name": "a-much-longer-stage-name", "current": 3, "total": 4}
        await report_progress(client, job["id"], 81, message=long.strip(), stage=stage)
        await expect(line.locator("progress")).to_have_js_property("value", 81, timeout=LIVE)
        after = (await line.bounding_box(), await line.locator("progress").bounding_box())
        assert after == before
        await complete(client, job["id"])
        await expect(line.locator('[data-f="status"]')).to_have_text("completed", timeout=LIVE)
        await expect(line.locator("progress")).to_have_js_property("value", 100, timeout=LIVE)
        # Relative times carry the exact time on hover.
        updated = line.locator('time[data-f="updatedAt"]')
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", await updated.get_attribute("title"))
        await assert_not_reloaded(page)
    finally:
        await context.close()


async def test_a_job_created_before_the_stream_opens_still_appears(
    browser, server, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    """The page is rendered, then its stream opens: a job created in between is not lost."""
    await create_job(client, title="Already there")
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await page.goto(f"{server.url}/dashboard/login")
        await page.fill("input[name=apiKey]", keys.secret)
        asked, release = asyncio.Event(), asyncio.Event()

        async def hold(route) -> None:
            asked.set()
            await release.wait()
            await route.continue_()

        await page.route("**/dashboard/events*", hold)
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{server.url}/dashboard")
        await expect(page.locator("#job-rows tr")).to_have_count(1)
        await asked.wait()  # the page has asked for its stream, which is held back
        gap = await create_job(client, title="Created in between")
        release.set()
        await expect(row(page, gap["id"])).to_be_visible(timeout=LIVE)
        ids = await page.locator("#job-rows tr").evaluate_all("rs => rs.map(r => r.dataset.jobId)")
        assert ids[0] == gap["id"] and len(ids) == 2
    finally:
        await context.close()


async def test_the_list_filters_and_pages_newest_first(
    browser, server, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    made = [await create_job(client, title=f"Job {i}", userId=f"u{i % 2}") for i in range(28)]
    failed = made[3]
    await fail(client, failed["id"])
    context, page = await sign_in(browser, server, keys.secret)
    try:
        ids = await page.locator("#job-rows tr").evaluate_all("rs => rs.map(r => r.dataset.jobId)")
        assert ids == [j["id"] for j in reversed(made)][:25]  # newest first, a page of 25
        await page.click("a[rel=next]")
        ids = await page.locator("#job-rows tr").evaluate_all("rs => rs.map(r => r.dataset.jobId)")
        assert ids == [j["id"] for j in reversed(made)][25:]

        await page.goto(f"{server.url}/dashboard?user=u1")
        users = await page.locator('#job-rows [data-f="userId"]').all_inner_texts()
        assert users and set(users) == {"u1"} and len(users) == 14
        await page.goto(f"{server.url}/dashboard?status=failed")
        ids = await page.locator("#job-rows tr").evaluate_all("rs => rs.map(r => r.dataset.jobId)")
        assert ids == [failed["id"]]
        await page.goto(f"{server.url}/dashboard?type=nope")
        await expect(page.locator("#no-jobs")).to_be_visible()
        response = await page.goto(f"{server.url}/dashboard?status=bogus")
        assert response.status == 400
        assert "status must be one of" in await page.inner_text("#error-message")
    finally:
        await context.close()


async def test_a_parents_page_shows_its_children_updating_live(
    browser, server, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    parent = await create_parent(client, 4, metadata={"batch": "photos-17", "size": 4})
    kids = [await create_child(client, parent, i) for i in range(3)]
    context, page = await sign_in(browser, server, keys.secret)
    try:
        await page.goto(f"{server.url}/dashboard/jobs/{parent['id']}")
        await live(page)
        assert '"batch": "photos-17"' in await page.inner_text("#metadata")
        await expect(page.locator("#child-rows tr")).to_have_count(3)

        await report_progress(client, kids[1]["id"], 50, message="Upscaling")
        child = row(page, kids[1]["id"])
        await expect(child.locator("progress")).to_have_js_property("value", 50, timeout=LIVE)
        await expect(child.locator('[data-f="message"]')).to_have_text("Upscaling", timeout=LIVE)
        await expect(page.locator('[data-count="running"]')).to_have_text("1", timeout=LIVE)

        await complete(client, kids[0]["id"])
        await fail(client, kids[2]["id"])
        await expect(page.locator('[data-count="completed"]')).to_have_text("1", timeout=LIVE)
        await expect(page.locator('[data-count="failed"]')).to_have_text("1", timeout=LIVE)
        await expect(row(page, kids[2]["id"]).locator('[data-f="status"]')).to_have_text(
            "failed", timeout=LIVE
        )
        # The aggregate bar shows the parent's progress as the API reports it.
        aggregate = (await client.get(f"/jobs/{parent['id']}")).json()["progress"]
        assert aggregate > 0
        summary = page.locator("#summary progress")
        await expect(summary).to_have_js_property("value", aggregate, timeout=LIVE)

        late = await create_child(client, parent, 3, title="Late child")
        await expect(row(page, late["id"])).to_be_visible(timeout=LIVE)
        indexes = await page.locator("#child-rows tr").evaluate_all(
            "rs => rs.map(r => Number(r.dataset.index))"
        )
        assert indexes == [0, 1, 2, 3]
        history = page.locator("#event-rows tr")
        assert await history.count() >= 5  # from the event log, and appended live
        await assert_not_reloaded(page)
    finally:
        await context.close()


async def test_a_job_page_shows_every_field_result_link_and_history(
    browser, server, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    job = await create_job(client, title="Thumbs", metadata={"source": "s3://in/x.mov"})
    await report_progress(client, job["id"], 40, message="Cutting")
    url = "https://cdn.example.com/thumbs.zip"
    await complete(client, job["id"], result={"type": "archive", "url": url})
    context, page = await sign_in(browser, server, keys.secret)
    try:
        await page.goto(f"{server.url}/dashboard/jobs/{job['id']}")
        assert await page.get_attribute("#result-link", "href") == url
        fields = await page.inner_text("#fields")
        for name in ("id", "appId", "userId", "jobType", "createdAt", "completedAt", "expiresAt"):
            assert name in fields
        events = await page.locator("#event-rows code").all_inner_texts()
        assert events == ["job.completed", "job.progress", "job.started"]
        assert await page.locator("#cancel-job").count() == 0  # finished: nothing to cancel
        response = await page.goto(f"{server.url}/dashboard/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV")
        assert response.status == 404
    finally:
        await context.close()


async def details(page) -> dict[str, str]:
    """What the job page shows beside the summary: the field list and the three cards."""
    out = {"fields": await page.inner_text("#fields")}
    for card in ("#result-card", "#error-card"):
        out[card] = await page.inner_text(card) if await page.is_visible(card) else ""
    out["metadata"] = (
        await page.inner_text("#metadata") if await page.is_visible("#metadata") else ""
    )
    out["link"] = await page.get_attribute("#result-link", "href") or ""
    return out


async def test_a_job_pages_fields_result_and_error_follow_the_stream_as_a_reload_shows_them(
    browser, server, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    done = await create_job(client, title="Render", metadata={"scene": 7})
    broken = await create_job(client, title="Encode")
    context, page = await sign_in(browser, server, keys.secret)
    try:
        await page.goto(f"{server.url}/dashboard/jobs/{done['id']}")
        await live(page)
        assert not await page.is_visible("#result-card")
        assert "completedAt" not in await page.inner_text("#fields")
        url = "https://cdn.example.com/render.mp4"
        await complete(client, done["id"], result={"url": url, "frames": 240}, message="Done")
        await expect(page.locator("#result-link")).to_have_attribute("href", url, timeout=LIVE)
        await expect(page.locator("#fields")).to_contain_text("completedAt", timeout=LIVE)
        await expect(page.locator("#result")).to_contain_text('"frames": 240')
        await assert_not_reloaded(page)
        shown = await details(page)
        await page.reload()
        assert await details(page) == shown  # live, the page says what a fresh load says

        await page.goto(f"{server.url}/dashboard/jobs/{broken['id']}")
        await live(page)
        assert not await page.is_visible("#error-card")
        await fail(
            client,
            broken["id"],
            error={"code": "CODEC", "message": "no such codec", "details": {"codec": "av2"}},
            retryable=True,
        )
        await expect(page.locator("#error-card")).to_be_visible(timeout=LIVE)
        await expect(page.locator("#error-code")).to_have_text("CODEC")
        await expect(page.locator("#error-retryable")).to_be_visible()
        await expect(page.locator("#error-details")).to_contain_text('"codec": "av2"')
        await expect(page.locator("#no-metadata")).to_be_visible()
        await assert_not_reloaded(page)
        shown = await details(page)
        await page.reload()
        assert await details(page) == shown
    finally:
        await context.close()


async def test_cancel_asks_for_confirmation_and_cancels(
    browser, server, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    job = await create_job(client, title="Long render")
    await report_progress(client, job["id"], 20)
    context, page = await sign_in(browser, server, keys.secret)
    try:
        await page.goto(f"{server.url}/dashboard/jobs/{job['id']}")
        questions: list[str] = []

        async def dismiss(dialog) -> None:
            questions.append(dialog.message)
            await dialog.dismiss()

        page.once("dialog", dismiss)
        await page.click("#cancel-job")
        assert questions and "Cancel" in questions[0]
        # Dismissed: the browser sent nothing (a form submission is synchronous with it).
        assert (await client.get(f"/jobs/{job['id']}")).json()["status"] == "running"

        page.once("dialog", lambda dialog: dialog.accept())
        await page.click("#cancel-job")
        await expect(page.locator('#summary [data-f="status"]')).to_have_text("cancelled")
        assert (await client.get(f"/jobs/{job['id']}")).json()["status"] == "cancelled"
        assert await page.locator("#cancel-job").count() == 0
    finally:
        await context.close()


async def test_keyboard_alone_reaches_a_job_and_its_cancel_button(
    browser, server, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    job = await create_job(client, title="Reached by keyboard")
    context, page = await sign_in(browser, server, keys.secret)
    try:
        link = f"/dashboard/jobs/{job['id']}"
        for _ in range(30):  # Tab through the header and the filters to the job's link
            await page.keyboard.press("Tab")
            if await page.evaluate("document.activeElement.getAttribute('href')") == link:
                break
        await page.keyboard.press("Enter")
        await page.wait_for_url(f"{server.url}{link}")
        for _ in range(30):
            await page.keyboard.press("Tab")
            if await page.evaluate("document.activeElement.id") == "cancel-job":
                break
        questions: list[str] = []

        async def dismiss(dialog) -> None:
            questions.append(dialog.message)
            await dialog.dismiss()

        page.once("dialog", dismiss)
        await page.keyboard.press("Enter")
        assert questions and "Reached by keyboard" in questions[0]
        assert (await client.get(f"/jobs/{job['id']}")).json()["status"] == "pending"
    finally:
        await context.close()


async def test_a_public_key_is_read_only_in_the_page_and_at_the_server(
    browser, server, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    job = await create_job(client, title="Watch only")
    context, page = await sign_in(browser, server, keys.public)
    try:
        await page.goto(f"{server.url}/dashboard/jobs/{job['id']}")
        await live(page)
        assert await page.locator("#cancel-job").count() == 0
        await report_progress(client, job["id"], 64)
        bar = page.locator("#summary progress")
        await expect(bar).to_have_js_property("value", 64, timeout=LIVE)
        # The server refuses the operation itself, with a valid session and CSRF token.
        csrf = await page.get_attribute("input[name=csrf]", "value")
        refused = await page.request.post(
            f"{server.url}/dashboard/jobs/{job['id']}/cancel", form={"csrf": csrf}
        )
        assert refused.status == 403
        assert "read-only" in await refused.text()
        assert (await client.get(f"/jobs/{job['id']}")).json()["status"] == "running"
        for path in ("/dashboard/eta", "/dashboard/keys"):
            await page.goto(f"{server.url}{path}")
            assert await page.locator("main form").count() == 0
    finally:
        await context.close()


async def test_a_wrong_key_is_refused_with_a_clear_message(browser, server, keys: AppKeys):
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await page.goto(f"{server.url}/dashboard/login")
        for wrong in ("sk_test_" + "x" * 32, "not a key", keys.secret[:-1]):
            await page.fill("input[name=apiKey]", wrong)
            async with page.expect_response(f"{server.url}/dashboard/login") as answer:
                await page.click("button[type=submit]")
            assert (await answer.value).status == 401
            message = await page.inner_text("#login-error")
            assert "not accepted" in message and "revoked" in message
            assert page.url.endswith("/dashboard/login")
        assert not [c for c in await context.cookies() if c["name"] == "seenn_dashboard"]
    finally:
        await context.close()


async def test_signing_out_ends_the_session(browser, server, keys: AppKeys) -> None:
    context, page = await sign_in(browser, server, keys.secret)
    try:
        await live(page)
        old = [c for c in await context.cookies() if c["name"] == "seenn_dashboard"]
        await page.click("#sign-out")
        await page.wait_for_url(f"{server.url}/dashboard/login")
        # The old cookie, replayed, no longer opens anything.
        token = old[0]["value"]
        async with httpx.AsyncClient(base_url=server.url, cookies={"seenn_dashboard": token}) as c:
            page_answer = await c.get("/dashboard")
            assert page_answer.status_code == 303
            assert page_answer.headers["location"] == "/dashboard/login"
            assert_error(await c.get("/dashboard/events"), 401, "UNAUTHORIZED")
    finally:
        await context.close()


async def test_eta_page_resets_a_key_and_keys_page_revokes_one(
    browser, server, keys: AppKeys, client: httpx.AsyncClient
) -> None:
    job = await create_job(client, jobType="pdf-export", estimatedDuration=5000)
    await report_progress(client, job["id"], 50)
    await complete(client, job["id"])
    context, page = await sign_in(browser, server, keys.secret)
    try:
        await page.goto(f"{server.url}/dashboard/eta")
        line = page.locator('tr[data-eta-key="pdf-export"]')
        cells = await line.locator("td").all_inner_texts()
        assert cells[0] == "1"  # count
        assert "n=1" in cells[6]  # estimates compared with the real duration
        page.once("dialog", lambda dialog: dialog.accept())
        await line.locator("button").click()
        await page.wait_for_url(re.compile(r".*/dashboard/eta\?reset=pdf-export$"))
        assert await page.locator('tr[data-eta-key="pdf-export"]').count() == 0
        assert_error(await client.get("/eta/pdf-export"), 404, "NOT_FOUND")

        await page.goto(f"{server.url}/dashboard/keys")
        hints = await page.locator("#keys tbody tr").count()
        assert hints == 3  # secret and public test keys, and the live secret key
        public = await client.get("/jobs", params={"userId": "x"}, headers=keys.auth(keys.public))
        assert public.status_code == 200
        revoke = page.locator("#keys tbody tr", has_text=keys.public[:8]).locator("button")
        page.once("dialog", lambda dialog: dialog.accept())
        await revoke.click()
        await page.wait_for_url(f"{server.url}/dashboard/keys")
        assert "revoked" in await page.inner_text("#keys")
        gone = await client.get("/jobs", params={"userId": "x"}, headers=keys.auth(keys.public))
        assert_error(gone, 401, "UNAUTHORIZED")
        # A test-mode session cannot revoke the live key: no button, and the server says no.
        live_row = page.locator("#keys tbody tr", has_text="sk_live_")
        assert await live_row.locator("button").count() == 0
    finally:
        await context.close()


async def test_screenshots_of_the_jobs_page_and_a_parent(
    browser, server, database_url: str, tmp_path: Path
) -> None:
    """The README's pictures, from this run (SEENN_UPDATE_SCREENSHOTS=1 stores them)."""
    app = "acme-media"
    secret = await create_key(database_url, app, "secret", "live")
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=f"{server.url}/v1", headers=headers) as c:
        await _demo_jobs(c)
        parent = await _demo_parent(c)
    shots = {}
    for name, viewport, path in (
        ("jobs", {"width": 1280, "height": 720}, "/dashboard"),
        ("parent", {"width": 1280, "height": 900}, f"/dashboard/jobs/{parent}"),
        ("jobs-phone", {"width": 390, "height": 844}, "/dashboard"),
    ):
        context, page = await sign_in(browser, server, secret, viewport)
        try:
            await page.goto(f"{server.url}{path}")
            await live(page)
            if name == "jobs-phone":  # readable on a phone: nothing wider than the screen
                width = await page.evaluate("document.documentElement.scrollWidth")
                assert width <= 390
            shots[name] = tmp_path / f"{name}.png"
            await page.screenshot(path=str(shots[name]), full_page=name == "parent")
        finally:
            await context.close()
    for shot in shots.values():
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if os.environ.get("SEENN_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for name, shot in shots.items():
            shutil.copyfile(shot, SCREENSHOTS / f"{name}.png")


async def _demo_jobs(c: httpx.AsyncClient) -> None:
    async def made(**fields) -> str:
        body = {"jobType": "video-render", "userId": "user_anna", "title": "x", **fields}
        response = await c.post("/jobs", json=body)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    done = await made(title="Wedding highlights (4K)", userId="user_mika", estimatedDuration=60000)
    await c.post(f"/jobs/{done}/progress", json={"progress": 60})
    await c.post(
        f"/jobs/{done}/complete",
        json={"result": {"type": "video", "url": "https://cdn.example.com/v/81.mp4"}},
    )
    broken = await made(title="Podcast episode 112", jobType="audio-transcode", userId="user_lee")
    await c.post(
        f"/jobs/{broken}/fail",
        json={"error": {"code": "DECODE_ERROR", "message": "Unsupported codec"}},
    )
    queued = await made(title="Product demo, Spanish subtitles", jobType="subtitles")
    await c.post(
        f"/jobs/{queued}/progress",
        json={"progress": 0, "queue": {"position": 4, "total": 12}, "message": "Waiting for GPU"},
    )
    encoding = await made(title="Launch trailer", estimatedDuration=240000)
    stage = {"name": "encode", "current": 2, "total": 3}
    await c.post(
        f"/jobs/{encoding}/progress",
        json={"progress": 64, "stage": stage, "message": "Encoding 1080p rendition"},
    )
    upload = await made(title="Customer onboarding video", userId="user_omar")
    await c.post(
        f"/jobs/{upload}/progress",
        json={
            "progress": 18,
            "stage": {"name": "upload", "current": 1, "total": 3},
            "message": "Uploading source",
        },
    )


async def _demo_parent(c: httpx.AsyncClient) -> str:
    body = {
        "jobType": "photo-batch",
        "userId": "user_anna",
        "title": "Holiday album: 6 photos",
        "totalChildren": 6,
        "metadata": {"album": "Lisbon 2026", "preset": "warm", "resolution": "4096x2731"},
    }
    parent = (await c.post("/jobs", json=body)).json()["id"]
    kids = []
    for i in range(6):
        child = {
            "jobType": "photo-enhance",
            "userId": "user_anna",
            "title": f"IMG_{4031 + i}.jpg",
            "parentJobId": parent,
            "childIndex": i,
        }
        kids.append((await c.post("/jobs", json=child)).json()["id"])
    for i in (0, 1, 2):
        await c.post(f"/jobs/{kids[i]}/complete", json={})
    await c.post(f"/jobs/{kids[3]}/progress", json={"progress": 70, "message": "Denoising"})
    await c.post(f"/jobs/{kids[4]}/progress", json={"progress": 25, "message": "Upscaling"})
    return parent
