"""``/v1/eta``: per-key ETA statistics (list, get) and reset."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import Reader, Writer
from app.api.responses import ORJSONResponse
from app.api.routing import OrjsonRoute
from app.api.schemas import ERRORS, Omit
from app.domain import eta
from app.domain.commands import is_identifier
from app.domain.errors import ValidationFailed

router = APIRouter(tags=["eta"], route_class=OrjsonRoute)

_KEY_MAX = 100 + len(eta.PARENT_SUFFIX)  # a workflowId or jobType, "#parent" for a parent


EtaKeyPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=_KEY_MAX,
        pattern="^[^\\x00-\\x1f\\x7f]+$",
        description=(
            "The ETA key (workflowId or jobType; a parent's ends in '#parent'), URL-encoded;"
            " may contain '/'"
        ),
    ),
]


class EtaStatsOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    etaKey: str
    count: int
    avgDuration: int = Field(ge=0, description="0 while the key has no completion")
    minDuration: int = Field(ge=0)
    maxDuration: int = Field(ge=0)
    p50Duration: int | Omit = None
    p95Duration: int | Omit = None
    defaultDuration: int | Omit = None
    confidence: float = Field(
        description="min(count / 50, 1): how much history the key has (a job's etaConfidence"
        " is the calibrated probability)"
    )
    lastUpdated: str


class EtaListOut(BaseModel):
    stats: list[EtaStatsOut]


class EtaResetOut(BaseModel):
    deleted: bool
    etaKey: str


def checked_key(eta_key: str) -> str:
    """A key as jobs can have it: 1-107 characters, no control characters; else 400."""
    if not is_identifier(eta_key, _KEY_MAX):
        raise ValidationFailed(
            f"etaKey must be 1-{_KEY_MAX} characters without control characters", "etaKey"
        )
    return eta_key


@router.get("/eta", response_model=EtaListOut, responses=ERRORS)
async def list_eta_stats(ops: Reader) -> Any:
    """Statistics of every ETA key of the caller's app and mode, ordered by key."""
    return ORJSONResponse({"stats": await ops.eta_stats()})


# ``:path`` so that keys holding an encoded "/" (any character a workflowId may carry) route.
@router.get("/eta/{eta_key:path}", response_model=EtaStatsOut, responses=ERRORS)
async def get_eta_stats(eta_key: EtaKeyPath, ops: Reader) -> Any:
    """One key's statistics; 404 when the key has none."""
    return ORJSONResponse(await ops.eta_stat(checked_key(eta_key)))


@router.delete("/eta/{eta_key:path}", response_model=EtaResetOut, responses=ERRORS)
async def reset_eta_stats(eta_key: EtaKeyPath, ops: Writer) -> Any:
    """Forget a key's statistics and default; ``deleted`` says whether it had any."""
    return ORJSONResponse(await ops.reset_eta(checked_key(eta_key)))
