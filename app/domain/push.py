"""Push: device registrations, and what a write asks to be pushed (the outbox rows).

A write whose body carries ``push`` records its deliveries in the outbox in the write's own
transaction (:func:`queue_pushes`); the delivery worker (``app/push/``) sends them after
commit. Payloads are built here, from the job as the write left it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from app.db.push_repository import Delivery, PushRepository
from app.db.repository import Owner, Repository, Row
from app.domain.commands import (
    CtaButton,
    DeviceRegistration,
    DeviceRemoval,
    LiveActivityRegistration,
    LiveActivityRemoval,
    PushOptions,
)
from app.domain.errors import JobNotFound
from app.domain.rules import is_terminal
from app.domain.views import iso

# ActivityKit decodes ``content-state`` into the widget's Codable ``ContentState`` with a
# JSONDecoder, whose default date strategy is ``.deferredToDate`` (Apple: "The default
# strategy is the JSONDecoder.DateDecodingStrategy.deferredToDate strategy",
# developer.apple.com/documentation/foundation/jsondecoder/datedecodingstrategy-swift.property).
# ``deferredToDate`` is ``Date``'s own Codable form: a number of seconds since the reference
# date, 2001-01-01T00:00:00Z (timeIntervalSinceReferenceDate). ActivityKit payloads that
# carry a Date are known to need that form (a Live Activity SDK's field notes: "Date encoding
# uses deferredToDate (Swift's default) ... timeIntervalSinceReferenceDate"). So a Date goes
# out as that number, never as ISO text or UNIX seconds.
APPLE_REFERENCE_DATE = datetime(2001, 1, 1, tzinfo=UTC)
# APNs refuses payloads over 4 KB: the free texts in a push are cut to this many characters,
# and what still does not fit is left out, least needed first (the worker adds a few bytes).
_TEXT_MAX = 400
_PAYLOAD_MAX = 3900
_DROPPABLE = ("ctaDeepLink", "ctaButtonText", "resultUrl", "errorMessage", "message", "stageName")


def apple_date(value: datetime) -> float:
    """``value`` as Swift's default Codable ``Date``: seconds since 2001-01-01 UTC."""
    return round((value - APPLE_REFERENCE_DATE).total_seconds(), 3)


def _cut(value: str) -> str:
    return value if len(value) <= _TEXT_MAX else value[: _TEXT_MAX - 1] + "…"


def content_state(job: Row, cta: CtaButton | None = None) -> dict[str, Any]:
    """The widget's ``SeennJobAttributes.ContentState``: its exact names and types; an
    optional field that does not apply is left out (Swift decodes a missing key as nil)."""
    state: dict[str, Any] = {"progress": int(job["progress"]), "status": job["status"]}
    if job.get("message"):
        state["message"] = _cut(job["message"])
    stage = job.get("stage") or {}
    if stage.get("name"):
        state["stageName"] = _cut(stage["name"])
    if isinstance(stage.get("current"), int):
        state["stageIndex"] = stage["current"]
    if isinstance(stage.get("total"), int):
        state["stageTotal"] = stage["total"]
    if job.get("estimated_completion_at") is not None:
        state["estimatedEndTime"] = apple_date(job["estimated_completion_at"])
    result = job.get("result") or {}
    if isinstance(result.get("url"), str):
        state["resultUrl"] = result["url"]
    error = job.get("error") or {}
    if isinstance(error.get("message"), str):
        state["errorMessage"] = _cut(error["message"])
    if cta is not None:
        state["ctaButtonText"] = cta.text
        state["ctaDeepLink"] = cta.deepLink
        for key, value in (
            ("ctaButtonStyle", cta.style),
            ("ctaBackgroundColor", cta.backgroundColor),
            ("ctaTextColor", cta.textColor),
            ("ctaCornerRadius", cta.cornerRadius),
        ):
            if value is not None:
                state[key] = value
    return state


def _job_data(job: Row) -> dict[str, Any]:
    """What the app's own code gets beside ``aps``: enough to refresh the job."""
    return {"jobId": job["id"], "status": job["status"], "progress": int(job["progress"])}


