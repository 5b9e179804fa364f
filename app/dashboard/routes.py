"""``/dashboard``: the pages, the operations and the live feed (``/`` redirects here)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sse_starlette import EventSourceResponse
from starlette.responses import RedirectResponse, Response

from app.api import deps
from app.api.jobs import decode_cursor, encode_cursor
from app.dashboard import auth
from app.dashboard.auth import Session
from app.dashboard.feed import DashboardFeed
from app.db.dashboard_repository import DashboardRepository, JobFilter
from app.db.keys_repository import KeysRepository
from app.db.repository import Owner, Repository
from app.domain import eta
from app.domain.clock import now_ms
from app.domain.commands import ULID_RE, CancelJob, is_identifier
from app.domain.errors import DomainError, Forbidden, NotFound, Unauthorized, ValidationFailed
from app.domain.service import JobService
from app.domain.views import JOB_FIELDS, child_summary, event_view, iso, job_view
from app.realtime.hub import encode
from app.state import app_state

router = APIRouter(include_in_schema=False)
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
STATUSES = ("pending", "running", "completed", "failed", "cancelled")
PAGE_SIZE = 25
HISTORY_LIMIT = 200
WATCH_LIMIT = 200
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def static_files() -> StaticFiles:
    """The dashboard's own CSS and script (``/dashboard/static``)."""
    return StaticFiles(directory=HERE / "static")


# --- formatting helpers for the templates --------------------------------------------------


def _parse(value: Any) -> datetime | None:
    if not value:  # None, "" or a missing template attribute
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def relative(value: Any) -> str:
    """'3 min ago' / 'in 2 h' (the page's script keeps it current)."""
    moment = _parse(value)
    if moment is None:
        return ""
    seconds = (moment - datetime.now(UTC)).total_seconds()
    past, span = seconds < 0, abs(seconds)
    if span < 45:
        text = "just now" if past else "in a few s"
        return text if past else f"in {int(span)} s"
    for limit, unit, size in ((3600, "min", 60), (86400, "h", 3600), (float("inf"), "d", 86400)):
        if span < limit:
            count = round(span / size)
            return f"{count} {unit} ago" if past else f"in {count} {unit}"
    return ""


def exact(value: Any) -> str:
    moment = _parse(value)
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(ms: Any) -> str:
    """Milliseconds as '850 ms', '12.3 s', '4 min 05 s', '2 h 03 min'."""
    if ms is None:
        return "—"
    ms = float(ms)
    sign, ms = ("-" if ms < 0 else ""), abs(ms)
    if ms < 1000:
        return f"{sign}{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{sign}{seconds:.1f} s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{sign}{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{sign}{hours} h {minutes:02d} min"


def pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def scalar(value: Any) -> str:
    """A field's value as the wire spells it (``true``, not Python's ``True``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


templates.env.filters.update(
    relative=relative, exact=exact, duration=duration, pretty=pretty, scalar=scalar
)


# --- plumbing ------------------------------------------------------------------------------


def _owner(session: Session) -> Owner:
    return Owner(session.principal.app_id, session.principal.mode)


def _page(
    request: Request,
    name: str,
    session: Session | None,
    status_code: int = 200,
    **context: Any,
) -> Response:
    context.update(session=session, nav=context.get("nav", ""))
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def _error(request: Request, session: Session | None, exc: DomainError) -> Response:
    return _page(request, "error.html", session, exc.status, code=exc.code, message=exc.message)


def _to_login() -> Response:
    return RedirectResponse("/dashboard/login", status_code=303)


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body as a dict of first values."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    parsed = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=20)
    return {name: values[0] for name, values in parsed.items()}


async def _operation(request: Request) -> tuple[Session, dict[str, str]]:
    """The session and form of a state-changing request; 401/403 when not allowed."""
    session = await auth.current_session(request)
    if session is None:
        raise _SignedOut()
    form = await _form(request)
    auth.check_csrf(request, session, form.get(auth.CSRF_FIELD))
    if not session.can_write:
        raise Forbidden("Public (pk_) keys are read-only: sign in with a secret (sk_) key")
    return session, form


class _SignedOut(Exception):
    pass


def _text(value: str | None, field: str, limit: int) -> str | None:
    value = (value or "").strip()
    if not value:
        return None
    if not is_identifier(value, limit):
        raise ValidationFailed(f"{field}: at most {limit} characters, no control characters")
    return value


# --- sign-in -------------------------------------------------------------------------------


@router.get("/")
async def root() -> Response:
    return RedirectResponse("/dashboard", status_code=307)


@router.get("/dashboard/login")
async def login_page(request: Request) -> Response:
    if await auth.current_session(request) is not None:
        return RedirectResponse("/dashboard", status_code=303)
    return _page(request, "login.html", None)


@router.post("/dashboard/login")
async def login(request: Request) -> Response:
    try:
        auth.check_origin(request)
    except DomainError as exc:
        return _error(request, None, exc)
    key = (await _form(request)).get("apiKey", "").strip()
    if not key:
        return _page(request, "login.html", None, 400, error="Enter an API key to sign in.")
    try:
        principal = await deps.principal_for_key(request, key)
        if principal.is_token:
            raise Unauthorized("A subscriber token cannot sign in: use an API key")
    except DomainError as exc:
        message = (
            "That API key was not accepted: it is unknown, malformed or revoked. "
            "Check that it was copied in full (sk_… or pk_…)."
            if exc.code == "UNAUTHORIZED"
            else exc.message
        )
        return _page(request, "login.html", None, exc.status, error=message)
    response = RedirectResponse("/dashboard", status_code=303)
    await auth.start_session(request, response, principal)
    return response


@router.post("/dashboard/logout")
async def logout(request: Request) -> Response:
    session = await auth.current_session(request)
    if session is not None:
        try:
            auth.check_csrf(request, session, (await _form(request)).get(auth.CSRF_FIELD))
        except DomainError as exc:
            return _error(request, session, exc)
    response = RedirectResponse("/dashboard/login", status_code=303)
    await auth.end_session(request, response)
    return response


# --- pages ---------------------------------------------------------------------------------


@router.get("/dashboard")
async def jobs_page(request: Request) -> Response:
    session = await auth.current_session(request)
    if session is None:
        return _to_login()
    query = request.query_params
    try:
        where = JobFilter(
            user_id=_text(query.get("user"), "user", 255),
            job_type=_text(query.get("type"), "type", 100),
            status=_text(query.get("status"), "status", 10),
        )
        if where.status is not None and where.status not in STATUSES:
            raise ValidationFailed(f"status must be one of {', '.join(STATUSES)}")
        cursor = query.get("cursor") or None
        before = decode_cursor(cursor) if cursor else None
    except DomainError as exc:
        return _error(request, session, exc)
    async with auth.reading(request) as conn:
        rows = await DashboardRepository(conn).list_jobs(
            _owner(session), where, before, PAGE_SIZE + 1, now_ms()
        )
    filters = {"user": where.user_id, "type": where.job_type, "status": where.status}
    filters = {k: v for k, v in filters.items() if v}
    next_url = None
    if len(rows) > PAGE_SIZE:
        next_url = "?" + urlencode({**filters, "cursor": encode_cursor(rows[PAGE_SIZE - 1]["id"])})
    return _page(
        request,
        "jobs.html",
        session,
        nav="jobs",
        jobs=[job_view(r) for r in rows[:PAGE_SIZE]],
        filters=filters,
        statuses=STATUSES,
        first_page=before is None,
        next_url=next_url,
    )


@router.get("/dashboard/jobs/{job_id}")
async def job_page(job_id: str, request: Request) -> Response:
    session = await auth.current_session(request)
    if session is None:
        return _to_login()
    owner = _owner(session)
    try:
        if not ULID_RE.fullmatch(job_id):
            raise NotFound(f"Job {job_id[:40]} not found")
        async with auth.reading(request) as conn:
            job = await JobService(Repository(conn), owner).get(job_id)
            children: list[dict[str, Any]] = []
            if job["total_children"] is not None:
                children = [child_summary(c) for c in await Repository(conn).list_children(job_id)]
            events = await DashboardRepository(conn).job_events(owner, job_id, HISTORY_LIMIT)
    except DomainError as exc:
        return _error(request, session, exc)
    retention = app_state(request).settings.event_retention_hours
    return _page(
        request,
        "job.html",
        session,
        nav="jobs",
        job=job_view(job),
        field_order=" ".join(JOB_FIELDS),
        children=children,
        events=[_event_row(e) for e in events],
        history_limit=HISTORY_LIMIT,
        retention_hours=retention,
    )


def _event_row(row: dict[str, Any]) -> dict[str, Any]:
    payload = row["payload"]
    child = payload.get("child") if row["event"] == "child.progress" else None
    return {
        "seq": row["seq"],
        "event": row["event"],
        "at": iso(row["created_at"]),
        "status": payload.get("status"),
        "progress": payload.get("progress"),
        "message": payload.get("message"),
        "child": child,
    }


@router.get("/dashboard/eta")
async def eta_page(request: Request) -> Response:
    session = await auth.current_session(request)
    if session is None:
        return _to_login()
    owner = _owner(session)
    async with auth.reading(request) as conn:
        stats = await eta.list_stats(Repository(conn), owner)
        accuracy = await DashboardRepository(conn).eta_accuracy(owner)
    retention = app_state(request).settings.event_retention_hours
    return _page(
        request,
        "eta.html",
        session,
        nav="eta",
        stats=stats,
        accuracy=accuracy,
        retention_hours=retention,
        done=request.query_params.get("reset"),
    )


@router.get("/dashboard/keys")
async def keys_page(request: Request) -> Response:
    session = await auth.current_session(request)
    if session is None:
        return _to_login()
    async with auth.reading(request) as conn:
        keys = await KeysRepository(conn).of_app(session.principal.app_id)
    return _page(request, "keys.html", session, nav="keys", keys=keys)


# --- operations (secret keys) ---------------------------------------------------------------


async def _run_operation(
    request: Request, action: Callable[[Session, dict[str, str]], Awaitable[Response]]
) -> Response:
    try:
        session, form = await _operation(request)
        return await action(session, form)
    except _SignedOut:
        return _to_login()
    except DomainError as exc:
        return _error(request, await auth.current_session(request), exc)


@router.post("/dashboard/jobs/{job_id}/cancel")
async def cancel(job_id: str, request: Request) -> Response:
    async def act(session: Session, _form: dict[str, str]) -> Response:
        if not ULID_RE.fullmatch(job_id):
            raise NotFound(f"Job {job_id[:40]} not found")
        await deps.operations_for(request, session.principal).cancel(job_id, CancelJob())
        return RedirectResponse(f"/dashboard/jobs/{job_id}", status_code=303)

    return await _run_operation(request, act)


@router.post("/dashboard/eta/reset")
async def reset_eta(request: Request) -> Response:
    async def act(session: Session, form: dict[str, str]) -> Response:
        key = _text(form.get("etaKey"), "etaKey", 100 + len(eta.PARENT_SUFFIX))
        if key is None:
            raise ValidationFailed("etaKey is required")
        await deps.operations_for(request, session.principal).reset_eta(key)
        return RedirectResponse("/dashboard/eta?" + urlencode({"reset": key}), status_code=303)

    return await _run_operation(request, act)


@router.post("/dashboard/keys/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request) -> Response:
    async def act(session: Session, _form: dict[str, str]) -> Response:
        async with app_state(request).engine.begin() as conn:
            done = await KeysRepository(conn).revoke_owned(_owner(session), key_id, now_ms())
        if not done:
            raise NotFound("No such active key of this app and mode", {"id": key_id[:40]})
        return RedirectResponse("/dashboard/keys", status_code=303)

    return await _run_operation(request, act)


# --- live feed -----------------------------------------------------------------------------


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


@router.get("/dashboard/events")
async def events(request: Request) -> Response:
    """The app's job events for this session.

    First comes ``job.sync`` of each job in ``watch`` (the ids a page shows) and of each
    top-level job newer than ``after``; then every event of the app and mode, live.
    """
    session = await auth.current_session(request)
    if session is None:
        raise Unauthorized("Sign in to the dashboard first")
    owner = _owner(session)
    watch = [i for i in request.query_params.get("watch", "").split(",") if ULID_RE.fullmatch(i)]
    # The newest job the page shows: jobs created since (before this stream, or while it
    # was reconnecting) are sent too, so the list misses none.
    after = request.query_params.get("after") or None
    after = after if after is not None and ULID_RE.fullmatch(after) else None
    state = app_state(request)
    feed: DashboardFeed = state.dashboard_feed
    settings = state.settings
    watcher = await feed.subscribe(owner)
    try:
        async with auth.reading(request) as conn:
            repo = DashboardRepository(conn)
            rows = await repo.jobs_by_ids(owner, watch[:WATCH_LIMIT], now_ms())
            if after is not None:
                newer = await repo.list_jobs(
                    owner, JobFilter(), None, PAGE_SIZE, now_ms(), after_id=after
                )
                seen = {r["id"] for r in rows}
                rows += [r for r in reversed(newer) if r["id"] not in seen]  # oldest first
    except BaseException:
        feed.unsubscribe(owner, watcher)
        raise
    first = [encode(None, "connected", _json({"appId": owner.app_id, "mode": owner.mode}))]
    first += [encode(None, "job.sync", _json(event_view(r))) for r in rows]
    token = request.cookies.get(auth.COOKIE)
    deadline = time.monotonic() + settings.sse_max_connection_seconds

    async def stream() -> AsyncIterator[bytes]:
        beat = settings.sse_heartbeat_seconds
        checked = time.monotonic()
        try:
            yield b"".join(first)
            while time.monotonic() < deadline:
                items = await watcher.get(beat)
                if items is not None and not items:
                    return  # fell too far behind: the browser reconnects and resyncs
                if items:
                    yield b"".join(items)
                # At least once a heartbeat period, the session must still be alive: a
                # sign-out elsewhere, its expiry or a revoked key ends the stream.
                if time.monotonic() - checked >= beat:
                    checked = time.monotonic()
                    if not await _still_signed_in(request, token):
                        yield encode(None, "session.ended", "{}")
                        return
                if items is None:
                    yield b": heartbeat\n\n"
        finally:
            feed.unsubscribe(owner, watcher)

    return EventSourceResponse(
        stream(),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        ping=0,
        shutdown_event=state.hub.shutdown_event,
        shutdown_grace_period=1.0,
    )


async def _still_signed_in(request: Request, token: str | None) -> bool:
    with contextlib.suppress(AttributeError):
        del request.state.dashboard_session  # read it afresh
    try:
        return bool(token) and await auth.current_session(request) is not None
    except Exception:  # a database blip is not a sign-out
        return True
