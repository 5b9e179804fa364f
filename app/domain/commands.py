"""Validated inputs of every write, with the specification's ranges.

Unknown fields are ignored (the SDKs send ``push``, ``liveActivity`` and more).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    model_validator,
)

METADATA_MAX_BYTES = 10 * 1024
RESULT_MAX_BYTES = 100 * 1024
ERROR_DETAILS_MAX_BYTES = 10 * 1024
JSON_MAX_DEPTH = 32
TTL_DEFAULT = 30 * 24 * 3600
ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
USER_ID_MAX = 255
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def is_identifier(value: str, max_length: int) -> bool:
    """An identifier as jobs can have it (a userId, a jobType, an ETA key): 1 to
    ``max_length`` characters, none of them a control character."""
    return 1 <= len(value) <= max_length and not CONTROL_CHARS.search(value)


def _storable(value: str) -> str:
    """Reject what PostgreSQL text cannot hold (NUL) and what UTF-8 cannot encode."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode") from exc
    return value


def _identifier(value: str) -> str:
    _storable(value)
    if CONTROL_CHARS.search(value):
        raise ValueError("must not contain control characters")
    return value


def _walk_storable(value: Any) -> None:
    """Check every key and string of a JSON value, iteratively (no recursion limit to hit).

    Nesting is capped at ``JSON_MAX_DEPTH``: deeper values cannot be re-serialised inside a
    job or an event (orjson stops at 255 levels) and serve no client.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _storable(item)
        elif isinstance(item, dict | list):
            if depth > JSON_MAX_DEPTH:
                raise ValueError(f"must not be nested more than {JSON_MAX_DEPTH} levels deep")
            if isinstance(item, dict):
                for key in item:
                    _storable(key)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, float) and item != item:  # NaN cannot be stored as JSON
            raise ValueError("must not contain NaN")


def _json_within(limit: int) -> Any:
    def check(value: Any) -> Any:
        _walk_storable(value)
        try:
            size = len(orjson.dumps(value))
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise ValueError("must be JSON-serialisable") from exc
        if size > limit:
            raise ValueError(f"must be at most {limit} bytes as JSON (got {size})")
        return value

    return AfterValidator(check)


# The patterns only document the validators for the OpenAPI document (and its fuzzer).
Text = Annotated[
    str, AfterValidator(_storable), Field(json_schema_extra={"pattern": "^[^\\x00]*$"})
]
Ident = Annotated[
    str,
    AfterValidator(_identifier),
    Field(json_schema_extra={"pattern": "^[^\\x00-\\x1f\\x7f]*$"}),
]
UserId = Annotated[Ident, Field(min_length=1, max_length=USER_ID_MAX)]
JobType = Annotated[Ident, Field(min_length=1, max_length=100)]
Title = Annotated[Text, Field(min_length=1, max_length=200)]
Message = Annotated[Text, Field(max_length=2000)]
Metadata = Annotated[dict[str, Any], _json_within(METADATA_MAX_BYTES)]
JobId = Annotated[str, Field(pattern=ULID_RE.pattern)]
Count = Annotated[StrictInt, Field(ge=0, le=1_000_000_000)]


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    if not 2000 <= value.year <= 9000:
        raise ValueError("must be a date between the years 2000 and 9000")
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


Timestamp = Annotated[datetime, AfterValidator(_utc)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)


class QueueInfo(_Input):
    position: Count
    total: Count | None = None
    queueName: Annotated[Text, Field(max_length=100)] | None = None


class StageInfo(_Input):
    name: Annotated[Text, Field(min_length=1, max_length=100)]
    # Required: the clients cast both to int (the Flutter SDK fails on a missing one).
    current: Count
    total: Count
    description: Annotated[Text, Field(max_length=500)] | None = None


class CreateJob(_Input):
    jobType: JobType
    userId: UserId
    title: Title
    workflowId: JobType | None = None
    metadata: Metadata | None = None
    queue: QueueInfo | None = None
    stage: StageInfo | None = None
    estimatedCompletionAt: Timestamp | None = None
    estimatedDuration: Annotated[StrictInt, Field(ge=1000, le=86_400_000)] | None = None
    # null means the default, as for every other optional field.
    ttlSeconds: Annotated[StrictInt, Field(ge=60, le=2_592_000)] | None = TTL_DEFAULT
    totalChildren: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None
    childProgressMode: Literal["average", "sequential", "weighted"] | None = None
    parentJobId: JobId | None = None
    childIndex: Annotated[StrictInt, Field(ge=0, le=9999)] | None = None

    @model_validator(mode="after")
    def _shape(self) -> CreateJob:
        if self.parentJobId is not None and self.totalChildren is not None:
            raise ValueError("a job is either a parent (totalChildren) or a child (parentJobId)")
        if (self.parentJobId is None) != (self.childIndex is None):
            raise ValueError("parentJobId and childIndex must be given together")
        if self.childProgressMode is not None and self.totalChildren is None:
            raise ValueError("childProgressMode requires totalChildren")
        return self


# --- push options (the Node SDK's PushOptions and LiveActivityOptions) --------------------


class AlertPush(_Input):
    title: Annotated[Text, Field(min_length=1, max_length=200)]
    body: Annotated[Text, Field(max_length=1000)]
    sound: Annotated[Text, Field(min_length=1, max_length=100)] | None = None
    badge: Annotated[StrictInt, Field(ge=0, le=1_000_000)] | None = None


class RichPush(_Input):
    senderName: Annotated[Text, Field(min_length=1, max_length=200)]
    senderAvatar: Annotated[Text, Field(max_length=2000)] | None = None
    timeSensitive: StrictBool | None = None


class PushOptions(_Input):
    """What a write asks to be pushed. Live Activity updates and silent pushes default on."""

    liveActivity: StrictBool | None = None
    silent: StrictBool | None = None
    alert: AlertPush | None = None
    richPush: RichPush | None = None


class CtaButton(_Input):
    text: Annotated[Text, Field(min_length=1, max_length=100)]
    deepLink: Annotated[Text, Field(min_length=1, max_length=2000)]
    style: Literal["primary", "secondary", "outline"] | None = None
    backgroundColor: Annotated[Text, Field(max_length=32)] | None = None
    textColor: Annotated[Text, Field(max_length=32)] | None = None
    cornerRadius: Annotated[StrictInt, Field(ge=0, le=1000)] | None = None


class LiveActivityOptions(_Input):
    ctaButton: CtaButton | None = None


# --- device registrations ---------------------------------------------------------------

DeviceId = Annotated[Ident, Field(min_length=1, max_length=255)]
# APNs tokens are hex (ActivityKit's and the device's push token, as the apps send them).
HEX_TOKEN = r"^[0-9A-Fa-f]{16,512}$"
_DEVICE_TOKEN = r"^[A-Za-z0-9_:.\-]{16,1024}$"  # APNs hex, or an FCM registration token


class LiveActivityRegistration(_Input):
    userId: UserId
    deviceId: DeviceId
    jobId: JobId
    token: Annotated[str, Field(pattern=HEX_TOKEN)]
    activityId: Annotated[Ident, Field(min_length=1, max_length=255)] | None = None


class LiveActivityRemoval(_Input):
    userId: UserId
    deviceId: DeviceId
    jobId: JobId


class DeviceRegistration(_Input):
    userId: UserId
    deviceId: DeviceId
    platform: Literal["ios", "android"]
    token: Annotated[str, Field(pattern=_DEVICE_TOKEN)]

    @model_validator(mode="after")
    def _apns_hex(self) -> DeviceRegistration:
        if self.platform == "ios" and not re.match(HEX_TOKEN, self.token):
            raise ValueError("an ios token is the APNs device token in hex (16-512 digits)")
        return self


class DeviceRemoval(_Input):
    userId: UserId
    deviceId: DeviceId


class UpdateProgress(_Input):
    progress: Annotated[StrictInt, Field(ge=0, le=100)]
    message: Message | None = None
    queue: QueueInfo | None = None
    stage: StageInfo | None = None
    estimatedCompletionAt: Timestamp | None = None
    metadata: Metadata | None = None
    push: PushOptions | None = None


def _result_shape(value: dict[str, Any]) -> dict[str, Any]:
    """The fields the clients read from a result have the types they cast them to."""
    for name in ("type", "url"):
        if value.get(name) is not None and not isinstance(value[name], str):
            raise ValueError(f"result.{name} must be a string")
    if value.get("data") is not None and not isinstance(value["data"], dict):
        raise ValueError("result.data must be an object")
    return value


JobResultIn = Annotated[
    dict[str, Any],
    _json_within(RESULT_MAX_BYTES),
    AfterValidator(_result_shape),
    Field(
        json_schema_extra={
            "properties": {
                "type": {"type": "string"},
                "url": {"type": "string"},
                "data": {"type": "object"},
            }
        }
    ),
]


class CompleteJob(_Input):
    result: JobResultIn | None = None
    message: Message | None = None
    liveActivity: LiveActivityOptions | None = None
    push: PushOptions | None = None


class JobError(_Input):
    code: Annotated[Ident, Field(min_length=1, max_length=100)]
    message: Annotated[Text, Field(min_length=1, max_length=2000)]
    details: Annotated[dict[str, Any], _json_within(ERROR_DETAILS_MAX_BYTES)] | None = None


class FailJob(_Input):
    error: JobError
    retryable: StrictBool = False
    push: PushOptions | None = None


class CancelJob(_Input):
    reason: Message | None = None
    push: PushOptions | None = None