@dataclass(frozen=True)
class PushRequest:
    """One write's push options, with the Live Activity CTA of a ``complete``."""

    options: PushOptions
    cta: CtaButton | None = None


def live_activity_payload(job: Row, request: PushRequest, now: datetime) -> dict[str, Any]:
    """An ``update`` (``end`` once the job is terminal) for the job's Live Activity.

    ``timestamp`` (UNIX seconds of the write) lets iOS drop an older update that arrives
    late; the worker adds ``dismissal-date`` to an ``end`` when it sends it.
    """
    aps: dict[str, Any] = {
        "timestamp": int(now.timestamp()),
        "event": "end" if is_terminal(job["status"]) else "update",
        "content-state": content_state(job, request.cta),
    }
    alert = request.options.alert
    if alert is not None:  # lights the screen with this update (a Live Activity's alert
        # carries its sound inside ``alert``)
        aps["alert"] = {"title": _cut(alert.title), "body": _cut(alert.body)}
        if alert.sound is not None:
            aps["alert"]["sound"] = alert.sound
    _fit(aps)
    return {"aps": aps}


def _fit(aps: dict[str, Any]) -> None:
    """Leave out optional content-state fields until the payload fits in APNs' 4 KB (a CTA
    without its link is no CTA: the two go together)."""
    state = aps["content-state"]
    for name in _DROPPABLE:
        if len(orjson.dumps({"aps": aps})) <= _PAYLOAD_MAX:
            return
        if name == "ctaDeepLink":
            for cta in [k for k in state if k.startswith("cta")]:
                del state[cta]
        state.pop(name, None)


def silent_payload(job: Row) -> dict[str, Any]:
    """A background push: wakes the app to sync the job."""
    return {"aps": {"content-available": 1}, "seenn": _job_data(job)}


def alert_payload(job: Row, request: PushRequest) -> dict[str, Any]:
    """A visible notification from ``push.alert``, styled by ``push.richPush``."""
    alert, rich = request.options.alert, request.options.richPush
    title = alert.title if alert else rich.senderName if rich else job["title"]
    body = alert.body if alert else job.get("message") or job["title"]
    aps: dict[str, Any] = {
        "alert": {"title": _cut(title), "body": _cut(body)},
        "sound": (alert.sound if alert and alert.sound else "default"),
    }
    if alert is not None and alert.badge is not None:
        aps["badge"] = alert.badge
    data = _job_data(job)
    if rich is not None:
        # A notification service extension turns these into a communication notification.
        aps["mutable-content"] = 1
        if rich.timeSensitive:
            aps["interruption-level"] = "time-sensitive"
        data["senderName"] = rich.senderName
        if rich.senderAvatar is not None:
            data["senderAvatar"] = rich.senderAvatar
    return {"aps": aps, "seenn": data}


def plan(job: Row, request: PushRequest, targets: list[Row], now: datetime) -> list[Delivery]:
    """The deliveries a write asks for, to the job's Live Activities and the user's devices."""
    options = request.options
    deliveries: list[Delivery] = []
    live: dict[str, Any] | None = None
    for target in targets:
        if target["kind"] == "liveactivity":
            if options.liveActivity is False:
                continue
            live = live or live_activity_payload(job, request, now)
            event = live["aps"]["event"]
            deliveries.append(Delivery("liveactivity", event, target, live))
        elif target["platform"] == "ios":  # Android tokens are stored, not sent (no FCM)
            if options.silent is not False:
                deliveries.append(Delivery("background", None, target, silent_payload(job)))
            if options.alert is not None or options.richPush is not None:
                deliveries.append(Delivery("alert", None, target, alert_payload(job, request)))
    return deliveries


async def queue_pushes(repo: Repository, owner: Owner, job: Row, request: PushRequest) -> int:
    """Record the deliveries ``request`` asks for about ``job`` in the outbox, in the
    caller's transaction (so they commit, or roll back, with the job's change).

    The caller holds the job's row lock, so one job's deliveries are queued in write order:
    a Live Activity update or silent push still waiting is replaced by the newer one
    (coalesced), and a new one is due at least a second after the previous one.
    """
    outbox = PushRepository(repo.conn)
    targets = await outbox.targets(owner, job["user_id"], job["id"])
    if not targets:
        return 0
    now = job["updated_at"]
    deliveries = plan(job, request, targets, now)
    for delivery in deliveries:
        await outbox.enqueue(owner, job, delivery, now)
    return len(deliveries)


