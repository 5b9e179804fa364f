"""``/v1/devices``: push tokens from the apps (public keys may register), and a job's pushes.

``/v1/devices/live-activity`` is called by the Flutter SDK exactly as routed here: a JSON
body on both POST (201) and DELETE (200).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from app.api.deps import Reader, authenticate, operations_for, require_job_id, require_user
from app.api.jobs import JobIdPath
from app.api.responses import ORJSONResponse
from app.api.routing import OrjsonRoute
from app.api.schemas import ERRORS, Omit
from app.domain.commands import (
    DeviceRegistration,
    DeviceRemoval,
    LiveActivityRegistration,
    LiveActivityRemoval,
)
from app.domain.errors import Forbidden
from app.domain.operations import Operations

router = APIRouter(tags=["devices"], route_class=OrjsonRoute)


async def secret_reader(request: Request) -> Operations:
    """Dependency: the operations of a caller holding a secret (``sk_``) key (push debugging
    shows device tokens' hints and payloads, which an app's public key must not read)."""
    principal = await authenticate(request)
    if not principal.can_write:
        raise Forbidden("A job's pushes are shown to secret (sk_) keys only")
    return operations_for(request, principal)


SecretReader = Annotated[Operations, Depends(secret_reader)]


class LiveActivityOut(BaseModel):
    registered: bool
    userId: str
    deviceId: str
    jobId: str
    activityId: str | Omit = None
    updatedAt: str


class DeviceOut(BaseModel):
    registered: bool
    userId: str
    deviceId: str
    platform: Literal["ios", "android"]
    updatedAt: str


class LiveActivityRemovedOut(BaseModel):
    deleted: bool
    userId: str
    deviceId: str
    jobId: str


class DeviceRemovedOut(BaseModel):
    deleted: bool
    userId: str
    deviceId: str


class DeliveryOut(BaseModel):
    id: str
    apnsId: str
    kind: Literal["liveactivity", "alert", "background"]
    event: Literal["update", "end"] | Omit = None
    deviceId: str
    token: str
    status: Literal["pending", "sending", "sent", "failed", "superseded", "skipped"]
    attempts: int
    coalesced: int
    payload: dict[str, Any]
    notBefore: str
    createdAt: str
    updatedAt: str
    sentAt: str | Omit = None
    lastStatus: int | Omit = None
    lastReason: str | Omit = None


class DeliveriesOut(BaseModel):
    jobId: str
    pushes: list[DeliveryOut]


@router.post(
    "/devices/live-activity", status_code=201, response_model=LiveActivityOut, responses=ERRORS
)
async def register_live_activity(body: LiveActivityRegistration, ops: Reader) -> Any:
    """Register (or replace) a Live Activity's push token for a job of that ``userId``.

    Public keys and the user's subscriber tokens may call it; a job that is not the user's
    reads as 404.
    """
    require_job_id(ops.principal, body.userId, body.jobId)
    return ORJSONResponse(await ops.register_live_activity(body), status_code=201)


@router.delete("/devices/live-activity", response_model=LiveActivityRemovedOut, responses=ERRORS)
async def remove_live_activity(body: LiveActivityRemoval, ops: Reader) -> Any:
    """Forget a Live Activity's push token; ``deleted`` says whether there was one."""
    require_job_id(ops.principal, body.userId, body.jobId)
    return ORJSONResponse(await ops.remove_live_activity(body))


@router.post("/devices", status_code=201, response_model=DeviceOut, responses=ERRORS)
async def register_device(body: DeviceRegistration, ops: Reader) -> Any:
    """Register (or replace) a device's push token, for alerts and silent pushes.

    ``ios``: the APNs device token in hex. ``android`` tokens are stored but not sent to
    (this server speaks APNs only). Public keys and the user's subscriber tokens may call it.
    """
    require_user(ops.principal, body.userId)
    return ORJSONResponse(await ops.register_device(body), status_code=201)


@router.delete("/devices", response_model=DeviceRemovedOut, responses=ERRORS)
async def remove_device(body: DeviceRemoval, ops: Reader) -> Any:
    """Forget a device's push token; ``deleted`` says whether there was one."""
    require_user(ops.principal, body.userId)
    return ORJSONResponse(await ops.remove_device(body))


@router.get("/jobs/{job_id}/pushes", response_model=DeliveriesOut, responses=ERRORS)
async def list_pushes(job_id: JobIdPath, ops: SecretReader) -> Any:
    """The job's push deliveries, newest first (at most 200), for debugging. Secret key only."""
    return ORJSONResponse(await ops.deliveries(job_id))
