"""Liveness and readiness probes and Prometheus metrics, for orchestrators and monitoring
(no API key; none of these is in the OpenAPI document)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.responses import ORJSONResponse, error_response
from app.domain.unit_of_work import required_schema
from app.state import app_state

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

# A readiness probe must answer quickly even when the database hangs.
READY_TIMEOUT_SECONDS = 3.0
_HEAD = required_schema()


@router.get("/healthz")
async def healthz() -> ORJSONResponse:
    """The process is alive and serving HTTP (it does not touch the database)."""
    return ORJSONResponse({"status": "ok"})


def _not_ready(reason: str, cause: str = "") -> ORJSONResponse:
    log.warning("not ready: %s%s", reason, f" ({cause})" if cause else "")
    return error_response(
        503, "SERVICE_UNAVAILABLE", f"Not ready: {reason}", headers={"Retry-After": "1"}
    )


@router.get("/readyz")
async def readyz(request: Request) -> ORJSONResponse:
    """Ready to take traffic: not draining, database reachable, schema at the latest migration."""
    if getattr(app_state(request), "draining", False):
        return _not_ready("shutting down")
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            revision = await app_state(request).unit_of_work.schema_revision()
    except Exception as error:  # any failure to reach or read the database means not ready
        return _not_ready("database unreachable", error.__class__.__name__)
    if revision != _HEAD:
        return _not_ready(f"database schema is at {revision}, this server needs {_HEAD}")
    return ORJSONResponse({"status": "ready", "schema": revision})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """This process's metrics in the Prometheus text format."""
    return Response(app_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