# --- registrations ----------------------------------------------------------------------


async def register_live_activity(
    repo: Repository, owner: Owner, cmd: LiveActivityRegistration, now: datetime
) -> Row:
    """Store (or replace) a Live Activity's push token; only for a live job of that user."""
    job = await repo.get_job(owner, cmd.jobId, now)
    if job is None or job["user_id"] != cmd.userId:
        raise JobNotFound(cmd.jobId)
    token = {
        "user_id": cmd.userId,
        "device_id": cmd.deviceId,
        "job_id": cmd.jobId,
        "token": cmd.token.lower(),
        "activity_id": cmd.activityId,
    }
    await PushRepository(repo.conn).upsert_live_activity_token(owner, token, now)
    out = {"registered": True, "userId": cmd.userId, "deviceId": cmd.deviceId, "jobId": cmd.jobId}
    if cmd.activityId is not None:
        out["activityId"] = cmd.activityId
    return {**out, "updatedAt": iso(now)}


async def remove_live_activity(repo: Repository, owner: Owner, cmd: LiveActivityRemoval) -> Row:
    key = {"user_id": cmd.userId, "device_id": cmd.deviceId, "job_id": cmd.jobId}
    deleted = await PushRepository(repo.conn).delete_live_activity_token(owner, key)
    return {"deleted": deleted, "userId": cmd.userId, "deviceId": cmd.deviceId, "jobId": cmd.jobId}


async def register_device(
    repo: Repository, owner: Owner, cmd: DeviceRegistration, now: datetime
) -> Row:
    token = {
        "user_id": cmd.userId,
        "device_id": cmd.deviceId,
        "platform": cmd.platform,
        "token": cmd.token.lower() if cmd.platform == "ios" else cmd.token,
    }
    await PushRepository(repo.conn).upsert_device_token(owner, token, now)
    return {
        "registered": True,
        "userId": cmd.userId,
        "deviceId": cmd.deviceId,
        "platform": cmd.platform,
        "updatedAt": iso(now),
    }


async def remove_device(repo: Repository, owner: Owner, cmd: DeviceRemoval) -> Row:
    key = {"user_id": cmd.userId, "device_id": cmd.deviceId}
    deleted = await PushRepository(repo.conn).delete_device_token(owner, key)
    return {"deleted": deleted, "userId": cmd.userId, "deviceId": cmd.deviceId}


# --- debugging --------------------------------------------------------------------------


def delivery_view(row: Row) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(row["id"]),
        "apnsId": str(row["apns_id"]),
        "kind": row["kind"],
        "deviceId": row["device_id"],
        "token": f"{row['token'][:6]}...{row['token'][-4:]}",
        "status": row["status"],
        "attempts": row["attempts"],
        "coalesced": row["coalesced"],
        "payload": row["payload"],
        "notBefore": iso(row["not_before"]),
        "createdAt": iso(row["created_at"]),
        "updatedAt": iso(row["updated_at"]),
    }
    if row["event"] is not None:
        out["event"] = row["event"]
    if row["sent_at"] is not None:
        out["sentAt"] = iso(row["sent_at"])
    if row["last_status"] is not None:
        out["lastStatus"] = row["last_status"]
    if row["last_reason"] is not None:
        out["lastReason"] = row["last_reason"]
    return out


async def list_deliveries(repo: Repository, owner: Owner, job_id: str, now: datetime) -> Row:
    """A job's deliveries, newest first (at most 200), for debugging."""
    if await repo.get_job(owner, job_id, now) is None:
        raise JobNotFound(job_id)
    rows = await PushRepository(repo.conn).list_for_job(owner, job_id, 200)
    return {"jobId": job_id, "pushes": [delivery_view(r) for r in rows]}
